-- 0021: A/B experiments — a notification's variants, each recipient's variant
-- (deterministic per experiment and recipient, decided set-based at routing and
-- recorded on the delivery), the outcomes per variant and their statistics.

ALTER TABLE notifications ADD COLUMN experiment text;
-- [{"name": "a", "weight": 50, "title": "...", "body": "..."}, ...]
ALTER TABLE notifications ADD COLUMN variants jsonb;
ALTER TABLE deliveries ADD COLUMN variant text;

-- The experiment's deliveries, by the notifications that carry it.
CREATE INDEX notifications_experiment_idx ON notifications (experiment)
    WHERE experiment IS NOT NULL;

-- Which variant a recipient gets: the first 60 bits of md5(experiment NUL external
-- id) modulo the weights' sum, walked through the variants in order. The same person
-- always gets the same variant of an experiment (any notification, any database,
-- any Postgres version: md5 is fixed), and the split follows the weights.
CREATE FUNCTION experiment_bucket(p_experiment text, p_external_id text) RETURNS bigint
    LANGUAGE sql IMMUTABLE PARALLEL SAFE
    SET search_path = pg_catalog
    RETURN ('x' || substr(md5(p_experiment || chr(31) || p_external_id), 1, 15))::bit(60)::bigint;

CREATE FUNCTION experiment_variant(p_experiment text, p_external_id text, p_variants jsonb)
    RETURNS text
    LANGUAGE sql IMMUTABLE PARALLEL SAFE
    SET search_path = pg_catalog, postbell
AS $$
    SELECT w.name
      FROM (SELECT v.e ->> 'name' AS name, v.i,
                   sum((v.e ->> 'weight')::bigint) OVER (ORDER BY v.i) AS upto,
                   sum((v.e ->> 'weight')::bigint) OVER () AS total
              FROM jsonb_array_elements(p_variants) WITH ORDINALITY AS v(e, i)) AS w
     WHERE experiment_bucket(p_experiment, p_external_id) % w.total < w.upto
     ORDER BY w.i
     LIMIT 1
$$;

-- A variant's own text, as an IN_APP delivery's content (what the inbox shows).
CREATE FUNCTION experiment_content(p_variants jsonb, p_variant text) RETURNS jsonb
    LANGUAGE sql IMMUTABLE PARALLEL SAFE
    SET search_path = pg_catalog
AS $$
    SELECT jsonb_strip_nulls(jsonb_build_object('title', e ->> 'title', 'body', e ->> 'body',
                                                'action_url', e ->> 'action_url'))
      FROM jsonb_array_elements(p_variants) AS e
     WHERE e ->> 'name' = p_variant
     LIMIT 1
$$;

-- Opens (the email pixel) and clicks (the redirect links), at most one of each per
-- delivery: a second click on the same delivery's link counts nothing.
CREATE TABLE delivery_engagements (
    delivery_id bigint NOT NULL,
    kind        text NOT NULL CHECK (kind IN ('opened', 'clicked')),
    at          timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (delivery_id, kind)
);

-- The standard normal distribution function: Abramowitz & Stegun 7.1.26 for erf
-- (absolute error below 1.5e-7), enough for a p-value.
CREATE FUNCTION normal_cdf(p_z double precision) RETURNS double precision
    LANGUAGE sql IMMUTABLE PARALLEL SAFE
    SET search_path = pg_catalog
AS $$
    SELECT CASE WHEN p_z >= 0 THEN 1 - e ELSE e END
      FROM (SELECT 0.5 * t * exp(-x * x) * (0.254829592 + t * (-0.284496736 + t * (1.421413741
                   + t * (-1.453152027 + t * 1.061405429)))) AS e
              FROM (SELECT abs(p_z) / sqrt(2) AS x,
                           1 / (1 + 0.3275911 * abs(p_z) / sqrt(2)) AS t) AS a) AS b
$$;

