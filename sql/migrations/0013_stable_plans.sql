-- 0013: job fetch and claim plans that do not depend on statistics; inbox and
-- notification counts kept as deliveries change (at the end of this file).
--
-- procrastinate_jobs is a queue: it is often empty, and an ANALYZE (by hand, by a
-- deploy script, by autovacuum) on the empty table records 0 pages and no column
-- statistics. A plan made then (the plpgsql function's cached generic plan, or a
-- psycopg prepared statement) scans the whole table and sorts it on every fetch, and
-- keeps doing so as the backlog grows: 20,000 queued route jobs took ~13 s per fetch
-- here. Even fresh (custom) plans, guided by default selectivities, bitmap-scan and
-- sort every todo job of the queue (~25 ms per fetch at 20,000).
--
-- A job fetch wants one plan whatever the statistics say: walk an index in
-- (priority DESC, id) order and stop at the first due job that is not locked. The
-- fetch and the claim run with sorts and sequential scans disabled (a function's own
-- SET, nothing else on the connection is affected), so that walk is the only plan
-- left, generic or custom. tests/integration/test_stable_plans.py reproduces the
-- state and counts the rows each fetch reads.

-- The claim (one queue) walks the queue's own part of the todo jobs in order.
CREATE INDEX procrastinate_jobs_todo_queue_idx ON procrastinate_jobs
    (queue_name, priority DESC, id) WHERE status = 'todo';

-- procrastinate's lock rule: a job whose lock is held by a running job, or by a
-- waiting job of higher priority (or equal priority, queued first), must wait.
CREATE FUNCTION procrastinate_job_lock_taken(p_lock text, p_priority integer, p_id bigint)
    RETURNS boolean
    LANGUAGE sql STABLE
AS $$
    SELECT EXISTS (
        SELECT 1
            FROM procrastinate_jobs AS other_jobs
            WHERE other_jobs.lock = p_lock
            AND (
                other_jobs.status = 'doing'
                OR (
                    other_jobs.status = 'todo'
                    AND (
                        other_jobs.priority > p_priority
                        OR (other_jobs.priority = p_priority AND other_jobs.id < p_id)
                    )
                )
            )
    )
$$;

-- procrastinate's fetch (3.10.0, procrastinate_fetch_job_v2), same signature and
-- result. Three changes: the SET clauses; the lock check written as a condition
-- evaluated only for a job that has a lock (postbell's jobs never do), instead of an
-- anti-join that a plan for an empty table runs as a full scan per candidate row;
-- and the update finds its row by id (an index lookup), not by a join that such a
-- plan runs as a scan of the whole table.
-- When a procrastinate upgrade replaces this function, the test above fails.
CREATE OR REPLACE FUNCTION procrastinate_fetch_job_v2(
    target_queue_names character varying[],
    p_worker_id bigint
)
    RETURNS procrastinate_jobs
    LANGUAGE plpgsql
    SET enable_sort = off
    SET enable_seqscan = off
    SET enable_bitmapscan = off
    -- disabled paths cost 1e10: without this, every call would be JIT-compiled
    SET jit = off
AS $$
DECLARE
    found_jobs procrastinate_jobs;
    found_id bigint;
BEGIN
    IF target_queue_names IS NULL THEN
        -- every queue: walk procrastinate_jobs_priority_idx_v1 in order
        SELECT jobs.id INTO found_id
            FROM procrastinate_jobs AS jobs
            WHERE jobs.status = 'todo'
                AND (jobs.scheduled_at IS NULL OR jobs.scheduled_at <= now())
                AND NOT (jobs.lock IS NOT NULL AND procrastinate_job_lock_taken(jobs.lock, jobs.priority, jobs.id))
            ORDER BY jobs.priority DESC, jobs.id ASC LIMIT 1
            FOR UPDATE OF jobs SKIP LOCKED;
    ELSE
        -- named queues: the head of each one (procrastinate_jobs_todo_queue_idx), then
        -- the best of those heads; a walk of one index for all of them would step
        -- over every queued job of the queues not named
        SELECT head.id INTO found_id
            FROM unnest(target_queue_names) AS queue(name)
            CROSS JOIN LATERAL (
                SELECT jobs.id, jobs.priority
                    FROM procrastinate_jobs AS jobs
                    WHERE jobs.queue_name = queue.name
                        AND jobs.status = 'todo'
                        AND (jobs.scheduled_at IS NULL OR jobs.scheduled_at <= now())
                        AND NOT (jobs.lock IS NOT NULL AND procrastinate_job_lock_taken(jobs.lock, jobs.priority, jobs.id))
                    ORDER BY jobs.priority DESC, jobs.id ASC LIMIT 1
                    FOR UPDATE OF jobs SKIP LOCKED
            ) AS head
            ORDER BY head.priority DESC, head.id ASC LIMIT 1;
    END IF;
    IF found_id IS NULL THEN
        RETURN NULL;
    END IF;
    UPDATE procrastinate_jobs
        SET status = 'doing', worker_id = p_worker_id
        WHERE procrastinate_jobs.id = found_id
        RETURNING procrastinate_jobs.* INTO found_jobs;

    RETURN found_jobs;
END;
$$;

-- The claim behind workers/claims.py (named query jobs_claim_more): up to p_limit
-- more due jobs of one task and queue for a worker already running one of them,
-- holding at most p_max_items items (delivery ids; a route job counts as one), in
-- (priority DESC, id) order.
CREATE FUNCTION claim_jobs(
    p_queue text, p_task_name text, p_worker_id bigint, p_limit integer, p_max_items integer
)
    RETURNS TABLE (id bigint, args jsonb, priority integer)
    LANGUAGE sql
    SET enable_sort = off
    SET enable_seqscan = off
    SET enable_bitmapscan = off
    -- disabled paths cost 1e10: without this, every call would be JIT-compiled
    SET jit = off
AS $$
    WITH candidates AS (
        SELECT j.id, j.priority, coalesce(jsonb_array_length(j.args -> 'ids'), 1) AS items
          FROM procrastinate_jobs AS j
         WHERE j.queue_name = p_queue
           AND j.status = 'todo'
           AND j.task_name = p_task_name
           AND j.lock IS NULL
           AND (j.scheduled_at IS NULL OR j.scheduled_at <= now())
         ORDER BY j.priority DESC, j.id
         LIMIT p_limit
           FOR UPDATE SKIP LOCKED
    ),
    within AS (
        SELECT c.id, sum(c.items) OVER (ORDER BY c.priority DESC, c.id) AS running
          FROM candidates AS c
    )
    UPDATE procrastinate_jobs AS j
       SET status = 'doing', worker_id = p_worker_id
     WHERE j.id = ANY (ARRAY(SELECT w.id FROM within AS w WHERE w.running <= p_max_items))
    RETURNING j.id, j.args, j.priority
$$;

-- Counts kept as deliveries change (issue 19 W10): an inbox's unread_count and
-- unseen_count, and a notification's delivery_counts, are read from one row (one per
-- status) instead of visiting every delivery of the recipient or of the notification.
-- Statement-level triggers with transition tables keep them, whatever changes the
-- rows: routing, sending, marking read/seen/archived, cancelling, retention, a DELETE
-- typed in a SQL console. Each statement adds one aggregated delta per recipient and
-- per (notification, status): a fan-out to 100,000 writes one row per recipient and
-- one per status of its notification, never one update per delivery of a hot row.
-- Rows are written in key order, so concurrent statements do not deadlock on them.

