-- 0012: insight — the notifications list, each delivery's timeline, and the rollup
-- that /metrics reads instead of counting deliveries.
--
-- 1. Indexes for GET /api/notifications (newest first, keyset on created_at, id):
--    the list walks one of them backwards instead of scanning the table; both are on
--    columns never updated.
-- 2. delivery_events: a delivery's history (attempts, provider feedback, requeues,
--    replays, cancellation). Written set-based by the statements that record those
--    outcomes; no foreign key (like deliveries, it is written by the batch); a
--    delivery's events go with it (the DELETE trigger below).
-- 3. metric_counts: append-only deltas (metric, channel, label, value) that the API
--    sums per scrape; the maintenance loop folds them into one row per key. Inserts
--    only, so no row is hot and no two transactions ever wait on each other here.
--    Statement-level triggers on deliveries keep it exact for every writer (routing,
--    outcomes, feedback, requeues, cancellation, retention, recipient deletion, and
--    SQL typed by an operator): one INSERT per statement, never one per row.

-- 1. The list.
CREATE INDEX notifications_created_idx ON notifications (created_at, id);
CREATE INDEX notifications_category_created_idx ON notifications (category, created_at, id)
    WHERE category IS NOT NULL;
-- No index names status or routed_at: routing's update of a notification stays HOT
-- (see 0006). A status filter narrows the newest-first walk of these indexes.

-- Whether notification p_n sends on p_channel: its channels, else its category's
-- default channels, else IN_APP (as routing decides), or a fallback channel that it
-- or its category names.
CREATE FUNCTION notification_sends_on(p_n notifications, p_channel text) RETURNS boolean
    LANGUAGE sql STABLE
    SET search_path = pg_catalog, postbell
AS $$
    SELECT p_channel = ANY(coalesce(p_n.channels, c.default_channels, ARRAY['IN_APP']))
           OR EXISTS (SELECT 1
                        FROM jsonb_each_text(coalesce(p_n.fallback, c.fallback)) AS f
                       WHERE f.value = p_channel)
      FROM (SELECT 1) AS one
      LEFT JOIN categories AS c ON c.key = p_n.category
$$;

-- 2. The timeline.
CREATE TABLE delivery_events (
    delivery_id         bigint NOT NULL,
    at                  timestamptz NOT NULL DEFAULT now(),
    kind                text NOT NULL CHECK (kind IN (
                            'attempt', 'skip', 'feedback', 'requeue', 'replay', 'cancel')),
    -- attempt: the status it led to (sent, failed, dead); skip: skipped; feedback:
    -- what the provider reported (delivered, bounced, complained, undelivered)
    outcome             text,
    error_class         text,
    error               text,
    provider_message_id text,
    -- attempt: when the send call that carried it started, and how long it took
    started_at          timestamptz,
    duration_ms         double precision,
    detail              jsonb
);
CREATE INDEX delivery_events_delivery_idx ON delivery_events (delivery_id, at);

-- 3. The rollup.
CREATE TABLE metric_counts (
    metric  text NOT NULL,
    channel text NOT NULL,
    label   text NOT NULL DEFAULT '',
    value   double precision NOT NULL
);

-- Upper bounds (seconds) of the time-to-send histogram's buckets; the last is +Inf.
CREATE FUNCTION metric_send_buckets() RETURNS double precision[]
    LANGUAGE sql IMMUTABLE
    SET search_path = pg_catalog
AS $$ SELECT ARRAY[0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900, 3600, 21600,
                   86400, 'Infinity']::double precision[] $$;

-- The bucket (its upper bound, as text) that a time to send falls in.
CREATE FUNCTION metric_send_bucket(p_seconds double precision) RETURNS text
    LANGUAGE sql IMMUTABLE
    SET search_path = pg_catalog, postbell
AS $$ SELECT (SELECT b FROM unnest(metric_send_buckets()) AS b
               WHERE b >= p_seconds ORDER BY b LIMIT 1)::text $$;

