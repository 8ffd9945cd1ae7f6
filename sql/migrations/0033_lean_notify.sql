-- 0033: a single notify() per transaction does less (issue 19, WN).
--
-- route_job() and deliver_job() (0002) were declared IMMUTABLE around
-- jsonb_build_object(), which is STABLE. Postgres does not inline an IMMUTABLE SQL
-- function whose body is not immutable, so every routing job deferred (each notify(),
-- each API batch, each notification a worker routes) and every deliver job ran a SQL
-- function call of its own: about 45 µs of a single-call transaction's ~400 µs in
-- Postgres (track_functions). Declared STABLE, which they are, they inline.
--
-- notify() (0022) is written out again with the same rules and messages, in fewer
-- statements on its common path. In a transaction of one call, plpgsql prepares every
-- expression it meets afresh, and every check that is a query runs the executor:
--   * the recipient ids' rules are expressions on the whole array; the per-id length
--     query runs only when the ids together are longer than one id may be;
--   * channels are checked by containment, and the query that names the unknown one
--     runs only when there is one;
--   * the expires_at block, whose EXCEPTION clause makes a subtransaction, is entered
--     only when the body has expires_at;
--   * the request hash is computed only with an idempotency key (the only time it is
--     stored or compared);
--   * one recipient or one channel is not de-duplicated through a sub-select.
-- WN (one call per transaction, one connection): bench/README.md has the figures.

ALTER FUNCTION route_job(uuid, text, timestamptz) STABLE;
ALTER FUNCTION deliver_job(text, jsonb, integer, timestamptz) STABLE;

-- The host app's notify() (replaces 0022's): the same rules, answers and messages.
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
    v_text     text := coalesce(body ->> 'message', body ->> 'body');
    v_unknown  text;
    v_hash     bytea;
    v_result   record;
    v_expires  timestamptz;
    v_version  record;
    v_pinned   integer;
    v_missing  text;
    -- an experiment (0022): its key, the variants as given and as stored (each
    -- template variant with the version pinned here)
    v_experiment text := body ->> 'experiment';
    v_variants   jsonb := body -> 'variants';
    v_data       jsonb := body -> 'data';
    v_stored     jsonb := '[]';
    v_variant    jsonb;
    v_at         text;
    v_names      text[] := '{}';
    v_field      text;
    v_has_text   boolean;
    v_any_vt     boolean := false;
    v_first_body text;
