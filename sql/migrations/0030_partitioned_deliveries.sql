-- 0030: deliveries are partitioned by month, so that retention drops a month whole.
--
-- Until now retention (POSTBELL_RETENTION_DAYS) deleted expired deliveries row by
-- row: a DELETE storm of WAL, dead tuples for vacuum to find, and bloat, at a rate
-- that grows with the traffic, and with retention off the table grew without end.
-- Now `deliveries` is a table partitioned by range of created_at, one partition per
-- calendar month (UTC), and retention drops a month whose deliveries have all aged
-- out in one short transaction (delivery_partition_drop below); the row-by-row
-- purge stays only for what a whole month cannot take (a month still holding
-- unsent work).
--
-- The key. Postgres enforces a unique key on a partitioned table only when it holds
-- the partition key, so routing's idempotency key becomes (notification_id,
-- recipient_id, channel, created_at). For it to stay a per-notification key, every
-- delivery of a notification carries the same created_at: the time the notification
-- was due, greatest(created_at, send_at) of the notification (send_at is never
-- changed once set), written by routing, and a fallback takes its original
-- delivery's. So every delivery of a notification lives in one partition, a rerun of
-- a chunk still conflicts with what it wrote, and an inbox item's created_at is the
-- time its notification was sent (before: the time a worker routed it, a few ms
-- later, or later behind a backlog).
--
-- The primary key becomes (id, created_at); ids still come from one sequence (a
-- partitioned table cannot have an identity column in Postgres 15), so an id alone
-- still names one delivery, and the API and callbacks keep using it.
--
-- The rows already there stay where they are: the old table becomes the partition
-- `deliveries_history`, for everything before the first monthly partition (no copy;
-- on a big table this migration builds two indexes on it, and holds the table for
-- as long as that takes). The history partition keeps its old unique index on
-- (notification_id, recipient_id, channel) too, since its rows' created_at came from
-- the old rule: inserts into it are still checked against that key.
--
-- Months ahead are made by delivery_partitions_ensure(), which the migration and
-- every worker's maintenance loop call (through next month: every partition is one
-- more that a query without a month probes, so few are kept empty); past the last month a
-- catch-all partition (to MAXVALUE) takes any row, so an insert never fails for
-- want of a partition, however long maintenance was away.
--
-- Triggers with transition tables work on a partitioned table (they see the rows
-- of every partition), and the views are bound to the old table's OID: both are
-- made again on the new table. Dropping a partition fires no DELETE trigger, so
-- delivery_partition_drop() takes the month's rows out of the kept counts itself.

CREATE FUNCTION delivery_month(p_at timestamptz) RETURNS timestamptz
    LANGUAGE sql IMMUTABLE PARALLEL SAFE
    RETURN date_trunc('month', p_at AT TIME ZONE 'UTC') AT TIME ZONE 'UTC';

-- The views over deliveries, in any schema, as text, to be made again on the new table.
CREATE TEMPORARY TABLE delivery_views ON COMMIT DROP AS
SELECT DISTINCT v.oid::regclass::text AS name, pg_get_viewdef(v.oid) AS def
  FROM pg_depend AS dep
  JOIN pg_rewrite AS rw ON rw.oid = dep.objid
  JOIN pg_class AS v ON v.oid = rw.ev_class
 WHERE dep.classid = 'pg_rewrite'::regclass
   AND dep.refobjid = 'deliveries'::regclass
   AND v.oid <> 'deliveries'::regclass;

ALTER TABLE deliveries RENAME TO deliveries_history;
-- (its primary key goes: the new one holds created_at too)
ALTER TABLE deliveries_history DROP CONSTRAINT deliveries_pkey;
ALTER INDEX deliveries_notification_recipient_channel_idx
    RENAME TO deliveries_history_notification_recipient_channel_idx;
ALTER INDEX deliveries_created_brin_idx RENAME TO deliveries_history_created_brin_idx;
ALTER INDEX deliveries_dead_idx RENAME TO deliveries_history_dead_idx;
ALTER INDEX deliveries_recipient_channel_idx RENAME TO deliveries_history_recipient_channel_idx;
ALTER INDEX deliveries_recipient_channel_sent_idx
    RENAME TO deliveries_history_recipient_channel_sent_idx;
ALTER INDEX deliveries_unsent_idx RENAME TO deliveries_history_unsent_idx;
DROP TRIGGER deliveries_counts_delete ON deliveries_history;
DROP TRIGGER deliveries_counts_insert ON deliveries_history;
DROP TRIGGER deliveries_counts_truncate ON deliveries_history;
DROP TRIGGER deliveries_counts_update ON deliveries_history;
DROP TRIGGER deliveries_rollup_delete ON deliveries_history;
DROP TRIGGER deliveries_rollup_insert ON deliveries_history;
DROP TRIGGER deliveries_rollup_update ON deliveries_history;

