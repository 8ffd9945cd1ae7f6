-- 0026: the statement triggers on deliveries and notifications plan like the fetch
-- (0013): by index, whatever the statistics said when the plan was made.
--
-- A plpgsql function keeps the plan of each of its static statements for the life of
-- the connection. These triggers' statements take no parameters, so no
-- plan_cache_mode makes them plan again: a worker connection that first inserted
-- deliveries while `notifications` was small kept a hash join over a sequential scan
-- of it, and went on reading the whole table once per routing batch and per recorded
-- batch as it grew (200,000 rows read per batch of 200 in
-- tests/integration/test_stable_plans.py). Their joins look up a few rows per changed
-- delivery by primary key or index: with sequential scans and hash and merge joins
-- disabled for their own statements (a function's own SET; nothing else on the
-- connection is affected) the index nested loop is the plan whatever the table sizes
-- were. The transition tables are read as before (a tuplestore scan is not a
-- sequential scan).
ALTER FUNCTION deliveries_rollup_insert()
    SET enable_seqscan = off SET enable_hashjoin = off SET enable_mergejoin = off;
ALTER FUNCTION deliveries_rollup_update()
    SET enable_seqscan = off SET enable_hashjoin = off SET enable_mergejoin = off;
ALTER FUNCTION deliveries_rollup_delete()
    SET enable_seqscan = off SET enable_hashjoin = off SET enable_mergejoin = off;
ALTER FUNCTION notification_counts_forget()
    SET enable_seqscan = off SET enable_hashjoin = off SET enable_mergejoin = off;
