-- 0004: recipient controls — preferences, categories, topics, provider pacing — and
-- routing that applies them.

CREATE TABLE preferences (
    recipient_id bigint PRIMARY KEY REFERENCES recipients (id) ON DELETE CASCADE,
    channels     jsonb NOT NULL DEFAULT '{}',   -- {"EMAIL": false}
    categories   jsonb NOT NULL DEFAULT '{}',   -- {"events": {"SMS": false}}
    quiet_hours  jsonb,                         -- {"start": "22:00", "end": "07:00", "timezone": "Europe/Berlin"}
    updated_at   timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE categories (
    key              text PRIMARY KEY,
    name             text,
    description      text,
    default_channels text[],                    -- channels when a notification names none
    required         boolean NOT NULL DEFAULT false,  -- recipients cannot opt out (security notices)
    fallback         jsonb,                     -- {"PUSH": "SMS"}, when the notification names none
    rate_limits      jsonb NOT NULL DEFAULT '{}', -- {"SMS": {"limit": 5, "per_seconds": 3600, "policy": "defer"}}
    created_at       timestamptz NOT NULL DEFAULT now(),
    updated_at       timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE topics (
    key        text PRIMARY KEY,                 -- e.g. community-42
    created_at timestamptz NOT NULL DEFAULT now()
);

-- The primary key orders a topic's members by recipient id: fan-out walks it in
-- chunks (recipient_id > last ORDER BY recipient_id LIMIT n).
CREATE TABLE topic_subscribers (
    topic_key    text NOT NULL REFERENCES topics (key) ON DELETE CASCADE,
    recipient_id bigint NOT NULL REFERENCES recipients (id) ON DELETE CASCADE,
    created_at   timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (topic_key, recipient_id)
);
CREATE INDEX topic_subscribers_recipient_idx ON topic_subscribers (recipient_id);

-- Provider pacing shared by every worker process: a token bucket per channel.
CREATE TABLE provider_buckets (
    channel    text PRIMARY KEY,
    tokens     double precision NOT NULL,
    updated_at timestamptz NOT NULL DEFAULT now()
);

-- Rate limits count what was sent to a recipient on a channel recently.
CREATE INDEX deliveries_recipient_channel_sent_idx ON deliveries (recipient_id, channel, sent_at)
    WHERE sent_at IS NOT NULL AND channel <> 'IN_APP';

-- Where a routing chunk of a topic notification got to (resume after a crash).
ALTER TABLE notifications ADD COLUMN routed_through bigint;
-- Not yet routed (queued, scheduled, or cancelled before routing): what the
-- reconciler reads. Replaces 0002's index, whose predicate left out the cancelled.
DROP INDEX notifications_unrouted_idx;
CREATE INDEX notifications_unrouted_idx ON notifications (created_at) WHERE routed_at IS NULL;

-- Why a delivery to p_recipient on p_channel must be skipped, or NULL to send it.
-- Replaces 0003's version, adding preferences: an opted-out channel or category x
-- channel is 'opted_out' unless the category is required.
DROP FUNCTION delivery_skip_reason(text, boolean, text, text, timestamptz, recipients);
CREATE FUNCTION delivery_skip_reason(
    p_channel        text,
    p_configured     boolean,
    p_address_field  text,
    p_inactive_field text,
    p_expires_at     timestamptz,
    p_recipient      recipients,
    p_preferences    preferences,
    p_category       text,
    p_required       boolean
) RETURNS text
    LANGUAGE sql STABLE
    RETURN CASE
        WHEN p_expires_at <= now() THEN 'expired'
        WHEN p_configured IS NOT TRUE THEN 'channel_not_configured'
        WHEN p_required IS NOT TRUE
             AND ((p_preferences).channels ->> p_channel = 'false'
                  OR (p_preferences).categories -> p_category ->> p_channel = 'false')
            THEN 'opted_out'
        WHEN p_address_field IS NULL THEN NULL
        WHEN p_address_field = '@devices' THEN
            CASE WHEN EXISTS (SELECT 1 FROM devices AS d
                               WHERE d.recipient_id = (p_recipient).id AND d.disabled_at IS NULL)
                 THEN NULL ELSE 'no_device' END
        WHEN to_jsonb(p_recipient) ->> p_address_field IS NULL THEN 'no_address'
        WHEN to_jsonb(p_recipient) ->> p_inactive_field IS NOT NULL THEN 'address_inactive'
    END;

-- When the quiet hours {"start": "22:00", "end": "07:00", "timezone": ...} hold at
-- p_now, the moment they end; else NULL. Times are the recipient's wall clock: the
-- conversion goes through the time zone at the end moment, so a DST change inside
-- the window is right.
CREATE FUNCTION quiet_hours_end(p_quiet jsonb, p_fallback_zone text, p_now timestamptz)
    RETURNS timestamptz
    LANGUAGE sql STABLE
    RETURN (
        SELECT CASE
                   WHEN q.start_at = q.end_at THEN NULL
                   WHEN q.start_at < q.end_at THEN
                       CASE WHEN q.local_time >= q.start_at AND q.local_time < q.end_at
                            THEN (q.local_day + q.end_at) AT TIME ZONE q.zone END
                   WHEN q.local_time >= q.start_at
                       THEN (q.local_day + 1 + q.end_at) AT TIME ZONE q.zone
                   WHEN q.local_time < q.end_at
                       THEN (q.local_day + q.end_at) AT TIME ZONE q.zone
               END
          FROM (SELECT z.zone,
                       (p_quiet ->> 'start')::time AS start_at,
                       (p_quiet ->> 'end')::time AS end_at,
                       (p_now AT TIME ZONE z.zone)::time AS local_time,
                       (p_now AT TIME ZONE z.zone)::date AS local_day
                  FROM (SELECT coalesce(p_quiet ->> 'timezone', p_fallback_zone, 'UTC') AS zone) AS z
                 WHERE p_quiet IS NOT NULL) AS q
    );

-- Accept a notification (replaces 0002's version): an Idempotency-Key is remembered
-- for p_idempotency_ttl; after that the same key starts a new notification.
DROP FUNCTION enqueue_notification(text[], text, text, text, text, jsonb, text[], text, text,
                                   jsonb, timestamptz, timestamptz, text, text, bytea);
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
    p_idempotency_ttl   interval
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

    PERFORM procrastinate_defer_jobs_v1(ARRAY[
        route_job(v_id, coalesce(p_priority, 'normal'), CASE WHEN v_status = 'scheduled' THEN p_send_at END)
    ]);
    RETURN QUERY SELECT v_id, v_status, true, p_request_hash;
END;
$$;