-- The identity's sequence goes with the identity; a plain one takes over where the
-- ids got to.
ALTER TABLE deliveries_history ALTER COLUMN id DROP IDENTITY;
CREATE SEQUENCE deliveries_id_seq AS bigint;
SELECT setval('deliveries_id_seq', coalesce(max(id), 0) + 1, false) FROM deliveries_history;

CREATE TABLE deliveries (LIKE deliveries_history INCLUDING DEFAULTS INCLUDING CONSTRAINTS)
    PARTITION BY RANGE (created_at);
ALTER TABLE deliveries ALTER COLUMN id SET DEFAULT nextval('deliveries_id_seq');
ALTER SEQUENCE deliveries_id_seq OWNED BY deliveries.id;
COMMENT ON TABLE deliveries IS
    'One row per notification x recipient x channel, partitioned by month of created_at'
    ' (migration 0030; delivery_partitions() lists the partitions)';

-- History ends where the first month begins: this month when it is empty (a new
-- database), else next month (the rows of this month are in it).
DO $$
DECLARE
    v_end timestamptz := delivery_month(now())
        + CASE WHEN EXISTS (SELECT 1 FROM deliveries_history) THEN interval '1 month'
               ELSE interval '0' END;
BEGIN
    EXECUTE format('ALTER TABLE deliveries ATTACH PARTITION deliveries_history'
                   ' FOR VALUES FROM (MINVALUE) TO (%L)', v_end);
    EXECUTE format('CREATE TABLE deliveries_future PARTITION OF deliveries'
                   ' FOR VALUES FROM (%L) TO (MAXVALUE) WITH (fillfactor = 90)', v_end);
END;
$$;

-- The indexes of 0002 and 0004/0005, on every partition; the unique ones hold the
-- partition key. On the history partition the equal ones it has are attached, the
-- other two are built. The BRIN index on created_at stays on the history partition
-- alone: months are ranges of created_at already, and every index is one more for
-- the planner to weigh in every partition of every query.
ALTER TABLE deliveries ADD CONSTRAINT deliveries_pkey PRIMARY KEY (id, created_at);
CREATE UNIQUE INDEX deliveries_notification_recipient_channel_idx
    ON deliveries (notification_id, recipient_id, channel, created_at);
CREATE INDEX deliveries_recipient_channel_idx ON deliveries (recipient_id, channel, id);
CREATE INDEX deliveries_recipient_channel_sent_idx ON deliveries (recipient_id, channel, sent_at)
    WHERE sent_at IS NOT NULL AND channel <> 'IN_APP';
CREATE INDEX deliveries_unsent_idx ON deliveries (next_attempt_at)
    WHERE status IN ('pending', 'failed');
CREATE INDEX deliveries_dead_idx ON deliveries (id) WHERE status = 'dead';

CREATE TRIGGER deliveries_counts_insert AFTER INSERT ON deliveries
    REFERENCING NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION delivery_counts_apply();
CREATE TRIGGER deliveries_counts_update AFTER UPDATE ON deliveries
    REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION delivery_counts_apply();
CREATE TRIGGER deliveries_counts_delete AFTER DELETE ON deliveries
    REFERENCING OLD TABLE AS old_rows
    FOR EACH STATEMENT EXECUTE FUNCTION delivery_counts_apply();
CREATE TRIGGER deliveries_counts_truncate AFTER TRUNCATE ON deliveries
    FOR EACH STATEMENT EXECUTE FUNCTION delivery_counts_truncate();
CREATE TRIGGER deliveries_rollup_insert AFTER INSERT ON deliveries
    REFERENCING NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION deliveries_rollup_insert();
CREATE TRIGGER deliveries_rollup_update AFTER UPDATE ON deliveries
    REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION deliveries_rollup_update();
CREATE TRIGGER deliveries_rollup_delete AFTER DELETE ON deliveries
    REFERENCING OLD TABLE AS old_rows
    FOR EACH STATEMENT EXECUTE FUNCTION deliveries_rollup_delete();

DO $$
DECLARE
    v record;
BEGIN
    FOR v IN SELECT name, def FROM delivery_views LOOP
        EXECUTE format('CREATE OR REPLACE VIEW %s AS %s', v.name, v.def);
    END LOOP;
END;
$$;

-- The partitions, oldest first: lo is NULL for the history partition (from
-- MINVALUE), hi NULL for the catch-all (to MAXVALUE).
CREATE FUNCTION delivery_partitions()
    RETURNS TABLE (name text, lo timestamptz, hi timestamptz)
    LANGUAGE sql STABLE
    SET search_path = pg_catalog, postbell
