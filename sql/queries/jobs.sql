-- name: jobs_claim_more
-- Claim more due jobs of one task and queue for the worker already running one of
-- them: procrastinate fetches one job per round trip, and this lets one run carry
-- many. At most %(limit)s jobs and %(max_items)s delivery ids (a route job counts
-- as one). Claimed jobs are 'doing' under the worker's id, so if the worker dies
-- its heartbeat stops and the reaper retries them.
WITH candidates AS (
    SELECT id, priority, coalesce(jsonb_array_length(args -> 'ids'), 1) AS items
      FROM procrastinate_jobs
     WHERE queue_name = %(queue)s
       AND task_name = %(task_name)s
       AND status = 'todo'
       AND lock IS NULL
       AND (scheduled_at IS NULL OR scheduled_at <= now())
     ORDER BY priority DESC, id
     LIMIT %(limit)s
       FOR UPDATE SKIP LOCKED
),
within AS (
    SELECT id, sum(items) OVER (ORDER BY priority DESC, id) AS running FROM candidates
)
UPDATE procrastinate_jobs AS j
   SET status = 'doing', worker_id = %(worker_id)s
  FROM within AS w
 WHERE j.id = w.id
   AND w.running <= %(max_items)s
RETURNING j.id, j.args, j.priority

-- name: jobs_finish_claimed
-- Claimed jobs whose work is recorded, in the transaction that records it.
DELETE FROM procrastinate_jobs
 WHERE id = ANY(%(ids)s::bigint[]) AND status = 'doing' AND worker_id = %(worker_id)s

-- name: jobs_release_claimed
-- Claimed jobs whose run failed before recording anything go back to the queue.
UPDATE procrastinate_jobs
   SET status = 'todo', worker_id = NULL
 WHERE id = ANY(%(ids)s::bigint[]) AND status = 'doing' AND worker_id = %(worker_id)s

-- name: jobs_fail_claimed
-- Claimed jobs whose work failed on its own (not the database): marked failed, as
-- procrastinate marks the job it started; the reconcilers defer their work again.
UPDATE procrastinate_jobs
   SET status = 'failed'
 WHERE id = ANY(%(ids)s::bigint[]) AND status = 'doing' AND worker_id = %(worker_id)s
