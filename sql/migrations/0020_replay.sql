-- 0020: replay — send past deliveries again (a receiver was down for an hour, a bug
-- on the host's side ate them), through the normal queues, once per replay.
--
-- What a replay does to a delivery (docs/operations.md, "Replaying deliveries"):
-- it goes back to 'pending' (attempts from zero, its replay_id set) with a 'replay'
-- event in its timeline naming the replay and the status it had, and its deliver
-- job is deferred in the same statement; the worker then sends it as it sends any
-- pending delivery (the same id: receivers dedupe by it; webhooks also carry
-- X-Postbell-Replay) and it ends again — sent, or failed and retried, or dead.
-- So every delivery is counted once, in its current status (notification_counts,
-- the 'deliveries' gauge stay exact), the counters of entries into a status
-- ('status_total') count the resend as the new send it is, and a replayed delivery
-- is carried by a job like any pending one (the reconciler covers it): nothing
-- lost. The earlier attempts and feedback stay in the timeline.
--
-- A replay never resends what would not be sent today: a notification past its
-- expires_at, a recipient who has opted out of the channel (or of the category on
-- it, unless the category is required), an address marked inactive (hard bounce,
-- complaint, opt-out), IN_APP (its row is the inbox item itself).

CREATE TABLE replays (
    id                uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    channels          text[] NOT NULL,
    statuses          text[] NOT NULL,
    from_at           timestamptz,
    to_at             timestamptz,
    recipient         text,
    category          text,
    notification_id   uuid,
    priority          text NOT NULL DEFAULT 'low'
                      CHECK (priority IN ('low', 'normal', 'high', 'urgent')),
    -- how many deliveries it sent again
    deliveries        bigint NOT NULL DEFAULT 0,
    idempotency_scope text,
    idempotency_key   text,
    request_hash      bytea,
    created_at        timestamptz NOT NULL DEFAULT now()
);
CREATE UNIQUE INDEX replays_idempotency_idx ON replays (idempotency_scope, idempotency_key)
    WHERE idempotency_key IS NOT NULL;

-- The last replay that sent the delivery again (NULL: never replayed). The worker
-- reads it to mark the resend (X-Postbell-Replay).
ALTER TABLE deliveries ADD COLUMN replay_id uuid;

-- The statuses a replay may pick: final and sent once (or dead). Not skipped or
-- cancelled (deliberately not sent), not bounced or complained (the address is
-- known bad), not pending or failed (on their way already).
CREATE FUNCTION replay_statuses() RETURNS text[]
    LANGUAGE sql IMMUTABLE
    RETURN ARRAY['sent', 'delivered', 'undelivered', 'dead'];

-- The deliveries a replay with these filters picks (p_replay: not those it already
-- sent again). Every filter NULL-able except the channels and statuses; the range
-- is on the delivery's created_at, from inclusive, to exclusive.
CREATE FUNCTION replay_candidates(
    p_channels     text[],
    p_statuses     text[],
    p_from         timestamptz,
    p_to           timestamptz,
    p_recipient    text,
    p_category     text,
    p_notification uuid,
    p_replay       uuid
) RETURNS TABLE (id bigint, channel text, status text, notification_id uuid)
    LANGUAGE sql STABLE
AS $$
    SELECT d.id, d.channel, d.status, d.notification_id
      FROM deliveries AS d
      JOIN notifications AS n ON n.id = d.notification_id
      JOIN recipients AS r ON r.id = d.recipient_id
      LEFT JOIN preferences AS p ON p.recipient_id = d.recipient_id
      LEFT JOIN categories AS c ON c.key = n.category
     WHERE d.channel = ANY (p_channels)
       AND d.channel <> 'IN_APP'
       AND d.status = ANY (p_statuses)
       AND d.status = ANY (replay_statuses())
       AND (p_from IS NULL OR d.created_at >= p_from)
       AND (p_to IS NULL OR d.created_at < p_to)
       AND (p_notification IS NULL OR d.notification_id = p_notification)
       AND (p_recipient IS NULL OR r.external_id = p_recipient)
       AND (p_category IS NULL OR n.category = p_category)
       AND (p_replay IS NULL OR d.replay_id IS DISTINCT FROM p_replay)
       AND (n.expires_at IS NULL OR n.expires_at > now())
       AND (coalesce(c.required, false)
            OR (coalesce(p.channels ->> d.channel, '') <> 'false'
                AND coalesce(p.categories -> n.category ->> d.channel, '') <> 'false'))
       AND CASE d.channel WHEN 'EMAIL' THEN r.email_inactive_at IS NULL
                          WHEN 'SMS' THEN r.phone_inactive_at IS NULL
                          WHEN 'WHATSAPP' THEN r.whatsapp_inactive_at IS NULL
                          WHEN 'TELEGRAM' THEN r.telegram_inactive_at IS NULL
                          ELSE true END
$$;

-- A replay: in the caller's transaction (the API, the CLI and a SQL console call
-- it alike). With p_dry_run, nothing is written: it answers how many deliveries
-- would be sent again (id NULL). Else it records the replay and sends the
-- matching deliveries again in chunks of p_chunk, one statement each (each also
-- writes the chunk's timeline and defers its deliver jobs at the replay's
-- priority, batches of p_batch_sizes ->> channel, 500 unnamed). With more than
-- p_max matches nothing is sent (too_large; the API rolls the replay back).
-- With an idempotency key already used in the scope (and not older than
-- p_idempotency_ttl), nothing is written and the original comes back with
-- created = false: a repeat sends nothing more.
CREATE FUNCTION replay(
    p_channels          text[],
    p_from              timestamptz,
    p_to                timestamptz,
    p_statuses          text[] DEFAULT replay_statuses(),
    p_recipient         text DEFAULT NULL,
    p_category          text DEFAULT NULL,
    p_priority          text DEFAULT 'low',
    p_notification      uuid DEFAULT NULL,
    p_dry_run           boolean DEFAULT false,
    p_idempotency_key   text DEFAULT NULL,
    p_idempotency_scope text DEFAULT 'sql',
    p_request_hash      bytea DEFAULT NULL,
    p_idempotency_ttl   interval DEFAULT '24 hours',
    p_batch_sizes       jsonb DEFAULT '{}',
    p_chunk             integer DEFAULT 10000,
    p_max               bigint DEFAULT NULL
) RETURNS TABLE (id uuid, deliveries bigint, created boolean, request_hash bytea,
                 too_large boolean)
    LANGUAGE plpgsql
    SET search_path = pg_catalog, postbell
