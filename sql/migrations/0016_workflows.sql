-- 0016: workflows — steps that send, wait, digest and throttle, one run per trigger
-- × recipient, advanced in batches by the workers (docs/workflows.md).

-- A workflow is a key and its current version; every edit is a new, immutable
-- version, so a run in flight finishes on the version it started with.
CREATE TABLE workflows (
    key        text PRIMARY KEY,
    version    integer NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE workflow_versions (
    workflow_key text NOT NULL REFERENCES workflows (key) ON DELETE CASCADE,
    version      integer NOT NULL,
    category     text,
    -- validated by the API (app/api/workflows/steps.py) before it is stored
    steps        jsonb NOT NULL CHECK (jsonb_typeof(steps) = 'array'),
    created_at   timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (workflow_key, version)
);

-- One row per trigger: its data is shared by its runs (a topic trigger makes one
-- run per subscriber, all reading this one row).
CREATE TABLE workflow_triggers (
    id                uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    workflow_key      text NOT NULL,
    version           integer NOT NULL,
    topic             text,
    data              jsonb NOT NULL DEFAULT '{}',
    cancel_key        text,
    idempotency_scope text,
    idempotency_key   text,
    request_hash      bytea,
    created_at        timestamptz NOT NULL DEFAULT now(),
    FOREIGN KEY (workflow_key, version) REFERENCES workflow_versions (workflow_key, version)
        ON DELETE CASCADE
);
CREATE UNIQUE INDEX workflow_triggers_idempotency_idx
    ON workflow_triggers (idempotency_scope, idempotency_key) WHERE idempotency_key IS NOT NULL;

-- One row per trigger × recipient. state:
--   waiting    due_at says when its step (steps[step]) runs
--   digesting  collected into digest_id; the digest's due_at says when it fires
--   done | cancelled | throttled | failed   final (reason says why, for the last three
--              and for a run whose event was delivered by another run's digest)
CREATE TABLE workflow_runs (
    id               bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    trigger_id       uuid NOT NULL REFERENCES workflow_triggers (id) ON DELETE CASCADE,
    workflow_key     text NOT NULL,
    version          integer NOT NULL,
    recipient        text NOT NULL,
    step             integer NOT NULL DEFAULT 0,
    state            text NOT NULL DEFAULT 'waiting'
                     CHECK (state IN ('waiting', 'digesting', 'done', 'cancelled', 'throttled', 'failed')),
    due_at           timestamptz,
    cancel_key       text,
    -- the digest it was collected into (its events), and the one it delivers
    digest_id        bigint,
    notification_ids uuid[] NOT NULL DEFAULT '{}',
    reason           text,
    created_at       timestamptz NOT NULL DEFAULT now(),
    updated_at       timestamptz NOT NULL DEFAULT now(),
    finished_at      timestamptz,
    CHECK (state <> 'waiting' OR due_at IS NOT NULL)
);
-- The advancing engine's claim: due waiting runs, oldest due first.
CREATE INDEX workflow_runs_due_idx ON workflow_runs (due_at) WHERE state = 'waiting';
CREATE INDEX workflow_runs_cancel_idx ON workflow_runs (cancel_key)
    WHERE cancel_key IS NOT NULL AND state IN ('waiting', 'digesting');
CREATE INDEX workflow_runs_list_idx ON workflow_runs (workflow_key, recipient, id);
CREATE INDEX workflow_runs_workflow_idx ON workflow_runs (workflow_key, id);
CREATE INDEX workflow_runs_trigger_idx ON workflow_runs (trigger_id);
CREATE INDEX workflow_runs_digest_idx ON workflow_runs (digest_id) WHERE digest_id IS NOT NULL;

-- A digest collects a workflow step's runs for one recipient and key. At most one
-- is open per (workflow, version, step, recipient, key): the unique index, not a
-- check in Python, is what makes concurrent triggers join one digest.
CREATE TABLE workflow_digests (
    id            bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    workflow_key  text NOT NULL,
    version       integer NOT NULL,
    step          integer NOT NULL,
    recipient     text NOT NULL,
    digest_key    text NOT NULL,
    state         text NOT NULL DEFAULT 'open' CHECK (state IN ('open', 'fired')),
    events        integer NOT NULL DEFAULT 0,
    opened_at     timestamptz NOT NULL DEFAULT now(),
    last_event_at timestamptz NOT NULL DEFAULT now(),
    due_at        timestamptz NOT NULL,
    -- opened_at + max_wait: a new event moves due_at later, never past this
    max_due_at    timestamptz NOT NULL,
    fired_at      timestamptz,
    -- set when it fires: the runs whose events it holds, in trigger order, and the
    -- one that goes on to the next step (the first of them)
    run_ids       bigint[],
    run_id        bigint
);
CREATE UNIQUE INDEX workflow_digests_open_idx
    ON workflow_digests (workflow_key, version, step, recipient, digest_key) WHERE state = 'open';
CREATE INDEX workflow_digests_due_idx ON workflow_digests (due_at) WHERE state = 'open';
ALTER TABLE workflow_runs ADD FOREIGN KEY (digest_id) REFERENCES workflow_digests (id);

-- The runs a throttle step let through, per recipient and key: a run passes while
-- fewer than `limit` passed in the last `per`. Rows past expires_at count no more.
CREATE TABLE workflow_throttle_passes (
    workflow_key text NOT NULL,
    step         integer NOT NULL,
    recipient    text NOT NULL,
    throttle_key text NOT NULL,
    run_id       bigint NOT NULL,
    passed_at    timestamptz NOT NULL DEFAULT now(),
    expires_at   timestamptz NOT NULL
);
CREATE INDEX workflow_throttle_passes_idx
    ON workflow_throttle_passes (workflow_key, step, recipient, throttle_key, passed_at);
CREATE INDEX workflow_throttle_passes_expires_idx ON workflow_throttle_passes (expires_at);

-- Start a workflow: the trigger row and one run per distinct recipient, in the
-- caller's transaction (a rollback leaves nothing). A repeated idempotency key
-- answers the original trigger (created false). A topic trigger passes no
-- recipients: its caller adds the runs in chunks (workflow_runs_insert_topic_chunk).
CREATE FUNCTION start_workflow(
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
    v_id      uuid;
    v_version integer;
BEGIN
    SELECT w.version INTO v_version FROM workflows AS w WHERE w.key = p_workflow;
    IF v_version IS NULL THEN
        RAISE EXCEPTION 'postbell.trigger: unknown workflow %', p_workflow
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF p_idempotency_key IS NOT NULL THEN
        UPDATE workflow_triggers AS t
           SET idempotency_key = NULL, idempotency_scope = NULL
         WHERE t.idempotency_scope = p_idempotency_scope
           AND t.idempotency_key = p_idempotency_key
           AND t.created_at < now() - p_idempotency_ttl;
    END IF;
    INSERT INTO workflow_triggers AS t (workflow_key, version, topic, data, cancel_key,
                                        idempotency_scope, idempotency_key, request_hash)
    VALUES (p_workflow, v_version, p_topic, coalesce(p_data, '{}'), p_cancel_key,
            p_idempotency_scope, p_idempotency_key, p_request_hash)
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

-- The host app's way to start a workflow inside its own transaction:
--
--   SELECT postbell.trigger('new-reply', ARRAY['user-1'], '{"thread_id": "t9"}',
--                           cancel_key => 'thread-t9');
CREATE FUNCTION trigger(
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
    RETURN v_result.id;
END;
$$;

-- Stop every run with this cancel key that has not finished: it sends nothing more.
-- In the caller's transaction; answers how many runs it stopped. A run whose step
-- a worker is advancing right now is stopped as soon as that step is recorded.
CREATE FUNCTION cancel(cancel_key text) RETURNS integer
    LANGUAGE plpgsql
    SET search_path = pg_catalog, postbell
AS $$
DECLARE
    v_count integer;
BEGIN
    UPDATE workflow_runs AS r
       SET state = 'cancelled', due_at = NULL, reason = 'cancelled', finished_at = now(),
           updated_at = now()
     WHERE r.cancel_key = cancel.cancel_key
       AND r.state IN ('waiting', 'digesting');
    GET DIAGNOSTICS v_count = ROW_COUNT;
    RETURN v_count;
END;
$$;

-- For the SQL console: what will fire next, by workflow and step. `runs` are the
-- runs waiting at the step (for a digest step: the runs its open digests hold),
-- `digests` the open digests, `overdue` the ones already past due.
CREATE VIEW workflow_runs_due AS
WITH due AS (
    SELECT workflow_key, version, step, due_at, 1 AS runs, 0 AS digests
      FROM workflow_runs
     WHERE state = 'waiting'
    UNION ALL
    SELECT workflow_key, version, step, due_at, events, 1
      FROM workflow_digests
     WHERE state = 'open'
)
SELECT d.workflow_key AS workflow,
       d.version,
       d.step,
       v.steps -> d.step ->> 'type' AS step_type,
       sum(d.runs)::bigint AS runs,
       sum(d.digests)::bigint AS digests,
       min(d.due_at) AS next_due_at,
       count(*) FILTER (WHERE d.due_at <= now()) AS overdue
  FROM due AS d
  JOIN workflow_versions AS v ON v.workflow_key = d.workflow_key AND v.version = d.version
 GROUP BY d.workflow_key, d.version, d.step, v.steps
 ORDER BY next_due_at;
