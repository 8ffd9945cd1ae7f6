-- 0035: the inbox's kept counts by month, so that retention drops a month's counts
-- whole, as it drops the month's deliveries (issue 19, W12).
--
-- inbox_counts (0013) held one row per recipient. Dropping a month of deliveries
-- (delivery_partition_drop, 0030) had to take the month's items out of it: a pass
-- over the month's rows, a hash aggregate per recipient, and an UPDATE of every
-- recipient with an unread or unseen item in it. For W12's month (1,000,000
-- deliveries, 100,000 recipients, nine in ten items unread) that step was about
-- 0.9 s of the drop's 1.0-1.2 s, and 20 MB of its WAL, and it grew with the month.
--
-- Now the counts are kept per recipient and month (the month of the delivery's
-- created_at, which is its partition's), in inbox_month_counts: the triggers add each
-- statement's deltas to the rows of the months they touch (a fan-out: one row per
-- recipient, as before), a read sums a recipient's months (one short range of the
-- primary key: a row per month with items, at most the months kept), and dropping a
-- month deletes that month's rows through their own index, without reading the
-- month's deliveries. inbox_counts stays, as a view of the totals, for the SQL
-- console and for anyone who reads it; postbell's own reads sum the months of one
-- recipient. Updates change no indexed column and leave room on the page (fillfactor
-- 80), so they are HOT.
--
-- The counts are made again from the deliveries here (one pass over the table,
-- while deliveries is share-locked: writes wait for the migration).

LOCK TABLE deliveries IN SHARE MODE;

CREATE TABLE inbox_month_counts (
    recipient_id bigint NOT NULL,
    month timestamptz NOT NULL,         -- delivery_month(created_at) of the items
    unread integer NOT NULL DEFAULT 0,
    unseen integer NOT NULL DEFAULT 0,
    PRIMARY KEY (recipient_id, month)
) WITH (fillfactor = 80);
CREATE INDEX inbox_month_counts_month_idx ON inbox_month_counts (month);
COMMENT ON TABLE inbox_month_counts IS
    'Unread and unseen inbox items per recipient and month of created_at, kept by the'
    ' triggers on deliveries (migration 0035); inbox_counts sums them per recipient';

INSERT INTO inbox_month_counts (recipient_id, month, unread, unseen)
SELECT recipient_id, delivery_month(created_at), count(*) FILTER (WHERE read_at IS NULL),
       count(*) FILTER (WHERE seen_at IS NULL)
  FROM deliveries
 WHERE channel = 'IN_APP' AND status = 'sent' AND archived_at IS NULL
 GROUP BY 1, 2
HAVING count(*) FILTER (WHERE read_at IS NULL OR seen_at IS NULL) > 0;

DROP TABLE inbox_counts;
CREATE VIEW inbox_counts AS
SELECT recipient_id, sum(unread)::integer AS unread, sum(unseen)::integer AS unseen
  FROM inbox_month_counts
 GROUP BY recipient_id;
COMMENT ON VIEW inbox_counts IS
    'Unread and unseen inbox items per recipient: the sum of inbox_month_counts';