AS $$
    SELECT c.relname::text,
           substring(pg_get_expr(c.relpartbound, c.oid) FROM $r$FROM \('([^']+)'\)$r$)::timestamptz,
           substring(pg_get_expr(c.relpartbound, c.oid) FROM $r$TO \('([^']+)'\)$r$)::timestamptz
      FROM pg_inherits AS i
      JOIN pg_class AS c ON c.oid = i.inhrelid
     WHERE i.inhparent = 'postbell.deliveries'::regclass
     ORDER BY 2 NULLS FIRST
$$;

-- Monthly partitions through the month of p_until: the catch-all moves up a month at
-- a time, each a new partition deliveries_yYYYYmMM. The catch-all is empty in the
-- normal case (nothing is due months ahead), so each step is catalog work under a
-- short lock of the table; if it holds rows (maintenance away for months) it becomes
-- a partition bounded past its last row, and a new catch-all follows it. Answers the
-- number of partitions made. The caller sets lock_timeout: the lock waits for
-- running statements on deliveries, and the queries after it wait for the lock.
CREATE FUNCTION delivery_partitions_ensure(p_until timestamptz) RETURNS integer
    LANGUAGE plpgsql
    SET search_path = pg_catalog, postbell
AS $$
DECLARE
    v_target timestamptz := delivery_month(p_until) + interval '1 month';
    v_lo timestamptz;
    v_hi timestamptz;
    v_last timestamptz;
    v_name text;
    v_made integer := 0;
BEGIN
    SELECT p.lo INTO v_lo FROM delivery_partitions() AS p WHERE p.hi IS NULL;
    IF v_lo IS NULL THEN
        RAISE EXCEPTION 'deliveries has no catch-all partition (deliveries_future, to MAXVALUE)'
            USING HINT = 'Make it again: CREATE TABLE postbell.deliveries_future PARTITION OF'
                         ' postbell.deliveries FOR VALUES FROM (<the last month''s end>) TO (MAXVALUE)';
    END IF;
    IF v_lo >= v_target THEN
        RETURN 0;
    END IF;
    LOCK TABLE deliveries IN ACCESS EXCLUSIVE MODE;
    LOOP
        SELECT p.lo INTO v_lo FROM delivery_partitions() AS p WHERE p.hi IS NULL;
        EXIT WHEN v_lo >= v_target;
        SELECT max(created_at) INTO v_last FROM deliveries_future;
        v_hi := greatest(v_lo + interval '1 month', delivery_month(v_last) + interval '1 month');
        v_name := to_char(v_lo AT TIME ZONE 'UTC', '"deliveries_y"YYYY"m"MM');
        IF v_last IS NULL THEN
            DROP TABLE deliveries_future;
            EXECUTE format('CREATE TABLE postbell.%I PARTITION OF postbell.deliveries'
                           ' FOR VALUES FROM (%L) TO (%L) WITH (fillfactor = 90)', v_name, v_lo, v_hi);
        ELSE
            ALTER TABLE deliveries DETACH PARTITION deliveries_future;
            EXECUTE format('ALTER TABLE deliveries_future RENAME TO %I', v_name);
            EXECUTE format('ALTER TABLE deliveries ATTACH PARTITION %I FOR VALUES FROM (%L) TO (%L)',
                           v_name, v_lo, v_hi);
        END IF;
        EXECUTE format('CREATE TABLE postbell.deliveries_future PARTITION OF postbell.deliveries'
                       ' FOR VALUES FROM (%L) TO (MAXVALUE) WITH (fillfactor = 90)', v_hi);
        v_made := v_made + 1;
    END LOOP;
    RETURN v_made;
END;
$$;

SELECT delivery_partitions_ensure(now() + interval '1 month');

-- Retention of one whole partition: p_name, if every delivery in it has aged out
-- (its months end before p_cutoff, none is still pending or failed, none changed
-- since p_cutoff) and no notification still to be routed is due inside it (its
-- deliveries will go there). The month's rows leave the kept counts (inbox unread
-- and unseen, per-notification counts, the metric gauges) and their timelines go, as
-- the DELETE triggers would have done, then the table is dropped. Answers the rows
-- dropped, or NULL (the partition stays: a reason is raised as a NOTICE).
--
-- The partition is share-locked first, so no row in it changes while its counts are
-- taken out; dropping it then takes the whole table's lock, briefly. The caller sets
-- a short lock_timeout (shorter than deadlock_timeout) and tries again later. Two
-- passes over the month's rows, each a hash aggregate in memory (work_mem below):
-- one for everything but the inbox (per notification, channel, status and reason:
-- its size, its last change, its id range), one per recipient for the inbox.
CREATE FUNCTION delivery_partition_drop(p_name text, p_cutoff timestamptz) RETURNS bigint
    LANGUAGE plpgsql
    SET search_path = pg_catalog, postbell
    SET work_mem = '256MB'
    SET enable_indexscan = off          -- the passes read a whole month: in heap order
