-- 0026: the statement triggers on deliveries and notifications plan by index,
-- whatever the statistics said when their plan was made (as the job fetch, 0013).
--
-- A plpgsql function keeps the plan of each of its static statements for the life of
-- the connection, and these triggers' statements take no parameters, so no
-- plan_cache_mode makes them plan again. A worker connection that first inserted
-- deliveries while `notifications` was small kept a hash join over a sequential scan
-- of it, and went on reading the whole table once per routing batch and per recorded
-- batch as it grew (200,000 rows read per batch of 200 in
-- tests/integration/test_stable_plans.py).
--
-- The rollups (insert, update) now look a notification up per group of sent
-- deliveries with a scalar subquery by primary key, under sequential scans off (a
-- function's own SET; nothing else on the connection is affected): the only plan
-- left is the index probe. Their other joins are between the transition tables, so
-- hash joins stay allowed (a nested loop there would be quadratic in the rows one
-- statement changes). The clean-ups (a deleted delivery's timeline, a deleted
-- notification's counts) join a transition table to an indexed table: with
-- sequential scans, hash and merge joins off the plan is the index nested loop.

CREATE OR REPLACE FUNCTION deliveries_rollup_insert()
 RETURNS trigger
 LANGUAGE plpgsql
 SET search_path = pg_catalog, postbell
 SET enable_seqscan = off
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
               -- a lookup by primary key per group, never a join the planner could
               -- turn into a scan of notifications
               greatest(extract(epoch FROM s.sent_at - (SELECT greatest(n.send_at, n.created_at)
                                                         FROM notifications AS n
                                                        WHERE n.id = s.notification_id)), 0)
                   AS seconds,
               s.n
          FROM (SELECT notification_id, channel, sent_at, count(*)::double precision AS n
                  FROM new_rows
                 WHERE status = 'sent' AND sent_at IS NOT NULL
                 GROUP BY 1, 2, 3) AS s
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

CREATE OR REPLACE FUNCTION deliveries_rollup_update()
 RETURNS trigger
 LANGUAGE plpgsql
 SET search_path = pg_catalog, postbell
 SET enable_seqscan = off
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
               -- a lookup by primary key per group, never a join the planner could
               -- turn into a scan of notifications
               greatest(extract(epoch FROM s.sent_at - (SELECT greatest(n.send_at, n.created_at)
                                                         FROM notifications AS n
                                                        WHERE n.id = s.notification_id)), 0)
                   AS seconds,
               s.n
          FROM (SELECT notification_id, channel, sent_at, count(*)::double precision AS n
                  FROM c
                 WHERE new_status = 'sent' AND sent_at IS NOT NULL
                   AND replay_id IS NULL   -- a replay's resend is not a time to send
                 GROUP BY 1, 2, 3) AS s
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

ALTER FUNCTION deliveries_rollup_delete()
    SET enable_seqscan = off SET enable_hashjoin = off SET enable_mergejoin = off;
ALTER FUNCTION notification_counts_forget()
    SET enable_seqscan = off SET enable_hashjoin = off SET enable_mergejoin = off;

-- The counts' triggers (0013) ran with the caller's search_path: a session without
-- postbell on it (psql as an operator, a host app's own connection) that changed
-- postbell.deliveries failed with 'relation "inbox_counts" does not exist', and
-- `TRUNCATE postbell.deliveries` could not run at all. They name their schema now, as
-- every other postbell function does.
ALTER FUNCTION delivery_counts_apply() SET search_path = pg_catalog, postbell;
ALTER FUNCTION delivery_counts_truncate() SET search_path = pg_catalog, postbell;
ALTER FUNCTION notification_counts_forget() SET search_path = pg_catalog, postbell;
