-- name: maintenance_reconcile_deliveries
-- Unsent deliveries well past their due time that no live deliver job carries (their
-- job failed, was aborted or deleted): deferred again, in batches per channel.
WITH stuck AS (
    SELECT d.id, d.channel, job_priority(n.priority) AS priority
      FROM deliveries AS d
      JOIN notifications AS n ON n.id = d.notification_id
     WHERE d.status IN ('pending', 'failed')
       AND d.next_attempt_at < now() - make_interval(secs => %(grace_seconds)s)
     ORDER BY d.next_attempt_at
     LIMIT %(limit)s
),
carried AS (
    SELECT (jsonb_array_elements_text(j.args -> 'ids'))::bigint AS id
      FROM procrastinate_jobs AS j
     WHERE j.task_name = 'postbell.deliver'
       AND j.status IN ('todo', 'doing')
       AND j.queue_name IN (SELECT DISTINCT lower(channel) FROM stuck)
),
orphans AS (
    SELECT s.* FROM stuck AS s WHERE NOT EXISTS (SELECT 1 FROM carried AS c WHERE c.id = s.id)
)
SELECT count(*) AS deliveries,
       defer_deliveries(array_agg(id), array_agg(channel), array_agg(priority),
                        array_agg(NULL::timestamptz), %(batch_sizes)s::jsonb) AS jobs
  FROM orphans

-- name: maintenance_reconcile_notifications
-- Notifications accepted but never routed (routed_at is set when routing ends, for
-- cancelled ones too) because their routing job is gone: deferred again.
WITH stuck AS (
    SELECT n.id, n.priority
      FROM notifications AS n
     WHERE n.routed_at IS NULL
       -- recent ones through the BRIN index on created_at, scheduled ones by send_at
       AND (n.created_at > now() - interval '7 days'
            OR (n.send_at IS NOT NULL AND n.send_at < now()))
       AND coalesce(n.send_at, n.created_at) < now() - make_interval(secs => %(grace_seconds)s)
       AND NOT EXISTS (
               SELECT 1 FROM procrastinate_jobs AS j
                WHERE j.task_name = 'postbell.route'
                  AND j.status IN ('todo', 'doing')
                  -- one notification's job, or a job of several (0029)
                  AND (j.args ->> 'notification_id' = n.id::text OR j.args -> 'ids' ? n.id::text))
     LIMIT %(limit)s
)
SELECT coalesce(cardinality(procrastinate_defer_jobs_v1(ARRAY(
           SELECT route_job(s.id, s.priority, NULL) FROM stuck AS s))), 0) AS jobs

-- name: maintenance_doing_jobs
-- Jobs 'doing' under this process's worker ids (compared with what its tasks run).
SELECT id FROM procrastinate_jobs
 WHERE status = 'doing' AND worker_id = ANY(%(worker_ids)s::bigint[])

-- name: maintenance_requeue_jobs
-- Jobs a live worker holds but no task runs (their run lost the database while
-- finishing): back to the queue.
UPDATE procrastinate_jobs SET status = 'todo', worker_id = NULL
 WHERE id = ANY(%(ids)s::bigint[]) AND status = 'doing'

-- name: maintenance_purge_deliveries
-- Retention (POSTBELL_RETENTION_DAYS): one batch of final deliveries created and last
-- changed before the cutoff. Pending and failed ones are never purged, whatever their
-- age; a delivery that changed lately (a requeued dead letter that died again, late
-- provider feedback) waits for its last change to age out.
WITH old AS (
    SELECT d.id
      FROM deliveries AS d
     WHERE d.created_at < now() - make_interval(days => %(days)s)
       AND d.updated_at < now() - make_interval(days => %(days)s)
       AND d.status NOT IN ('pending', 'failed')
     LIMIT %(limit)s
)
DELETE FROM deliveries AS d USING old WHERE d.id = old.id

-- name: maintenance_purge_notifications
-- Retention: one batch of notifications routed before the cutoff that have no
-- delivery left (never one still waiting to be routed).
WITH old AS (
    SELECT n.id
      FROM notifications AS n
     WHERE n.created_at < now() - make_interval(days => %(days)s)  -- the BRIN index
       AND n.routed_at < now() - make_interval(days => %(days)s)
       AND NOT EXISTS (SELECT 1 FROM deliveries AS d WHERE d.notification_id = n.id)
     LIMIT %(limit)s
)
DELETE FROM notifications AS n USING old WHERE n.id = old.id

-- name: maintenance_purge_provider_events
-- One batch of provider event ids older than the dedupe window (the freshness
-- window plus clock skew): a signed copy that old is refused as stale before it
-- could be looked up here (Twilio signs no time: its late copies find their delivery
-- already moved, which changes nothing). Oldest first, through the received_at index.
WITH old AS (
    SELECT provider, event_key
      FROM provider_events
     WHERE received_at < now() - make_interval(secs => %(keep_seconds)s)
     ORDER BY received_at
     LIMIT %(limit)s
)
DELETE FROM provider_events AS e
 USING old
 WHERE e.provider = old.provider AND e.event_key = old.event_key

-- name: maintenance_lock_timeout
-- For this transaction only: a DDL step that waits no longer than this for the table
-- lock (the statements queued behind it wait as long), shorter than deadlock_timeout.
SELECT set_config('lock_timeout', %(ms)s::integer || 'ms', true)

-- name: maintenance_partitions_ensure
-- Months of deliveries partitions made ahead (0030); answers how many were made.
SELECT delivery_partitions_ensure(now() + make_interval(months => %(months)s)) AS made

-- name: maintenance_partitions_expired
-- Partitions whose months end before the retention cutoff, oldest first.
SELECT name FROM delivery_partitions()
 WHERE hi <= now() - make_interval(days => %(days)s)
 ORDER BY hi

-- name: maintenance_partition_drop
-- One expired partition dropped whole, if all of it has aged out (0030); answers its
-- rows, or NULL when it stays (the row-by-row purge then takes what it can).
SELECT delivery_partition_drop(%(name)s, now() - make_interval(days => %(days)s)) AS dropped
