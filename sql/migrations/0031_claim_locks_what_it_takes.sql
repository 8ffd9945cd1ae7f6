-- 0031: a bulk claim locks only the jobs it takes (issue 19, W11's tail).
--
-- claim_jobs() (0013) locked up to p_limit due jobs (a batch: 500) with
-- FOR UPDATE SKIP LOCKED and then took only those that fit in p_max_items. For the
-- claim's transaction every other due job of the queue was locked too, and
-- procrastinate's fetch skips locked jobs: a worker slot that fetched in that moment
-- found nothing, went back to waiting for a NOTIFY that had already come, and picked
-- the jobs up at its next poll (POSTBELL_POLL_INTERVAL, 1 s). In W11 (10,000 webhooks
-- from one worker) the last runs started a second apart, up to 2 s of a 7 s run.
--
-- Now the candidates are read without locks (the same index walk, in priority
-- order), the running sum picks what fits, and only those are locked, skipping any
-- another claimer or fetch holds. A job another claimer took between the read and the
-- lock is skipped (the lock re-checks that it is still due and 'todo'): a claim may
-- take less than there is, never a job twice. Same signature, same result.
CREATE OR REPLACE FUNCTION claim_jobs(
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
    ),
    within AS (
        SELECT c.id, sum(c.items) OVER (ORDER BY c.priority DESC, c.id) AS running
          FROM candidates AS c
    ),
    taken AS (
        SELECT j.id
          FROM procrastinate_jobs AS j
         WHERE j.id = ANY (ARRAY(SELECT w.id FROM within AS w WHERE w.running <= p_max_items))
           AND j.status = 'todo'
           AND j.lock IS NULL
           AND (j.scheduled_at IS NULL OR j.scheduled_at <= now())
           FOR UPDATE SKIP LOCKED
    )
    UPDATE procrastinate_jobs AS j
       SET status = 'doing', worker_id = p_worker_id
     WHERE j.id = ANY (ARRAY(SELECT t.id FROM taken AS t))
    RETURNING j.id, j.args, j.priority
$$;