AS $$
DECLARE
    v_hi timestamptz;
    v_unsent boolean;
    v_rows bigint;
    v_changed timestamptz;
    v_lo_id bigint;
    v_hi_id bigint;
BEGIN
    SELECT p.hi INTO v_hi FROM delivery_partitions() AS p WHERE p.name = p_name;
    IF v_hi IS NULL OR v_hi > p_cutoff THEN
        RAISE NOTICE 'partition %: not a bounded partition ending before the cutoff', p_name;
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
    -- deliveries_rollup_delete), for the whole month at once.
    EXECUTE format($q$
        WITH inbox AS (
            SELECT recipient_id,
                   count(*) FILTER (WHERE read_at IS NULL) AS unread,
                   count(*) FILTER (WHERE seen_at IS NULL) AS unseen
              FROM %1$I
             WHERE channel = 'IN_APP' AND status = 'sent' AND archived_at IS NULL
               AND (read_at IS NULL OR seen_at IS NULL)
             GROUP BY recipient_id
        )
        UPDATE inbox_counts AS c
           SET unread = c.unread - inbox.unread, unseen = c.unseen - inbox.unseen
          FROM inbox
         WHERE c.recipient_id = inbox.recipient_id
    $q$, p_name);
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

-- A page of a recipient's inbox, newest first (keyset on the delivery id): the query
-- behind GET /api/inbox/{id}, in a function for its plan. Over deliveries' months the
-- page is a merge of each month's (recipient_id, channel, id) index, read backwards.
-- Planned per call, that costs more than the page (every month's every index is
-- weighed: 0.7 ms with four months, 1.5 ms with fifteen); planned once for any
-- recipient (a generic plan, cached for the session), the estimate of an average
-- recipient's few items made Postgres sort everything the recipient has instead
-- (130 ms at 20,000 items). So: generic, without sorts (enable_sort off leaves the
-- merge as the only way to the order). The recipient is compared as an array and
-- leads the order, so that the order is the index's own and no plan can walk the
-- primary key backwards filtering for the recipient (an equality to a parameter would
-- make the recipient a constant and drop it from the order): that walk was estimated
-- "soon" and read 500,000 rows for an inbox whose items are older than everyone
-- else's (the p99 of 25-50 ms at 20,000 items, before).
CREATE FUNCTION inbox_page(p_recipient_id bigint, p_before bigint, p_unread_only boolean,
                           p_archived boolean, p_category text, p_limit integer)
    RETURNS TABLE (id bigint, notification_id uuid, title text, body text, action_url text,
                   category text, metadata jsonb, priority text, created_at timestamptz,
                   read_at timestamptz, seen_at timestamptz, archived_at timestamptz)
    LANGUAGE plpgsql STABLE
    SET search_path = pg_catalog, postbell
    SET plan_cache_mode = force_generic_plan
    SET enable_sort = off
AS $$
BEGIN
    RETURN QUERY
    SELECT d.id, d.notification_id, coalesce(t.content ->> 'title', n.title),
           coalesce(t.content ->> 'body', n.body),
           coalesce(t.content ->> 'action_url', n.action_url), n.category, n.metadata,
           n.priority, d.created_at, d.read_at, d.seen_at, d.archived_at
      FROM deliveries AS d
      JOIN notifications AS n ON n.id = d.notification_id
      LEFT JOIN LATERAL (
            -- a templated notification: the text rendered for this recipient's locale
            SELECT inbox_content(d.content, n.rendered,
                                 (SELECT r.locale FROM recipients AS r WHERE r.id = d.recipient_id))
                       AS content
             WHERE n.template_key IS NOT NULL OR d.content IS NOT NULL) AS t ON true
     WHERE d.recipient_id = ANY(ARRAY[p_recipient_id])
       AND d.channel = 'IN_APP'
       AND d.status = 'sent'           -- not the skipped (opted out) or cancelled ones
       AND d.id < p_before
       AND (NOT p_unread_only OR d.read_at IS NULL)
       AND (p_archived IS NULL OR (d.archived_at IS NOT NULL) = p_archived)
       AND (p_category IS NULL OR n.category = p_category)
     ORDER BY d.recipient_id DESC, d.id DESC
     LIMIT p_limit;
END;
$$;