AS $$
DECLARE
    v_id      uuid;
    v_matches bigint;
    v_picked  bigint;
    v_moved   bigint;
    v_jobs    integer;
    v_total   bigint := 0;
BEGIN
    IF p_channels IS NULL OR cardinality(p_channels) = 0 THEN
        RAISE EXCEPTION 'replay: name at least one channel' USING ERRCODE = '22023';
    END IF;
    IF 'IN_APP' = ANY (p_channels) THEN
        RAISE EXCEPTION 'replay: IN_APP deliveries are the inbox items themselves; they are not sent again'
            USING ERRCODE = '22023';
    END IF;
    IF p_statuses IS NULL OR NOT p_statuses <@ replay_statuses() OR cardinality(p_statuses) = 0 THEN
        RAISE EXCEPTION 'replay: statuses must be among %', replay_statuses() USING ERRCODE = '22023';
    END IF;
    IF p_from IS NOT NULL AND p_to IS NOT NULL AND p_from >= p_to THEN
        RAISE EXCEPTION 'replay: from must be before to' USING ERRCODE = '22023';
    END IF;

    IF p_dry_run THEN
        SELECT count(*) INTO v_matches
          FROM replay_candidates(p_channels, p_statuses, p_from, p_to, p_recipient, p_category,
                                 p_notification, NULL);
        RETURN QUERY SELECT NULL::uuid, v_matches, false, NULL::bytea,
                            coalesce(v_matches > p_max, false);
        RETURN;
    END IF;

    IF p_idempotency_key IS NOT NULL THEN
        -- A key past its time to live is forgotten, so it can start a new replay.
        UPDATE replays AS r
           SET idempotency_key = NULL, idempotency_scope = NULL
         WHERE r.idempotency_scope = p_idempotency_scope
           AND r.idempotency_key = p_idempotency_key
           AND r.created_at < now() - p_idempotency_ttl;
    END IF;

    INSERT INTO replays AS r (channels, statuses, from_at, to_at, recipient, category,
                              notification_id, priority, idempotency_scope, idempotency_key,
                              request_hash)
    VALUES (p_channels, p_statuses, p_from, p_to, p_recipient, p_category, p_notification,
            coalesce(p_priority, 'low'),
            CASE WHEN p_idempotency_key IS NOT NULL THEN p_idempotency_scope END,
            p_idempotency_key, p_request_hash)
    ON CONFLICT (idempotency_scope, idempotency_key) WHERE idempotency_key IS NOT NULL
    DO NOTHING
    RETURNING r.id INTO v_id;

    IF v_id IS NULL THEN
        RETURN QUERY
            SELECT r.id, r.deliveries, false, r.request_hash, false
              FROM replays AS r
             WHERE r.idempotency_scope = p_idempotency_scope
               AND r.idempotency_key = p_idempotency_key;
        RETURN;
    END IF;

    IF p_max IS NOT NULL THEN
        SELECT count(*) INTO v_matches
          FROM replay_candidates(p_channels, p_statuses, p_from, p_to, p_recipient, p_category,
                                 p_notification, v_id);
        IF v_matches > p_max THEN
            RETURN QUERY SELECT v_id, v_matches, true, p_request_hash, true;
            RETURN;
        END IF;
    END IF;

    LOOP
        WITH picked AS (
            SELECT c.id, c.status
              FROM replay_candidates(p_channels, p_statuses, p_from, p_to, p_recipient,
                                     p_category, p_notification, v_id) AS c
             ORDER BY c.id
             LIMIT p_chunk
        ),
        moved AS (
            -- The status is checked again on the row as it is now: a delivery that
            -- changed since it was read (a callback, another replay) is left alone.
            UPDATE deliveries AS d
               SET status = 'pending', reason = NULL, attempts = 0, next_attempt_at = now(),
                   replay_id = v_id, updated_at = now()
              FROM picked
             WHERE d.id = picked.id
               AND d.status = ANY (p_statuses)
               AND d.replay_id IS DISTINCT FROM v_id
            RETURNING d.id, d.channel, picked.status AS previous
        ),
        timeline AS (
            INSERT INTO delivery_events (delivery_id, kind, outcome, detail)
            SELECT m.id, 'replay', 'pending',
                   jsonb_build_object('replay_id', v_id, 'previous_status', m.previous)
              FROM moved AS m
        )
        SELECT (SELECT count(*) FROM picked), count(*),
               defer_deliveries(array_agg(m.id), array_agg(m.channel),
                                array_agg(job_priority(coalesce(p_priority, 'low'))),
                                array_agg(NULL::timestamptz), coalesce(p_batch_sizes, '{}'))
          INTO v_picked, v_moved, v_jobs
          FROM moved AS m;
        v_total := v_total + v_moved;
        -- a short chunk was the last; a row read but changed meanwhile is either
        -- sent again above or no longer a candidate, so each round makes progress
        EXIT WHEN v_picked < p_chunk;
    END LOOP;

    UPDATE replays AS r SET deliveries = v_total WHERE r.id = v_id;
    RETURN QUERY SELECT v_id, v_total, true, p_request_hash, false;
