-- name: jobs_claim_more
-- Claim more due jobs of one task and queue for the worker already running one of
-- them: procrastinate fetches one job per round trip, and this lets one run carry
-- many. At most %(limit)s jobs and %(max_items)s delivery ids (a route job counts
-- as one). Claimed jobs are 'doing' under the worker's id, so if the worker dies
-- its heartbeat stops and the reaper retries them. claim_jobs() (migration 0013)
-- holds the query, with a plan that does not depend on statistics.
SELECT id, args, priority
  FROM claim_jobs(%(queue)s, %(task_name)s, %(worker_id)s, %(limit)s, %(max_items)s)

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
