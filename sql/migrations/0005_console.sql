-- 0005: the host app's way in (postbell.notify) and the SQL console views.

-- Time-range scans of deliveries (stats, recent failures) without a B-tree on the
-- hot table: a BRIN index costs almost nothing on insert.
CREATE INDEX deliveries_created_brin_idx ON deliveries USING brin (created_at);

-- Enqueue a notification inside the caller's transaction: from any language, on the
-- same database, with no HTTP round trip. A rollback leaves nothing.
--
--   SELECT postbell.notify(ARRAY['user-1'], '{"title": "Approved", "message": "Welcome!"}',
--                          ARRAY['IN_APP', 'EMAIL']);
--
-- body: {"message" | "body", "title", "action_url", "metadata", "fallback",
-- "expires_at"}. An idempotency_key repeated with the same arguments returns the
-- original id; with other arguments it raises.
CREATE FUNCTION notify(
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
    v_text     text := coalesce(body ->> 'message', body ->> 'body');
    v_unknown  text;
    v_hash     bytea;
    v_result   record;
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
    IF body IS NULL OR jsonb_typeof(body) <> 'object' THEN
        RAISE EXCEPTION 'postbell.notify: body must be a JSON object'
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF v_text IS NULL OR btrim(v_text) = '' THEN
        RAISE EXCEPTION 'postbell.notify: body needs "message" (or "body")'
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF length(v_text) > 20000 OR length(coalesce(body ->> 'title', '')) > 300 THEN
        RAISE EXCEPTION 'postbell.notify: message over 20000 or title over 300 characters'
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    SELECT c INTO v_unknown FROM unnest(channels) AS c
     WHERE c NOT IN ('IN_APP', 'EMAIL', 'PUSH', 'SMS', 'WEBHOOK', 'SLACK', 'DISCORD') LIMIT 1;
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

    v_hash := sha256(convert_to(jsonb_build_array(recipients, body, channels, priority, category,
                                                  send_at)::text, 'UTF8'));
    SELECT * INTO v_result
      FROM enqueue_notification(
               (SELECT array_agg(DISTINCT r) FROM unnest(recipients) AS r), NULL,
               body ->> 'title', v_text, body ->> 'action_url', body -> 'metadata',
               (SELECT array_agg(DISTINCT c) FROM unnest(channels) AS c), coalesce(priority, 'normal'),
               category, body -> 'fallback', send_at, (body ->> 'expires_at')::timestamptz,
               CASE WHEN idempotency_key IS NOT NULL THEN 'sql' END, idempotency_key,
               CASE WHEN idempotency_key IS NOT NULL THEN v_hash END, interval '24 hours');
    IF NOT v_result.created AND v_result.request_hash IS DISTINCT FROM v_hash THEN
        RAISE EXCEPTION 'postbell.notify: idempotency key % was used with other arguments', idempotency_key
            USING ERRCODE = 'unique_violation';
    END IF;
    RETURN v_result.id;
END;
$$;

-- ---------------------------------------------------------------------------------
-- SQL console: SELECT * FROM postbell.<view>.

-- Jobs per queue and status, with the age of the oldest (the queue's backlog).
CREATE VIEW queue_depth AS
SELECT j.queue_name AS queue,
       j.status::text AS status,
       count(*) AS jobs,
       sum(coalesce(jsonb_array_length(j.args -> 'ids'), 1)) AS items,
       date_trunc('second', now() - min(e.at)) AS oldest_age,
       count(*) FILTER (WHERE j.scheduled_at > now()) AS scheduled_later
  FROM procrastinate_jobs AS j
  LEFT JOIN procrastinate_events AS e ON e.job_id = j.id AND e.type = 'deferred'
 WHERE j.status IN ('todo', 'doing', 'failed')
 GROUP BY j.queue_name, j.status;

-- The dead-letter queue.
CREATE VIEW dead_letters AS
SELECT d.id, d.notification_id, d.channel, r.external_id AS recipient, d.reason,
       d.attempts, d.last_error, d.created_at, d.updated_at AS died_at
  FROM deliveries AS d
  JOIN recipients AS r ON r.id = d.recipient_id
 WHERE d.status = 'dead';

-- Per channel x status x hour, over the last 7 days: counts, the share that reached
-- the provider, and how long sending took (created -> sent).
CREATE VIEW delivery_stats AS
SELECT date_trunc('hour', d.created_at) AS hour,
       d.channel,
       d.status,
       count(*) AS deliveries,
       round(100.0 * count(*) / sum(count(*)) OVER (PARTITION BY date_trunc('hour', d.created_at), d.channel), 1)
           AS percent_of_channel,
       round((1000 * percentile_cont(0.5) WITHIN GROUP (
                 ORDER BY extract(epoch FROM d.sent_at - d.created_at)))::numeric, 1) AS p50_ms_to_send,
       round((1000 * percentile_cont(0.95) WITHIN GROUP (
                 ORDER BY extract(epoch FROM d.sent_at - d.created_at)))::numeric, 1) AS p95_ms_to_send
  FROM deliveries AS d
 WHERE d.created_at > now() - interval '7 days'
 GROUP BY 1, 2, 3;

-- Failed and dead deliveries of the last 24 hours, newest first.
CREATE VIEW recent_failures AS
SELECT d.id, d.notification_id, d.channel, r.external_id AS recipient, d.status, d.reason,
       d.attempts, d.last_error, d.next_attempt_at, d.updated_at
  FROM deliveries AS d
  JOIN recipients AS r ON r.id = d.recipient_id
 WHERE d.status IN ('failed', 'dead')
   AND d.created_at > now() - interval '24 hours'
 ORDER BY d.updated_at DESC;

-- Jobs held by workers whose heartbeat stopped (SIGKILL, OOM): the reaper requeues
-- them within a minute.
CREATE VIEW stalled_jobs AS
SELECT j.id, j.queue_name AS queue, j.task_name, j.worker_id, w.last_heartbeat,
       date_trunc('second', now() - w.last_heartbeat) AS silent_for,
       coalesce(jsonb_array_length(j.args -> 'ids'), 1) AS items
  FROM procrastinate_jobs AS j
  LEFT JOIN procrastinate_workers AS w ON w.id = j.worker_id
 WHERE j.status = 'doing'
   AND (w.id IS NULL OR w.last_heartbeat < now() - interval '30 seconds');