-- An inbox item counts while it is an IN_APP delivery, sent, and not archived.
CREATE TABLE inbox_counts (
    recipient_id bigint PRIMARY KEY,
    unread integer NOT NULL DEFAULT 0,
    unseen integer NOT NULL DEFAULT 0
);

CREATE TABLE notification_counts (
    notification_id uuid NOT NULL,
    status text NOT NULL,
    n bigint NOT NULL DEFAULT 0,
    PRIMARY KEY (notification_id, status)
);

CREATE FUNCTION delivery_counts_apply() RETURNS trigger
    LANGUAGE plpgsql
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
            SELECT recipient_id,
                   coalesce(sum(s) FILTER (WHERE read_at IS NULL), 0) AS unread,
                   coalesce(sum(s) FILTER (WHERE seen_at IS NULL), 0) AS unseen
              FROM d
             WHERE channel = 'IN_APP' AND status = 'sent' AND archived_at IS NULL
             GROUP BY recipient_id
        ),
        inbox_written AS (
            INSERT INTO inbox_counts AS c (recipient_id, unread, unseen)
            SELECT recipient_id, unread, unseen FROM inbox
             WHERE unread <> 0 OR unseen <> 0
             ORDER BY recipient_id
                ON CONFLICT (recipient_id) DO UPDATE
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

CREATE TRIGGER deliveries_counts_insert AFTER INSERT ON deliveries
    REFERENCING NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION delivery_counts_apply();
CREATE TRIGGER deliveries_counts_update AFTER UPDATE ON deliveries
    REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION delivery_counts_apply();
CREATE TRIGGER deliveries_counts_delete AFTER DELETE ON deliveries
    REFERENCING OLD TABLE AS old_rows
    FOR EACH STATEMENT EXECUTE FUNCTION delivery_counts_apply();

CREATE FUNCTION delivery_counts_truncate() RETURNS trigger
    LANGUAGE plpgsql
AS $$
BEGIN
    DELETE FROM inbox_counts;
    DELETE FROM notification_counts;
    RETURN NULL;
END;
$$;

CREATE TRIGGER deliveries_counts_truncate AFTER TRUNCATE ON deliveries
    FOR EACH STATEMENT EXECUTE FUNCTION delivery_counts_truncate();

-- A notification deleted (retention deletes only those without deliveries) takes its
-- zeroed counts along.
CREATE FUNCTION notification_counts_forget() RETURNS trigger
    LANGUAGE plpgsql
AS $$
BEGIN
    DELETE FROM notification_counts AS c USING old_rows AS o WHERE c.notification_id = o.id;
    RETURN NULL;
END;
$$;

CREATE TRIGGER notifications_counts_delete AFTER DELETE ON notifications
    REFERENCING OLD TABLE AS old_rows
    FOR EACH STATEMENT EXECUTE FUNCTION notification_counts_forget();

-- The counts of the deliveries that exist already.
INSERT INTO inbox_counts (recipient_id, unread, unseen)
SELECT recipient_id, count(*) FILTER (WHERE read_at IS NULL),
       count(*) FILTER (WHERE seen_at IS NULL)
  FROM deliveries
 WHERE channel = 'IN_APP' AND status = 'sent' AND archived_at IS NULL
 GROUP BY recipient_id;

INSERT INTO notification_counts (notification_id, status, n)
SELECT notification_id, status, count(*) FROM deliveries GROUP BY notification_id, status;