-- Per experiment, variant and outcome: how many of its deliveries were sent (the
-- denominator: sent, or feedback after sent), and of those how many were delivered,
-- opened (IN_APP: read or seen; email: the open pixel), clicked, or whose recipient
-- has since opted out of the notification's category (or channel) there
-- (unsubscribed). Against the first variant (in the notification's order): the
-- difference of the rates, its 95 % confidence interval (unpooled standard error)
-- and the two-sided p-value of the two-proportion z-test (pooled standard error);
-- all NULL while the first variant has nothing sent, p = 1 for equal rates.
CREATE VIEW experiment_stats AS
WITH d AS (
    SELECT n.experiment, d.variant, d.id, d.channel, d.status, d.read_at, d.seen_at,
           n.category, d.recipient_id
      FROM notifications AS n
      JOIN deliveries AS d ON d.notification_id = n.id
     WHERE n.experiment IS NOT NULL
       AND d.variant IS NOT NULL
       AND d.status IN ('sent', 'delivered', 'bounced', 'complained', 'undelivered')
),
counts AS (
    SELECT d.experiment, d.variant, count(*) AS sent,
           count(*) FILTER (WHERE d.status = 'delivered'
                               OR (d.channel = 'IN_APP' AND d.status = 'sent')) AS delivered,
           count(*) FILTER (WHERE d.read_at IS NOT NULL OR d.seen_at IS NOT NULL
                               OR EXISTS (SELECT 1 FROM delivery_engagements AS e
                                           WHERE e.delivery_id = d.id AND e.kind = 'opened'))
               AS opened,
           count(*) FILTER (WHERE EXISTS (SELECT 1 FROM delivery_engagements AS e
                                           WHERE e.delivery_id = d.id AND e.kind = 'clicked'))
               AS clicked,
           count(*) FILTER (WHERE EXISTS (
               SELECT 1 FROM preferences AS p
                WHERE p.recipient_id = d.recipient_id
                  AND (p.channels ->> d.channel = 'false'
                       OR p.categories -> d.category ->> d.channel = 'false'))) AS unsubscribed
      FROM d
     GROUP BY d.experiment, d.variant
),
firsts AS (
    -- the first variant: first in the order of the experiment's latest notification
    SELECT DISTINCT ON (n.experiment) n.experiment, n.variants -> 0 ->> 'name' AS variant
      FROM notifications AS n
     WHERE n.experiment IS NOT NULL
     ORDER BY n.experiment, n.created_at DESC
),
long AS (
    SELECT c.experiment, c.variant, m.metric, c.sent, m.n
      FROM counts AS c
     CROSS JOIN LATERAL (VALUES ('delivered', c.delivered), ('opened', c.opened),
                                ('clicked', c.clicked), ('unsubscribed', c.unsubscribed))
           AS m(metric, n)
),
compared AS (
    SELECT l.*, l.n::double precision / nullif(l.sent, 0) AS rate,
           b.sent AS base_sent, b.n AS base_n,
           b.n::double precision / nullif(b.sent, 0) AS base_rate,
           l.variant = f.variant AS is_first
      FROM long AS l
      JOIN firsts AS f ON f.experiment = l.experiment
      LEFT JOIN long AS b
        ON b.experiment = l.experiment AND b.variant = f.variant AND b.metric = l.metric
),
tested AS (
    SELECT c.*,
           CASE WHEN NOT c.is_first THEN c.rate - c.base_rate END AS diff,
           CASE WHEN NOT c.is_first THEN
               sqrt(c.rate * (1 - c.rate) / c.sent + c.base_rate * (1 - c.base_rate) / c.base_sent)
           END AS se,
           CASE WHEN NOT c.is_first THEN
               sqrt(((c.n + c.base_n)::double precision / (c.sent + c.base_sent))
                    * (1 - (c.n + c.base_n)::double precision / (c.sent + c.base_sent))
                    * (1.0 / c.sent + 1.0 / c.base_sent))
           END AS pooled_se
      FROM compared AS c
)
SELECT experiment, variant, metric, sent, n, rate, is_first,
       diff,
       diff - 1.959963984540054 * se AS ci_low,
       diff + 1.959963984540054 * se AS ci_high,
       diff / nullif(pooled_se, 0) AS z,
       CASE WHEN pooled_se > 0 THEN 2 * (1 - normal_cdf(abs(diff) / pooled_se))
            WHEN NOT is_first AND base_sent IS NOT NULL THEN 1.0 END AS p_value
  FROM tested;

-- postbell.notify() takes an experiment too: body "experiment" + "variants", the
-- API's rules (docs/experiments.md). 0011's function with the experiment added.
CREATE FUNCTION experiment_check(p_body jsonb, p_template text) RETURNS void
    LANGUAGE plpgsql
    SET search_path = pg_catalog, postbell
AS $$
DECLARE
    v_variants jsonb := p_body -> 'variants';
BEGIN
    IF jsonb_typeof(p_body -> 'experiment') IS DISTINCT FROM 'string'
       OR NOT (p_body ->> 'experiment') ~ '^[A-Za-z0-9][A-Za-z0-9_.:-]{0,99}$' THEN
        RAISE EXCEPTION 'postbell.notify: "experiment" must be a key (letters, digits, _ . : -; up to 100)'
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF p_template IS NOT NULL THEN
        RAISE EXCEPTION 'postbell.notify: an experiment''s variants carry their own text; no template with them yet'
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF jsonb_typeof(v_variants) IS DISTINCT FROM 'array'
       OR jsonb_array_length(v_variants) NOT BETWEEN 2 AND 10 THEN
        RAISE EXCEPTION 'postbell.notify: an experiment needs "variants": an array of 2 to 10'
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF EXISTS (
        SELECT 1 FROM jsonb_array_elements(v_variants) AS e
         WHERE jsonb_typeof(e) <> 'object'
            OR jsonb_typeof(e -> 'name') IS DISTINCT FROM 'string'
            OR NOT (e ->> 'name') ~ '^[A-Za-z0-9][A-Za-z0-9_.:-]{0,99}$'
            OR jsonb_typeof(e -> 'weight') IS DISTINCT FROM 'number'
            OR (e ->> 'weight') !~ '^[1-9][0-9]{0,6}$' OR (e ->> 'weight')::integer > 1000000
            OR e ? 'template'
            OR EXISTS (SELECT 1 FROM jsonb_object_keys(e) AS k
                        WHERE k NOT IN ('name', 'weight', 'title', 'body', 'action_url'))
            OR (coalesce(e ->> 'title', '') = '' AND coalesce(btrim(e ->> 'body'), '') = '')
            OR coalesce(e ->> 'title', '') ~ '[[:cntrl:]]' OR length(coalesce(e ->> 'title', '')) > 300
            OR length(coalesce(e ->> 'body', '')) > 20000
            OR coalesce(e ->> 'action_url', 'https://x') !~ '^https?://[^[:space:][:cntrl:]]+$')
    THEN
        RAISE EXCEPTION 'postbell.notify: each variant needs a "name" (a key), a whole "weight" from 1 to 1000000 and its own "title" or "body" (and may have an http(s) "action_url"; no "template")'
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF (SELECT count(DISTINCT e ->> 'name') FROM jsonb_array_elements(v_variants) AS e)
       <> jsonb_array_length(v_variants) THEN
        RAISE EXCEPTION 'postbell.notify: variant names must be unique'
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
END;
$$;

CREATE OR REPLACE FUNCTION notify(
    recipients      text[],
    body            jsonb,
    channels        text[] DEFAULT NULL,
    priority        text DEFAULT 'normal',
    category        text DEFAULT NULL,
    send_at         timestamptz DEFAULT NULL,
    idempotency_key text DEFAULT NULL
) RETURNS uuid
    LANGUAGE plpgsql
    SET search_path = pg_catalog, postbell
AS $$
DECLARE
    v_template text := body ->> 'template';
    v_text     text := coalesce(body ->> 'message', body ->> 'body',
                                body -> 'variants' -> 0 ->> 'body');
    v_unknown  text;
    v_hash     bytea;
    v_result   record;
    v_expires  timestamptz;
    v_version  record;
    v_pinned   integer;
    v_missing  text;
BEGIN
    IF recipients IS NULL OR cardinality(recipients) = 0 THEN
        RAISE EXCEPTION 'postbell.notify: recipients must name at least one recipient'
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF cardinality(recipients) > 10000 THEN
        RAISE EXCEPTION 'postbell.notify: at most 10000 recipients per call'
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF EXISTS (SELECT 1 FROM unnest(recipients) AS r WHERE r IS NULL OR r = '' OR length(r) > 255) THEN
        RAISE EXCEPTION 'postbell.notify: recipient ids must be 1 to 255 characters'
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF EXISTS (SELECT 1 FROM unnest(recipients) AS r WHERE r ~ '[[:cntrl:]]') THEN
        RAISE EXCEPTION 'postbell.notify: recipient ids may not hold control characters'
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF body IS NULL OR jsonb_typeof(body) <> 'object' THEN
        RAISE EXCEPTION 'postbell.notify: body must be a JSON object'
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF v_template IS NOT NULL THEN
        -- A template: its text comes from the active version, pinned here.
        IF body ?| ARRAY['message', 'body', 'title', 'action_url'] THEN
            RAISE EXCEPTION 'postbell.notify: give either "template" or message fields, not both'
                USING ERRCODE = 'invalid_parameter_value';
        END IF;
        IF body ? 'data' AND jsonb_typeof(body -> 'data') <> 'object' THEN
            RAISE EXCEPTION 'postbell.notify: "data" must be a JSON object'
                USING ERRCODE = 'invalid_parameter_value';
        END IF;
        SELECT v.version, v.required_data, v.category INTO v_version
          FROM templates AS t
          JOIN template_versions AS v ON v.template_key = t.key AND v.version = t.active_version
         WHERE t.key = v_template AND t.deleted_at IS NULL
           FOR SHARE OF t;
        IF NOT FOUND THEN
            RAISE EXCEPTION 'postbell.notify: unknown template %', v_template
                USING ERRCODE = 'invalid_parameter_value';
        END IF;
        SELECT k INTO v_missing FROM unnest(v_version.required_data) AS k
         WHERE NOT coalesce(body -> 'data', '{}') ? k ORDER BY k LIMIT 1;
        IF v_missing IS NOT NULL THEN
            RAISE EXCEPTION 'postbell.notify: data lacks "%", which template % requires', v_missing, v_template
                USING ERRCODE = 'invalid_parameter_value';
        END IF;
        v_text := '';
        v_pinned := v_version.version;
        category := coalesce(category, v_version.category);
    ELSE
        IF v_text IS NULL OR btrim(v_text) = '' THEN
            RAISE EXCEPTION 'postbell.notify: body needs "message" (or "body", or "template")'
                USING ERRCODE = 'invalid_parameter_value';
        END IF;
    END IF;
    IF length(v_text) > 20000 OR length(coalesce(body ->> 'title', '')) > 300 THEN
        RAISE EXCEPTION 'postbell.notify: message over 20000 or title over 300 characters'
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF length(coalesce((body -> 'data')::text, '')) > 65536 THEN
        RAISE EXCEPTION 'postbell.notify: data over 65536 bytes'
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    -- One-line fields: a line break in a title would reach an email header.
    IF coalesce(body ->> 'title', '') ~ '[[:cntrl:]]' OR coalesce(body ->> 'action_url', '') ~ '[[:cntrl:]]' THEN
        RAISE EXCEPTION 'postbell.notify: title and action_url may not hold control characters'
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    BEGIN
        v_expires := (body ->> 'expires_at')::timestamptz;
    EXCEPTION WHEN others THEN
        RAISE EXCEPTION 'postbell.notify: expires_at is not a time (give RFC 3339 with an offset)'
            USING ERRCODE = 'invalid_parameter_value';
    END;
    IF send_at > now() + interval '3650 days' OR v_expires > now() + interval '3650 days' THEN
        RAISE EXCEPTION 'postbell.notify: send_at and expires_at must be within ten years'
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF v_expires IS NOT NULL AND v_expires <= coalesce(send_at, now()) THEN
        RAISE EXCEPTION 'postbell.notify: expires_at must be after the send time'
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    SELECT c INTO v_unknown FROM unnest(channels) AS c
     WHERE c <> ALL (channel_names()) LIMIT 1;
    IF v_unknown IS NOT NULL OR cardinality(channels) = 0 THEN
        RAISE EXCEPTION 'postbell.notify: unknown channel %', coalesce(v_unknown, '(empty list)')
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF coalesce(priority, 'normal') NOT IN ('low', 'normal', 'high', 'urgent') THEN
        RAISE EXCEPTION 'postbell.notify: priority must be low, normal, high or urgent'
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF category IS NOT NULL AND NOT EXISTS (SELECT 1 FROM categories AS k WHERE k.key = category) THEN
        RAISE EXCEPTION 'postbell.notify: unknown category %', category
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF send_at IS NOT NULL AND send_at <= now() THEN
        RAISE EXCEPTION 'postbell.notify: send_at is in the past'
            USING ERRCODE = 'invalid_parameter_value';
    END IF;

    IF body ? 'experiment' OR body ? 'variants' THEN
        PERFORM experiment_check(body, v_template);
    END IF;

    v_hash := sha256(convert_to(jsonb_build_array(recipients, body, channels, priority, category,
                                                  send_at)::text, 'UTF8'));
    SELECT * INTO v_result
      FROM enqueue_notification(
               (SELECT array_agg(DISTINCT r) FROM unnest(recipients) AS r), NULL,
               body ->> 'title', v_text, body ->> 'action_url', body -> 'metadata',
               (SELECT array_agg(DISTINCT c) FROM unnest(channels) AS c), coalesce(priority, 'normal'),
               category, body -> 'fallback', send_at, v_expires,
               CASE WHEN idempotency_key IS NOT NULL THEN 'sql' END, idempotency_key,
               CASE WHEN idempotency_key IS NOT NULL THEN v_hash END, interval '24 hours',
               true, v_template, v_pinned,
               CASE WHEN v_template IS NOT NULL THEN coalesce(body -> 'data', '{}') END);
    IF v_result.created AND body ? 'experiment' THEN
        -- in the caller's transaction, before its route job can be seen
        UPDATE notifications AS n
           SET experiment = notify.body ->> 'experiment',
               variants = (SELECT jsonb_agg(jsonb_strip_nulls(v.e) ORDER BY v.i)
                             FROM jsonb_array_elements(notify.body -> 'variants')
                                  WITH ORDINALITY AS v(e, i))
         WHERE n.id = v_result.id;
    END IF;
    IF NOT v_result.created AND v_result.request_hash IS DISTINCT FROM v_hash THEN
        RAISE EXCEPTION 'postbell.notify: idempotency key % was used with other arguments', idempotency_key
            USING ERRCODE = 'unique_violation';
    END IF;
    RETURN v_result.id;
END;
$$;
