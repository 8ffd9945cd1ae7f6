-- 0003: push devices, fallback deliveries, and the routing decision as one function.

CREATE TABLE devices (
    id              bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    recipient_id    bigint NOT NULL REFERENCES recipients (id) ON DELETE CASCADE,
    token           text NOT NULL UNIQUE,            -- an FCM registration token
    platform        text NOT NULL CHECK (platform IN ('android', 'ios', 'web')),
    created_at      timestamptz NOT NULL DEFAULT now(),
    last_seen_at    timestamptz NOT NULL DEFAULT now(),
    disabled_at     timestamptz,                     -- FCM said unregistered/invalid: never again
    disabled_reason text
);
CREATE INDEX devices_active_recipient_idx ON devices (recipient_id) WHERE disabled_at IS NULL;

-- A fallback delivery (e.g. SMS for a PUSH that could not be delivered) points at the
-- delivery it replaces and says why it exists ("PUSH no_device", "PUSH dead").
ALTER TABLE deliveries
    ADD COLUMN fallback_for    bigint,
    ADD COLUMN fallback_reason text;

-- Why a delivery on p_channel to p_recipient must be skipped, or NULL to send it.
-- p_address_field names the recipient column holding the channel's address;
-- '@devices' means "an active push device". Used by routing and by fallbacks, so
-- both decide alike. A SQL-bodied function: the planner inlines it.
CREATE FUNCTION delivery_skip_reason(
    p_channel        text,
    p_configured     boolean,
    p_address_field  text,
    p_inactive_field text,
    p_expires_at     timestamptz,
    p_recipient      recipients
) RETURNS text
    LANGUAGE sql STABLE
    RETURN CASE
        WHEN p_expires_at <= now() THEN 'expired'
        WHEN p_configured IS NOT TRUE THEN 'channel_not_configured'
        WHEN p_address_field IS NULL THEN NULL
        WHEN p_address_field = '@devices' THEN
            CASE WHEN EXISTS (SELECT 1 FROM devices AS d
                               WHERE d.recipient_id = (p_recipient).id AND d.disabled_at IS NULL)
                 THEN NULL ELSE 'no_device' END
        WHEN to_jsonb(p_recipient) ->> p_address_field IS NULL THEN 'no_address'
        WHEN to_jsonb(p_recipient) ->> p_inactive_field IS NOT NULL THEN 'address_inactive'
    END;

-- Defer deliver jobs for a set of deliveries: one job per channel, priority, run time
-- and batch of at most p_batch_sizes ->> channel ids (500 when unnamed), in one
-- statement, in the caller's transaction. Answers how many jobs it deferred.
CREATE FUNCTION defer_deliveries(
    p_ids         bigint[],
    p_channels    text[],
    p_priorities  integer[],
    p_run_at      timestamptz[],
    p_batch_sizes jsonb
) RETURNS integer
    LANGUAGE sql VOLATILE
BEGIN ATOMIC
    SELECT coalesce(cardinality(procrastinate_defer_jobs_v1(ARRAY(
               SELECT deliver_job(b.channel, b.ids, b.priority, b.run_at)
                 FROM (SELECT g.channel, g.priority, g.run_at, jsonb_agg(g.id ORDER BY g.id) AS ids
                         FROM (SELECT u.id, u.channel, u.priority, u.run_at,
                                      (row_number() OVER (PARTITION BY u.channel, u.priority, u.run_at
                                                          ORDER BY u.id) - 1)
                                          / coalesce((p_batch_sizes ->> u.channel)::integer, 500) AS grp
                                 FROM unnest(p_ids, p_channels, p_priorities, p_run_at)
                                      AS u(id, channel, priority, run_at)) AS g
                        GROUP BY g.channel, g.priority, g.run_at, g.grp) AS b))), 0);
END;