-- A recipient's counts are the sum of its months: a few rows of the primary key.
-- Read through this function, whose plan is a probe of that key per recipient
-- whatever the statistics say: a plan made while the table was small (a generic plan
-- cached by a connection, or statistics gathered when it held a few recipients) would
-- otherwise read the whole table on every call once it has grown (a sequential scan
-- is the better plan for one page, and a sample of one recipient says every row is
-- that recipient's). With one row per recipient, before, the unique key kept the
-- second case away; the first was there already.
CREATE FUNCTION inbox_counts_of(p_recipient_ids bigint[])
    RETURNS TABLE (recipient_id bigint, unread bigint, unseen bigint)
    LANGUAGE plpgsql STABLE
    ROWS 1      -- mostly one recipient; the default of 1,000 made the GET's estimate a
                -- million rows, past jit_above_cost: 9 ms of JIT compiling per call
    SET search_path = pg_catalog, postbell
    SET plan_cache_mode = force_generic_plan
    SET enable_seqscan = off
AS $$
BEGIN
    -- (a sub-select per recipient: joined, the plan for a small table was a full scan
    -- of the key, materialized, under a join filter)
    RETURN QUERY
    SELECT x.id, s.unread, s.unseen
      FROM (SELECT DISTINCT unnest(p_recipient_ids) AS id) AS x
     CROSS JOIN LATERAL (
            SELECT coalesce(sum(c.unread), 0)::bigint AS unread,
                   coalesce(sum(c.unseen), 0)::bigint AS unseen
              FROM inbox_month_counts AS c
             WHERE c.recipient_id = x.id) AS s;
END;
$$;

CREATE OR REPLACE FUNCTION delivery_counts_apply() RETURNS trigger
    LANGUAGE plpgsql
    SET search_path = pg_catalog, postbell
    SET work_mem = '32MB'               -- a routing chunk's sort in memory (below)
AS $$
DECLARE
    source text := CASE TG_OP
        WHEN 'INSERT' THEN 'SELECT 1 AS s, * FROM new_rows'
        WHEN 'DELETE' THEN 'SELECT -1 AS s, * FROM old_rows'
        ELSE 'SELECT 1 AS s, * FROM new_rows UNION ALL SELECT -1 AS s, * FROM old_rows'
    END;
BEGIN
    EXECUTE format($q$
        WITH d AS (%s),
        inbox AS (
            SELECT recipient_id, delivery_month(created_at) AS month,
                   coalesce(sum(s) FILTER (WHERE read_at IS NULL), 0) AS unread,
                   coalesce(sum(s) FILTER (WHERE seen_at IS NULL), 0) AS unseen
              FROM d
             WHERE channel = 'IN_APP' AND status = 'sent' AND archived_at IS NULL
             GROUP BY 1, 2
        ),
        inbox_written AS (
            INSERT INTO inbox_month_counts AS c (recipient_id, month, unread, unseen)
            SELECT recipient_id, month, unread, unseen FROM inbox
             WHERE unread <> 0 OR unseen <> 0
             ORDER BY recipient_id, month
                ON CONFLICT (recipient_id, month) DO UPDATE
               SET unread = c.unread + excluded.unread, unseen = c.unseen + excluded.unseen
        )
        INSERT INTO notification_counts AS c (notification_id, status, n)
        SELECT notification_id, status, sum(s) FROM d
         GROUP BY notification_id, status
        HAVING sum(s) <> 0
         ORDER BY notification_id, status
            ON CONFLICT (notification_id, status) DO UPDATE SET n = c.n + excluded.n
    $q$, source);
    RETURN NULL;
END;
$$;

CREATE OR REPLACE FUNCTION delivery_counts_truncate() RETURNS trigger
    LANGUAGE plpgsql
    SET search_path = pg_catalog, postbell
AS $$
BEGIN
    DELETE FROM inbox_month_counts;
    DELETE FROM notification_counts;
    RETURN NULL;
END;
$$;

-- Retention of one whole partition (0030), with the inbox step a DELETE of the
-- month's count rows: one pass over the month's deliveries now, not two.
CREATE OR REPLACE FUNCTION delivery_partition_drop(p_name text, p_cutoff timestamptz) RETURNS bigint
    LANGUAGE plpgsql
    SET search_path = pg_catalog, postbell
    SET work_mem = '256MB'
    SET enable_indexscan = off          -- the passes read a whole month: in heap order
    SET enable_seqscan = on             -- (restored on return: set off for one step below)
AS $$
DECLARE
    v_lo timestamptz;
    v_hi timestamptz;
    v_unsent boolean;
    v_rows bigint;
    v_changed timestamptz;
    v_lo_id bigint;
    v_hi_id bigint;
BEGIN
    SELECT p.lo, p.hi INTO v_lo, v_hi FROM delivery_partitions() AS p WHERE p.name = p_name;
    IF v_hi IS NULL OR v_hi > p_cutoff THEN
        RAISE NOTICE 'partition %: not a bounded partition ending before the cutoff', p_name;
        RETURN NULL;
    END IF;
    -- (its inbox counts are whole months: a partition whose bounds cut a month, made
    -- by hand, goes row by row instead)
    IF v_hi <> delivery_month(v_hi) OR v_lo <> delivery_month(v_lo) THEN
        RAISE NOTICE 'partition %: its bounds are not the starts of months', p_name;
        RETURN NULL;
    END IF;
    -- (one cancelled before it was routed is routed too, all its deliveries
    -- 'cancelled'; created_at bounds the search, through the unrouted and BRIN indexes)
    IF EXISTS (SELECT 1 FROM notifications AS n
                WHERE n.created_at < v_hi
                  AND (n.status IN ('queued', 'scheduled')
                       OR (n.status = 'cancelled' AND n.routed_at IS NULL))
                  AND greatest(n.created_at, n.send_at) < v_hi) THEN
        RAISE NOTICE 'partition %: a notification due in it is not routed yet', p_name;
        RETURN NULL;
    END IF;
    EXECUTE format('LOCK TABLE %I IN SHARE MODE', p_name);
    -- through the partial index of unsent deliveries (a bitmap scan)
    EXECUTE format('SELECT EXISTS (SELECT 1 FROM %I WHERE status IN (''pending'', ''failed''))',
                   p_name) INTO STRICT v_unsent;
    IF v_unsent THEN
        RAISE NOTICE 'partition %: it holds unsent deliveries', p_name;
        RETURN NULL;
    END IF;
    DROP TABLE IF EXISTS pg_temp.delivery_month_groups;
    EXECUTE format($q$
        CREATE TEMPORARY TABLE delivery_month_groups ON COMMIT DROP AS
        SELECT notification_id, channel, status, reason, count(*) AS n,
               max(updated_at) AS changed, min(id) AS lo_id, max(id) AS hi_id
          FROM %I
         GROUP BY notification_id, channel, status, reason
    $q$, p_name);
    SELECT coalesce(sum(n), 0), max(changed), min(lo_id), max(hi_id)
      INTO v_rows, v_changed, v_lo_id, v_hi_id
      FROM pg_temp.delivery_month_groups;
    IF v_changed >= p_cutoff THEN
        RAISE NOTICE 'partition %: a delivery in it changed after the cutoff', p_name;
        RETURN NULL;
    END IF;
    -- What the DELETE triggers would have done (delivery_counts_apply,
    -- deliveries_rollup_delete), for the whole month at once. The inbox's counts of
    -- the month are rows of their own: they go whole, through the month index.
    -- (through the index whatever the statistics say: gathered when the table held one
    -- month, they would make every row look like this month's, and the table has a row
    -- per recipient for every month kept)
    SET LOCAL enable_seqscan = off;
    DELETE FROM inbox_month_counts AS c
     WHERE c.month < v_hi AND (v_lo IS NULL OR c.month >= v_lo);
    SET LOCAL enable_seqscan = on;
    WITH g AS (SELECT notification_id, status, sum(n) AS n FROM pg_temp.delivery_month_groups
                GROUP BY notification_id, status),
    kept AS (
        UPDATE notification_counts AS c SET n = c.n - g.n
          FROM g
         WHERE c.notification_id = g.notification_id AND c.status = g.status
        RETURNING c.notification_id, c.status, c.n
    )
    DELETE FROM notification_counts AS c
     USING kept
     WHERE kept.n = 0 AND c.notification_id = kept.notification_id AND c.status = kept.status;
    INSERT INTO metric_counts (metric, channel, label, value)
    SELECT 'deliveries', channel, status, -sum(n) FROM pg_temp.delivery_month_groups
     GROUP BY channel, status
    UNION ALL
    SELECT 'dead', channel, coalesce(reason, ''), -sum(n) FROM pg_temp.delivery_month_groups
     WHERE status = 'dead' GROUP BY channel, coalesce(reason, '');
    -- the timelines, within the month's id range (through the events' index; most
    -- months' IN_APP deliveries have none)
    SET LOCAL enable_indexscan = on;
    EXECUTE format($q$
        DELETE FROM delivery_events AS e
         WHERE e.delivery_id BETWEEN %2$L AND %3$L
           AND EXISTS (SELECT 1 FROM %1$I AS d WHERE d.id = e.delivery_id)
    $q$, p_name, v_lo_id, v_hi_id);
    DROP TABLE pg_temp.delivery_month_groups;
    EXECUTE format('DROP TABLE %I', p_name);
    RETURN v_rows;
END;
$$;

-- The statement triggers on deliveries sort or hash a routing chunk's rows (50,000 at
-- most): with the default work_mem of 4 MB those sorts went to disk (EXPLAIN ANALYZE
-- of a 50,000-member IN_APP chunk: "external merge", the inbox counts' aggregate 77 ms
-- and the metric rollup's 47 ms; in memory 46 ms and 20 ms). Enough for a chunk, for
-- these functions only (delivery_counts_apply above says so itself).
ALTER FUNCTION deliveries_rollup_insert() SET work_mem = '32MB';
ALTER FUNCTION deliveries_rollup_update() SET work_mem = '32MB';
ALTER FUNCTION deliveries_rollup_delete() SET work_mem = '32MB';
