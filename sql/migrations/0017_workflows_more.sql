-- 0017: workflows, second part (docs/workflows.md): send steps that name a template
-- (each trigger pins the active version of every template its workflow names), the
-- recipient-chosen digest frequency (preferences.digest, "window": "preference"),
-- and a wake-up for the engine when a trigger's first step may send at once.

-- The template versions a trigger's runs render: {"reply-digest": 3}; null when the
-- workflow names no template. Pinned when the trigger is accepted, as a
-- notification pins its template: an edit afterwards never changes what runs send.
ALTER TABLE workflow_triggers ADD COLUMN templates jsonb;

-- A recipient's digest frequency per category (preferences' "digest" member), read by
-- digest steps with "window": "preference". A table of its own: the preferences row
-- type is a parameter of delivery_skip_reason(), so that table cannot gain columns.
CREATE TABLE digest_preferences (
    recipient_id bigint NOT NULL REFERENCES recipients (id) ON DELETE CASCADE,
    category     text NOT NULL,
    frequency    text NOT NULL CHECK (frequency IN ('off', 'hourly', 'daily', 'weekly')),
    -- the local delivery hour (daily, weekly) and day (weekly), in the recipient's timezone
    hour         integer NOT NULL DEFAULT 9 CHECK (hour BETWEEN 0 AND 23),
    weekday      text NOT NULL DEFAULT 'monday'
                 CHECK (weekday IN ('monday', 'tuesday', 'wednesday', 'thursday', 'friday',
                                    'saturday', 'sunday')),
    updated_at   timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (recipient_id, category)
);

-- When a digest on the recipient's frequency fires, for a digest opened at p_now:
-- hourly, an hour on; daily, the next p_setting.hour:00 in the zone; weekly, the
-- next such hour on p_setting.weekday. NULL for "off" (no batching). The hour is
-- local wall-clock time: DST changes move it in UTC, not in the zone.
CREATE FUNCTION digest_due_at(p_setting jsonb, p_zone text, p_now timestamptz)
    RETURNS timestamptz
    LANGUAGE sql
    STABLE
RETURN (
    SELECT CASE l.frequency
               WHEN 'hourly' THEN p_now + interval '1 hour'
               WHEN 'daily' THEN
                   (CASE WHEN l.at > l.local THEN l.at ELSE l.at + interval '1 day' END)
                       AT TIME ZONE l.zone
               WHEN 'weekly' THEN
                   (CASE WHEN l.at + make_interval(days => l.ahead) > l.local
                         THEN l.at + make_interval(days => l.ahead)
                         ELSE l.at + make_interval(days => l.ahead + 7) END)
                       AT TIME ZONE l.zone
           END
      FROM (SELECT z.zone, z.frequency, p_now AT TIME ZONE z.zone AS local,
                   date_trunc('day', p_now AT TIME ZONE z.zone)
                       + make_interval(hours => coalesce((p_setting ->> 'hour')::int, 9)) AS at,
                   (coalesce(array_position(ARRAY['monday', 'tuesday', 'wednesday', 'thursday',
                                                  'friday', 'saturday', 'sunday'],
                                            p_setting ->> 'weekday'), 1)
                    - extract(isodow FROM p_now AT TIME ZONE z.zone)::int + 7) % 7 AS ahead
              FROM (SELECT coalesce(p_zone, 'UTC') AS zone,
                           p_setting ->> 'frequency' AS frequency) AS z) AS l
);

