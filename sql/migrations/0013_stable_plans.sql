-- 0013: job fetch and claim plans that do not depend on statistics.
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
