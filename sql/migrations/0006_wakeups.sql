-- 0006: coalesced wake-ups for jobs the API defers.
--
-- procrastinate's insert trigger NOTIFYs the workers for every job. A NOTIFY takes
-- a database-wide lock at commit and holds it through the commit's WAL flush, so
-- every transaction that NOTIFYs commits one after another: with one routing job
-- per accepted notification, the API could not accept more than about 700 a second
-- while workers were busy. A transaction may now set postbell.quiet_defer = on to
-- defer jobs without the NOTIFY; the API does, and sends one NOTIFY itself every
-- few milliseconds while it accepts notifications (app/wakeups.py). Workers that miss
-- a wake-up still find the job at their next poll.
--
-- This replaces procrastinate's function of the same name (procrastinate 3.10,
-- schema.sql); keep it in step when a procrastinate migration changes it.
CREATE OR REPLACE FUNCTION procrastinate_notify_queue_job_inserted_v1()
    RETURNS trigger
    LANGUAGE plpgsql
AS $$
DECLARE
    payload TEXT;
BEGIN
    IF current_setting('postbell.quiet_defer', true) = 'on' THEN
        RETURN NEW;
    END IF;
    SELECT json_build_object('type', 'job_inserted', 'job_id', NEW.id)::text INTO payload;
    PERFORM pg_notify('procrastinate_queue_v1#' || NEW.queue_name, payload);
    PERFORM pg_notify('procrastinate_any_queue_v1', payload);
    RETURN NEW;
END;
$$;

-- Accept a notification (replaces 0004's version) with p_wakeup: false leaves the
-- workers' wake-up to the caller (the API coalesces them).
DROP FUNCTION enqueue_notification(text[], text, text, text, text, jsonb, text[], text, text,
                                   jsonb, timestamptz, timestamptz, text, text, bytea, interval);
CREATE FUNCTION enqueue_notification(
    p_recipients        text[],
    p_topic             text,
    p_title             text,
    p_body              text,
    p_action_url        text,
    p_metadata          jsonb,
    p_channels          text[],
    p_priority          text,
    p_category          text,
    p_fallback          jsonb,
    p_send_at           timestamptz,
    p_expires_at        timestamptz,
    p_idempotency_scope text,
    p_idempotency_key   text,
    p_request_hash      bytea,
    p_idempotency_ttl   interval,
    p_wakeup            boolean DEFAULT true
) RETURNS TABLE (id uuid, status text, created boolean, request_hash bytea)
    LANGUAGE plpgsql
    SET search_path = pg_catalog, postbell
AS $$
DECLARE
    v_id     uuid;
    v_status text := CASE WHEN p_send_at > now() THEN 'scheduled' ELSE 'queued' END;
BEGIN
    IF p_idempotency_key IS NOT NULL THEN
        -- A key past its time to live is forgotten, so it can start a new notification.
        UPDATE notifications AS n
           SET idempotency_key = NULL, idempotency_scope = NULL
         WHERE n.idempotency_scope = p_idempotency_scope
           AND n.idempotency_key = p_idempotency_key
           AND n.created_at < now() - p_idempotency_ttl;
    END IF;

    INSERT INTO notifications AS n (
        status, priority, category, title, body, action_url, metadata, channels,
        recipients, topic, fallback, send_at, expires_at,
        idempotency_scope, idempotency_key, request_hash)
    VALUES (
        v_status, coalesce(p_priority, 'normal'), p_category, p_title, p_body, p_action_url,
        coalesce(p_metadata, '{}'), p_channels, p_recipients, p_topic, p_fallback,
        p_send_at, p_expires_at, p_idempotency_scope, p_idempotency_key, p_request_hash)
    ON CONFLICT (idempotency_scope, idempotency_key) WHERE idempotency_key IS NOT NULL
    DO NOTHING
    RETURNING n.id INTO v_id;

    IF v_id IS NULL THEN
        RETURN QUERY
            SELECT n.id, n.status, false, n.request_hash
              FROM notifications n
             WHERE n.idempotency_scope = p_idempotency_scope
               AND n.idempotency_key = p_idempotency_key;
        RETURN;
    END IF;

    IF NOT p_wakeup THEN
        PERFORM set_config('postbell.quiet_defer', 'on', true);
    END IF;
    PERFORM procrastinate_defer_jobs_v1(ARRAY[
        route_job(v_id, coalesce(p_priority, 'normal'), CASE WHEN v_status = 'scheduled' THEN p_send_at END)
    ]);
    IF NOT p_wakeup THEN
        PERFORM set_config('postbell.quiet_defer', 'off', true);
    END IF;
    RETURN QUERY SELECT v_id, v_status, true, p_request_hash;
END;
$$;

-- Routing marks each notification routed. With an index whose predicate names
-- routed_at, that update could never be HOT: every accepted notification cost a
-- second round of index writes. The reconciler finds unrouted notifications through
-- a BRIN index on created_at instead (the table is append-only in created_at order),
-- and pages keep room for the update.
DROP INDEX notifications_unrouted_idx;
CREATE INDEX notifications_created_brin_idx ON notifications USING brin (created_at);
ALTER TABLE notifications SET (fillfactor = 90);
-- Scheduled sends can be accepted long before they are due: the reconciler finds
-- those by send_at (a column never updated, so no cost to HOT).
CREATE INDEX notifications_send_at_idx ON notifications (send_at) WHERE send_at IS NOT NULL;