-- Start a workflow (replaces 0016's): as before, plus the template pins. A template
-- the workflow names that no longer exists, or data without a key a template
-- requires (besides `events` and `count`, which the engine provides), refuses the
-- trigger: nothing is written.
CREATE OR REPLACE FUNCTION start_workflow(
    p_workflow          text,
    p_recipients        text[],
    p_topic             text,
    p_data              jsonb,
    p_cancel_key        text,
    p_idempotency_scope text,
    p_idempotency_key   text,
    p_request_hash      bytea,
    p_idempotency_ttl   interval
) RETURNS TABLE (id uuid, created boolean, request_hash bytea, version integer)
    LANGUAGE plpgsql
    SET search_path = pg_catalog, postbell
AS $$
DECLARE
    v_id        uuid;
    v_version   integer;
    v_steps     jsonb;
    v_templates jsonb;
    v_missing   record;
BEGIN
    SELECT w.version, v.steps INTO v_version, v_steps
      FROM workflows AS w
      JOIN workflow_versions AS v ON v.workflow_key = w.key AND v.version = w.version
     WHERE w.key = p_workflow;
    IF v_version IS NULL THEN
        RAISE EXCEPTION 'postbell.trigger: unknown workflow %', p_workflow
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF v_steps @? '$[*].template' THEN
        -- Share-locked: a DELETE or an activation waits until this trigger commits.
        WITH named AS (
            SELECT DISTINCT s ->> 'template' AS key
              FROM jsonb_array_elements(v_steps) AS s
             WHERE s ? 'template'
        ),
        live AS (
            SELECT t.key, t.active_version
              FROM templates AS t
             WHERE t.key IN (SELECT key FROM named) AND t.deleted_at IS NULL
               FOR SHARE OF t
        )
        SELECT jsonb_object_agg(l.key, l.active_version)
                   FILTER (WHERE l.key IS NOT NULL) AS pins,
               min(n.key) FILTER (WHERE l.key IS NULL) AS gone
          INTO v_missing
          FROM named AS n
          LEFT JOIN live AS l ON l.key = n.key;
        IF v_missing.gone IS NOT NULL THEN
            RAISE EXCEPTION 'postbell.trigger: workflow % names template %, which does not exist',
                p_workflow, v_missing.gone
                USING ERRCODE = 'invalid_parameter_value';
        END IF;
        v_templates := v_missing.pins;
        SELECT k.name AS data_key, tv.template_key INTO v_missing
          FROM jsonb_each_text(v_templates) AS p(key, version)
          JOIN template_versions AS tv
            ON tv.template_key = p.key AND tv.version = p.version::int
         CROSS JOIN LATERAL unnest(tv.required_data) AS k(name)
         WHERE k.name NOT IN ('events', 'count')
           AND NOT coalesce(p_data, '{}') ? k.name
         ORDER BY k.name
         LIMIT 1;
        IF FOUND THEN
            RAISE EXCEPTION 'postbell.trigger: data lacks "%", which template % requires',
                v_missing.data_key, v_missing.template_key
                USING ERRCODE = 'invalid_parameter_value';
        END IF;
    END IF;
    IF p_idempotency_key IS NOT NULL THEN
        UPDATE workflow_triggers AS t
           SET idempotency_key = NULL, idempotency_scope = NULL
         WHERE t.idempotency_scope = p_idempotency_scope
           AND t.idempotency_key = p_idempotency_key
           AND t.created_at < now() - p_idempotency_ttl;
    END IF;
    INSERT INTO workflow_triggers AS t (workflow_key, version, topic, data, cancel_key,
                                        idempotency_scope, idempotency_key, request_hash,
                                        templates)
    VALUES (p_workflow, v_version, p_topic, coalesce(p_data, '{}'), p_cancel_key,
            p_idempotency_scope, p_idempotency_key, p_request_hash, v_templates)
    ON CONFLICT (idempotency_scope, idempotency_key) WHERE idempotency_key IS NOT NULL
    DO NOTHING
    RETURNING t.id INTO v_id;
    IF v_id IS NULL THEN
        RETURN QUERY
            SELECT t.id, false, t.request_hash, t.version
              FROM workflow_triggers AS t
             WHERE t.idempotency_scope = p_idempotency_scope
               AND t.idempotency_key = p_idempotency_key;
        RETURN;
    END IF;
    INSERT INTO workflow_runs (trigger_id, workflow_key, version, recipient, due_at, cancel_key)
    SELECT v_id, p_workflow, v_version, r, now(), p_cancel_key
      FROM (SELECT DISTINCT r FROM unnest(p_recipients) AS r) AS x(r)
     ORDER BY r;
    RETURN QUERY SELECT v_id, true, p_request_hash, v_version;
END;
$$;

-- The host app's trigger (replaces 0016's): the same, plus the engine's wake-up.
CREATE OR REPLACE FUNCTION trigger(
    workflow        text,
    recipients      text[],
    data            jsonb DEFAULT '{}',
    idempotency_key text DEFAULT NULL,
    cancel_key      text DEFAULT NULL
) RETURNS uuid
    LANGUAGE plpgsql
    SET search_path = pg_catalog, postbell
AS $$
DECLARE
    v_hash   bytea;
    v_result record;
    v_first  jsonb;
BEGIN
    IF recipients IS NULL OR cardinality(recipients) = 0 THEN
        RAISE EXCEPTION 'postbell.trigger: recipients must name at least one recipient'
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF cardinality(recipients) > 10000 THEN
        RAISE EXCEPTION 'postbell.trigger: at most 10000 recipients per call'
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF EXISTS (SELECT 1 FROM unnest(recipients) AS r
                WHERE r IS NULL OR r = '' OR length(r) > 255 OR r ~ '[[:cntrl:]]') THEN
        RAISE EXCEPTION 'postbell.trigger: recipient ids must be 1 to 255 characters, no control characters'
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF data IS NOT NULL AND jsonb_typeof(data) <> 'object' THEN
        RAISE EXCEPTION 'postbell.trigger: data must be a JSON object'
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF length(data::text) > 65536 THEN
        RAISE EXCEPTION 'postbell.trigger: data is over 65536 bytes'
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF length(cancel_key) NOT BETWEEN 1 AND 255 OR length(idempotency_key) NOT BETWEEN 1 AND 255 THEN
        RAISE EXCEPTION 'postbell.trigger: cancel_key and idempotency_key must be 1 to 255 characters'
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    v_hash := sha256(convert_to(jsonb_build_array(workflow, recipients, data, cancel_key)::text, 'UTF8'));
    SELECT * INTO v_result
      FROM start_workflow(workflow, recipients, NULL, data, cancel_key,
                          CASE WHEN idempotency_key IS NOT NULL THEN 'sql' END, idempotency_key,
                          CASE WHEN idempotency_key IS NOT NULL THEN v_hash END, interval '24 hours');
    IF NOT v_result.created AND v_result.request_hash IS DISTINCT FROM v_hash THEN
        RAISE EXCEPTION 'postbell.trigger: idempotency key % was used with other arguments', idempotency_key
            USING ERRCODE = 'unique_violation';
    END IF;
    -- Wake the workflow engine when the runs' first step may send at once (not a
    -- digest, not a fixed delay): one NOTIFY per call, after the commit, on the
    -- channel the engine LISTENs to. Without it the engine's poll finds them.
    IF v_result.created THEN
        SELECT v.steps -> 0 INTO v_first
          FROM workflow_versions AS v
         WHERE v.workflow_key = trigger.workflow AND v.version = v_result.version;
        IF NOT (v_first ->> 'type' = 'digest' OR (v_first ->> 'type' = 'delay' AND v_first ? 'for')) THEN
            PERFORM pg_notify('postbell_workflows', '');
        END IF;
    END IF;
    RETURN v_result.id;
END;
$$;