-- Time to send: from acceptance (a scheduled send: its send_at) to sent_at.
-- Applied per (notification, channel, sent_at) group, so a fan-out's 50,000 rows
-- look up their notification once.
CREATE FUNCTION deliveries_rollup_insert() RETURNS trigger
    LANGUAGE plpgsql
    SET search_path = pg_catalog, postbell
AS $$
BEGIN
    WITH g AS (
        SELECT channel, status, CASE WHEN status = 'dead' THEN coalesce(reason, '') END AS dead_reason,
               count(*)::double precision AS n
          FROM new_rows
         GROUP BY 1, 2, 3
    ),
    sent AS (
        SELECT s.channel,
               greatest(extract(epoch FROM s.sent_at - greatest(n.send_at, n.created_at)), 0)
                   AS seconds,
               s.n
          FROM (SELECT notification_id, channel, sent_at, count(*)::double precision AS n
                  FROM new_rows
                 WHERE status = 'sent' AND sent_at IS NOT NULL
                 GROUP BY 1, 2, 3) AS s
          JOIN notifications AS n ON n.id = s.notification_id
    )
    INSERT INTO metric_counts (metric, channel, label, value)
    SELECT 'deliveries', channel, status, sum(n) FROM g GROUP BY channel, status
    UNION ALL
    SELECT 'status_total', channel, status, sum(n) FROM g GROUP BY channel, status
    UNION ALL
    SELECT 'dead', channel, dead_reason, n FROM g WHERE status = 'dead'
    UNION ALL
    SELECT 'send_seconds', channel, metric_send_bucket(seconds), sum(n) FROM sent
     GROUP BY channel, metric_send_bucket(seconds)
    UNION ALL
    SELECT 'send_seconds_sum', channel, '', sum(seconds * n) FROM sent GROUP BY channel;
    RETURN NULL;
END;
$$;

CREATE FUNCTION deliveries_rollup_update() RETURNS trigger
    LANGUAGE plpgsql
    SET search_path = pg_catalog, postbell
AS $$
BEGIN
    WITH c AS (
        SELECT o.channel, o.status AS old_status, d.status AS new_status,
               o.reason AS old_reason, d.reason AS new_reason, d.notification_id, d.sent_at
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

CREATE FUNCTION deliveries_rollup_delete() RETURNS trigger
    LANGUAGE plpgsql
    SET search_path = pg_catalog, postbell
AS $$
BEGIN
    INSERT INTO metric_counts (metric, channel, label, value)
    SELECT 'deliveries', channel, status, -count(*) FROM old_rows GROUP BY channel, status
    UNION ALL
    SELECT 'dead', channel, coalesce(reason, ''), -count(*)
      FROM old_rows WHERE status = 'dead' GROUP BY channel, coalesce(reason, '');
    -- A delivery's timeline goes with it.
    DELETE FROM delivery_events AS e USING old_rows AS o WHERE e.delivery_id = o.id;
    RETURN NULL;
END;
$$;

CREATE TRIGGER deliveries_rollup_insert AFTER INSERT ON deliveries
    REFERENCING NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION deliveries_rollup_insert();
CREATE TRIGGER deliveries_rollup_update AFTER UPDATE ON deliveries
    REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION deliveries_rollup_update();
CREATE TRIGGER deliveries_rollup_delete AFTER DELETE ON deliveries
    REFERENCING OLD TABLE AS old_rows
    FOR EACH STATEMENT EXECUTE FUNCTION deliveries_rollup_delete();

-- What is there already: the gauges start exact; the counters start at today's
-- counts; the histogram starts empty.
INSERT INTO metric_counts (metric, channel, label, value)
SELECT 'deliveries', channel, status, count(*) FROM deliveries GROUP BY channel, status
UNION ALL
SELECT 'status_total', channel, status, count(*) FROM deliveries GROUP BY channel, status
UNION ALL
SELECT 'dead', channel, coalesce(reason, ''), count(*) FROM deliveries WHERE status = 'dead'
 GROUP BY channel, coalesce(reason, '');
