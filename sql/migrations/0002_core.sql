-- 0002: postbell's core tables — API keys, recipients, notifications, deliveries —
-- and the SQL functions that put work on procrastinate's queue.

CREATE TABLE api_keys (
    id           bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    key_hash     bytea NOT NULL UNIQUE,          -- SHA-256 of the key; the key itself is never stored
    prefix       text NOT NULL,                  -- first characters, to recognise a key in listings
    name         text,
    role         text NOT NULL CHECK (role IN ('admin', 'send')),
    created_at   timestamptz NOT NULL DEFAULT now(),
    last_used_at timestamptz,                    -- written at most once a minute per process
    revoked_at   timestamptz
);

CREATE TABLE recipients (
    id                  bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    external_id         text NOT NULL UNIQUE,    -- the host app's user id
    email               text,
    phone               text,                    -- E.164
    name                text,
    locale              text,
    timezone            text,                    -- IANA name
    webhook_url         text,
    webhook_secret      text,
    slack_webhook_url   text,
    discord_webhook_url text,
    metadata            jsonb NOT NULL DEFAULT '{}',
    email_inactive_at   timestamptz,             -- hard bounce / complaint
    phone_inactive_at   timestamptz,             -- carrier opt-out
    created_at          timestamptz NOT NULL DEFAULT now(),
    updated_at          timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE notifications (
    id                uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    status            text NOT NULL CHECK (status IN ('scheduled', 'queued', 'routed', 'cancelled')),
    priority          text NOT NULL DEFAULT 'normal' CHECK (priority IN ('low', 'normal', 'high', 'urgent')),
    category          text,
    title             text,
    body              text NOT NULL,
    action_url        text,
    metadata          jsonb NOT NULL DEFAULT '{}',
    channels          text[],                    -- NULL: the category's default channels
    recipients        text[],                    -- external ids, for a direct send ...
    topic             text,                      -- ... or a topic to fan out to
    fallback          jsonb,
    send_at           timestamptz,
    expires_at        timestamptz,
    idempotency_scope text,                      -- whose key it is: an API key id, 'admin' or 'sql'
    idempotency_key   text,
    request_hash      bytea,
    created_at        timestamptz NOT NULL DEFAULT now(),
    routed_at         timestamptz,
    CONSTRAINT notifications_one_target CHECK ((recipients IS NULL) <> (topic IS NULL))
);
CREATE UNIQUE INDEX notifications_idempotency_idx
    ON notifications (idempotency_scope, idempotency_key) WHERE idempotency_key IS NOT NULL;
-- Accepted but not yet routed: small by construction; the reconciler reads it.
CREATE INDEX notifications_unrouted_idx ON notifications (created_at)
    WHERE status IN ('queued', 'scheduled');

-- One row per notification x recipient x channel. This is the hot table of a
-- fan-out, so it carries no foreign keys (their per-row checks would lock every
-- recipient row of a 100,000-member topic); recipient deletion removes its rows
-- explicitly, and notifications are never deleted while they have deliveries.
CREATE TABLE deliveries (
    id                  bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    notification_id     uuid NOT NULL,
    recipient_id        bigint NOT NULL,
    channel             text NOT NULL,
    status              text NOT NULL CHECK (status IN (
                            'pending', 'failed', 'sent', 'delivered', 'bounced', 'complained',
                            'undelivered', 'dead', 'skipped', 'cancelled')),
    reason              text,
    attempts            integer NOT NULL DEFAULT 0,
    last_error          text,
    next_attempt_at     timestamptz,
    provider_message_id text,
    created_at          timestamptz NOT NULL DEFAULT now(),
    updated_at          timestamptz NOT NULL DEFAULT now(),
    sent_at             timestamptz,
    read_at             timestamptz,             -- IN_APP only
    seen_at             timestamptz,
    archived_at         timestamptz
) WITH (fillfactor = 90);                       -- room for HOT updates of read/seen state

-- Routing is idempotent through this key (INSERT ... ON CONFLICT DO NOTHING), and it
-- serves per-notification listings and counts.
CREATE UNIQUE INDEX deliveries_notification_recipient_channel_idx
    ON deliveries (notification_id, recipient_id, channel);
-- A recipient's inbox, newest first (channel = 'IN_APP'), and recipient deletion.
CREATE INDEX deliveries_recipient_channel_idx ON deliveries (recipient_id, channel, id);
-- Unsent work, for the reconciler and the queue views; small by construction.
CREATE INDEX deliveries_unsent_idx ON deliveries (next_attempt_at)
    WHERE status IN ('pending', 'failed');
-- The dead-letter queue.
CREATE INDEX deliveries_dead_idx ON deliveries (id) WHERE status = 'dead';

-- API priority -> procrastinate priority (higher runs first).
CREATE FUNCTION job_priority(p_priority text) RETURNS integer
    LANGUAGE sql IMMUTABLE PARALLEL SAFE
    RETURN CASE p_priority WHEN 'urgent' THEN 30 WHEN 'high' THEN 20 WHEN 'normal' THEN 10 ELSE 0 END;

-- The job that routes one notification (task postbell.route, queue route).
CREATE FUNCTION route_job(p_notification_id uuid, p_priority text, p_run_at timestamptz)
    RETURNS procrastinate_job_to_defer_v1
    LANGUAGE sql IMMUTABLE
    RETURN ROW('route', 'postbell.route', job_priority(p_priority), NULL, NULL,
               jsonb_build_object('notification_id', p_notification_id), p_run_at
           )::procrastinate_job_to_defer_v1;

-- The job that sends a batch of deliveries of one channel (task postbell.deliver,
-- queue = the channel's name in lower case). It carries delivery ids only:
-- procrastinate logs job arguments, so no address or message body goes in.
CREATE FUNCTION deliver_job(p_channel text, p_ids jsonb, p_priority integer, p_run_at timestamptz)
    RETURNS procrastinate_job_to_defer_v1
    LANGUAGE sql IMMUTABLE
    RETURN ROW(lower(p_channel), 'postbell.deliver', p_priority, NULL, NULL,
               jsonb_build_object('channel', p_channel, 'ids', p_ids), p_run_at
           )::procrastinate_job_to_defer_v1;

-- Accept a notification: insert it and its routing job in the caller's
-- transaction (the outbox). Used by the API, the CLI and postbell.notify().
-- With an idempotency key already used in the same scope, nothing is written and
-- the original comes back with created = false (the caller compares request_hash).
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
    p_request_hash      bytea
) RETURNS TABLE (id uuid, status text, created boolean, request_hash bytea)
    LANGUAGE plpgsql
    SET search_path = pg_catalog, postbell
AS $$
DECLARE
    v_id     uuid;
    v_status text := CASE WHEN p_send_at > now() THEN 'scheduled' ELSE 'queued' END;
BEGIN
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

    PERFORM procrastinate_defer_jobs_v1(ARRAY[
        route_job(v_id, coalesce(p_priority, 'normal'), CASE WHEN v_status = 'scheduled' THEN p_send_at END)
    ]);
    RETURN QUERY SELECT v_id, v_status, true, p_request_hash;
END;
$$;
