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