END;
$$;

-- The time-to-send histogram measures from acceptance to the first send: a replay's
-- resend (hours later) would read as a very slow send. 0012's function, with the
-- replayed deliveries left out of the histogram (only).
CREATE OR REPLACE FUNCTION deliveries_rollup_update() RETURNS trigger
    LANGUAGE plpgsql
    SET search_path = pg_catalog, postbell
AS $$
BEGIN
    WITH c AS (
        SELECT o.channel, o.status AS old_status, d.status AS new_status,
               o.reason AS old_reason, d.reason AS new_reason, d.notification_id, d.sent_at,
               d.replay_id
          FROM old_rows AS o
          JOIN new_rows AS d ON d.id = o.id
         WHERE o.status IS DISTINCT FROM d.status
            OR (d.status = 'dead' AND o.reason IS DISTINCT FROM d.reason)
    ),
    moves AS (
        SELECT 'deliveries' AS metric, channel, old_status AS label, -1.0 AS n
          FROM c WHERE old_status IS DISTINCT FROM new_status
        UNION ALL
        SELECT 'deliveries', channel, new_status, 1.0
          FROM c WHERE old_status IS DISTINCT FROM new_status
        UNION ALL
        SELECT 'status_total', channel, new_status, 1.0
          FROM c WHERE old_status IS DISTINCT FROM new_status
        UNION ALL
        SELECT 'dead', channel, coalesce(old_reason, ''), -1.0 FROM c WHERE old_status = 'dead'
        UNION ALL
        SELECT 'dead', channel, coalesce(new_reason, ''), 1.0 FROM c WHERE new_status = 'dead'
    ),
    sent AS (
        SELECT s.channel,
               greatest(extract(epoch FROM s.sent_at - greatest(n.send_at, n.created_at)), 0)
                   AS seconds,
               s.n
          FROM (SELECT notification_id, channel, sent_at, count(*)::double precision AS n
                  FROM c
                 WHERE new_status = 'sent' AND sent_at IS NOT NULL
                   AND replay_id IS NULL   -- a replay's resend is not a time to send
                 GROUP BY 1, 2, 3) AS s
          JOIN notifications AS n ON n.id = s.notification_id
    )
    INSERT INTO metric_counts (metric, channel, label, value)
    SELECT metric, channel, label, sum(n) FROM moves GROUP BY metric, channel, label HAVING sum(n) <> 0
    UNION ALL
    SELECT 'send_seconds', channel, metric_send_bucket(seconds), sum(n) FROM sent
     GROUP BY channel, metric_send_bucket(seconds)
    UNION ALL
    SELECT 'send_seconds_sum', channel, '', sum(seconds * n) FROM sent GROUP BY channel;
    RETURN NULL;
END;
$$;