BEGIN
    IF recipients IS NULL OR cardinality(recipients) = 0 THEN
        RAISE EXCEPTION 'postbell.notify: recipients must name at least one recipient'
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF cardinality(recipients) > 10000 THEN
        RAISE EXCEPTION 'postbell.notify: at most 10000 recipients per call'
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    -- The ids' rules as expressions on the whole array (plpgsql evaluates those
    -- without a query); the per-id query only when the ids together are long.
    IF array_position(recipients, NULL) IS NOT NULL OR '' = ANY (recipients) THEN
        RAISE EXCEPTION 'postbell.notify: recipient ids must be 1 to 255 characters'
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF length(array_to_string(recipients, ',')) > 255 THEN
        IF EXISTS (SELECT 1 FROM unnest(recipients) AS r WHERE length(r) > 255) THEN
            RAISE EXCEPTION 'postbell.notify: recipient ids must be 1 to 255 characters'
                USING ERRCODE = 'invalid_parameter_value';
        END IF;
    END IF;
    IF array_to_string(recipients, ',') ~ '[[:cntrl:]]' THEN
        RAISE EXCEPTION 'postbell.notify: recipient ids may not hold control characters'
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF body IS NULL OR jsonb_typeof(body) <> 'object' THEN
        RAISE EXCEPTION 'postbell.notify: body must be a JSON object'
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF body ? 'experiment' OR body ? 'variants' THEN
        -- An A/B experiment: the HTTP API's rules (docs/experiments.md).
        IF v_experiment IS NULL THEN
            RAISE EXCEPTION 'postbell.notify: experiment: ''variants'' go with an ''experiment'' key'
                USING ERRCODE = 'invalid_parameter_value';
        END IF;
        IF jsonb_typeof(body -> 'experiment') <> 'string' OR length(v_experiment) > 100
           OR v_experiment !~ '^[A-Za-z0-9][A-Za-z0-9._:-]*$' THEN
            RAISE EXCEPTION 'postbell.notify: experiment must be a key (letters, digits and . _ : -, at most 100 characters)'
                USING ERRCODE = 'invalid_parameter_value';
        END IF;
        IF v_variants IS NULL OR jsonb_typeof(v_variants) <> 'array'
           OR jsonb_array_length(v_variants) NOT BETWEEN 2 AND 10 THEN
            RAISE EXCEPTION 'postbell.notify: variants: an experiment needs ''variants'' (two to ten)'
                USING ERRCODE = 'invalid_parameter_value';
        END IF;
        IF v_data IS NOT NULL AND jsonb_typeof(v_data) <> 'object' THEN
            RAISE EXCEPTION 'postbell.notify: "data" must be a JSON object'
                USING ERRCODE = 'invalid_parameter_value';
        END IF;
        FOR i IN 0 .. jsonb_array_length(v_variants) - 1 LOOP
            v_at := format('variants[%s]', i);
            v_variant := v_variants -> i;
            IF jsonb_typeof(v_variant) <> 'object' THEN
                RAISE EXCEPTION 'postbell.notify: %: a variant is a JSON object', v_at
                    USING ERRCODE = 'invalid_parameter_value';
            END IF;
            v_variant := jsonb_strip_nulls(v_variant);
            SELECT k INTO v_field FROM jsonb_object_keys(v_variant) AS k
             WHERE k NOT IN ('name', 'weight', 'title', 'body', 'action_url', 'template')
             ORDER BY k LIMIT 1;
            IF v_field IS NOT NULL THEN
                RAISE EXCEPTION 'postbell.notify: %.%: unknown field (a variant has name, weight, title, body, action_url, template)', v_at, v_field
                    USING ERRCODE = 'invalid_parameter_value';
            END IF;
            SELECT k INTO v_field FROM unnest(ARRAY['name', 'title', 'body', 'action_url', 'template']) AS k
             WHERE v_variant ? k AND jsonb_typeof(v_variant -> k) <> 'string' LIMIT 1;
            IF v_field IS NOT NULL THEN
                RAISE EXCEPTION 'postbell.notify: %.%: must be a string', v_at, v_field
                    USING ERRCODE = 'invalid_parameter_value';
            END IF;
            IF NOT coalesce(v_variant ->> 'name' ~ '^[A-Za-z0-9][A-Za-z0-9._:-]*$'
                            AND length(v_variant ->> 'name') <= 100, false) THEN
                RAISE EXCEPTION 'postbell.notify: %.name: a variant needs a name (a key: letters, digits and . _ : -, at most 100 characters)', v_at
                    USING ERRCODE = 'invalid_parameter_value';
            END IF;
            IF (v_variant ->> 'name') = ANY (v_names) THEN
                RAISE EXCEPTION 'postbell.notify: %.name: variant name % is used twice', v_at, quote_literal(v_variant ->> 'name')
                    USING ERRCODE = 'invalid_parameter_value';
            END IF;
            v_names := v_names || (v_variant ->> 'name');
            IF NOT coalesce(jsonb_typeof(v_variant -> 'weight') = 'number'
                            AND (v_variant ->> 'weight') ~ '^[0-9]{1,7}$'
                            AND (v_variant ->> 'weight')::integer BETWEEN 1 AND 1000000, false) THEN
                RAISE EXCEPTION 'postbell.notify: %.weight: a variant needs a weight, a whole number from 1 to 1000000', v_at
                    USING ERRCODE = 'invalid_parameter_value';
            END IF;
            IF length(coalesce(v_variant ->> 'body', '')) > 20000 OR length(coalesce(v_variant ->> 'title', '')) > 300 THEN
                RAISE EXCEPTION 'postbell.notify: %: message over 20000 or title over 300 characters', v_at
                    USING ERRCODE = 'invalid_parameter_value';
            END IF;
            IF coalesce(v_variant ->> 'title', '') ~ '[[:cntrl:]]' OR coalesce(v_variant ->> 'action_url', '') ~ '[[:cntrl:]]' THEN
                RAISE EXCEPTION 'postbell.notify: %: title and action_url may not hold control characters', v_at
                    USING ERRCODE = 'invalid_parameter_value';
            END IF;
            IF v_variant ? 'action_url' AND (v_variant ->> 'action_url') !~* '^https?://[^/?#[:space:]]+' THEN
                RAISE EXCEPTION 'postbell.notify: %.action_url: must be an http:// or https:// URL', v_at
                    USING ERRCODE = 'invalid_parameter_value';
            END IF;
            v_has_text := v_variant ? 'title' OR btrim(coalesce(v_variant ->> 'body', '')) <> '';
            IF v_variant ? 'template' THEN
                IF v_has_text OR v_variant ? 'body' OR v_variant ? 'action_url' THEN
                    RAISE EXCEPTION 'postbell.notify: %.template: give a variant either a ''template'' or its own text, not both', v_at
                        USING ERRCODE = 'invalid_parameter_value';
                END IF;
                -- the variant's template, pinned like the notification's
                SELECT v.version, v.required_data INTO v_version
                  FROM templates AS t
                  JOIN template_versions AS v ON v.template_key = t.key AND v.version = t.active_version
                 WHERE t.key = v_variant ->> 'template' AND t.deleted_at IS NULL
                   FOR SHARE OF t;
                IF NOT FOUND THEN
                    RAISE EXCEPTION 'postbell.notify: %.template: unknown template %', v_at, v_variant ->> 'template'
                        USING ERRCODE = 'invalid_parameter_value';
                END IF;
                SELECT k INTO v_missing FROM unnest(v_version.required_data) AS k
                 WHERE NOT coalesce(v_data, '{}') ? k ORDER BY k LIMIT 1;
                IF v_missing IS NOT NULL THEN
                    RAISE EXCEPTION 'postbell.notify: data lacks "%", which template % requires', v_missing, v_variant ->> 'template'
                        USING ERRCODE = 'invalid_parameter_value';
                END IF;
                v_any_vt := true;
                v_variant := v_variant || jsonb_build_object('template_version', v_version.version);
            ELSIF v_template IS NULL AND NOT v_has_text THEN
                RAISE EXCEPTION 'postbell.notify: %.body: a variant needs its own ''title'' or ''body'' (or a ''template'')', v_at
                    USING ERRCODE = 'invalid_parameter_value';
            ELSIF v_template IS NOT NULL AND v_has_text AND btrim(coalesce(v_variant ->> 'body', '')) = '' THEN
                RAISE EXCEPTION 'postbell.notify: %.body: a text variant of a templated notification needs its own ''body''', v_at
                    USING ERRCODE = 'invalid_parameter_value';
            END IF;
            IF v_first_body IS NULL AND btrim(coalesce(v_variant ->> 'body', '')) <> '' THEN
                v_first_body := v_variant ->> 'body';
            END IF;
            v_stored := v_stored || jsonb_build_array(
                v_variant || jsonb_build_object('weight', (v_variant ->> 'weight')::integer));
        END LOOP;
        IF v_template IS NULL AND v_text IS NULL THEN
            -- the variants carry the text: the first variant's body stands in
            v_text := coalesce(v_first_body, CASE WHEN v_any_vt THEN '' END);
        END IF;
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
        IF (v_text IS NULL OR btrim(v_text) = '') AND NOT v_any_vt THEN
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
    IF body ? 'expires_at' THEN
        -- (a block with an EXCEPTION clause is a subtransaction: entered only when needed)
        BEGIN
            v_expires := (body ->> 'expires_at')::timestamptz;
        EXCEPTION WHEN others THEN
            RAISE EXCEPTION 'postbell.notify: expires_at is not a time (give RFC 3339 with an offset)'
                USING ERRCODE = 'invalid_parameter_value';
        END;
    END IF;
    IF send_at > now() + interval '3650 days' OR v_expires > now() + interval '3650 days' THEN
        RAISE EXCEPTION 'postbell.notify: send_at and expires_at must be within ten years'
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF v_expires IS NOT NULL AND v_expires <= coalesce(send_at, now()) THEN
        RAISE EXCEPTION 'postbell.notify: expires_at must be after the send time'
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF (channels IS NOT NULL AND NOT channels <@ channel_names()) OR cardinality(channels) = 0 THEN
        -- (the containment is an expression; the query that names the culprit runs only then)
        SELECT c INTO v_unknown FROM unnest(channels) AS c
         WHERE c <> ALL (channel_names()) LIMIT 1;
        IF v_unknown IS NOT NULL OR cardinality(channels) = 0 THEN
            RAISE EXCEPTION 'postbell.notify: unknown channel %', coalesce(v_unknown, '(empty list)')
                USING ERRCODE = 'invalid_parameter_value';
        END IF;
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

    IF idempotency_key IS NOT NULL THEN
        v_hash := sha256(convert_to(jsonb_build_array(recipients, body, channels, priority,
                                                      category, send_at)::text, 'UTF8'));
    END IF;
    SELECT * INTO v_result
      FROM enqueue_notification(
               CASE WHEN cardinality(recipients) > 1
                    THEN (SELECT array_agg(DISTINCT r) FROM unnest(recipients) AS r)
                    ELSE recipients END, NULL,
               body ->> 'title', v_text, body ->> 'action_url', body -> 'metadata',
               CASE WHEN cardinality(channels) > 1
                    THEN (SELECT array_agg(DISTINCT c) FROM unnest(channels) AS c)
                    ELSE channels END, coalesce(priority, 'normal'),
               category, body -> 'fallback', send_at, v_expires,
               CASE WHEN idempotency_key IS NOT NULL THEN 'sql' END, idempotency_key,
               CASE WHEN idempotency_key IS NOT NULL THEN v_hash END, interval '24 hours',
               true, v_template, v_pinned,
               CASE WHEN v_template IS NOT NULL THEN coalesce(body -> 'data', '{}') END);
    IF v_result.created AND v_experiment IS NOT NULL THEN
        -- the same transaction as the enqueue: routing sees the variants or nothing
        UPDATE notifications AS n
           SET experiment = v_experiment,
               variants = v_stored,
               template_data = CASE WHEN v_any_vt THEN coalesce(n.template_data, v_data, '{}')
                                    ELSE n.template_data END
         WHERE n.id = v_result.id;
    END IF;
    IF NOT v_result.created AND v_result.request_hash IS DISTINCT FROM v_hash THEN
        RAISE EXCEPTION 'postbell.notify: idempotency key % was used with other arguments', idempotency_key
            USING ERRCODE = 'unique_violation';
    END IF;
    RETURN v_result.id;
END;
$$;


