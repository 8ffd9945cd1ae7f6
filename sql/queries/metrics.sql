-- name: metrics_rollup
-- The rollup /metrics reads (0012): deltas summed per key. Small: the workers'
-- upkeep folds it (metrics_compact), and it never counts deliveries.
SELECT metric, channel, label, sum(value) AS value
  FROM metric_counts
 GROUP BY metric, channel, label

-- name: metrics_send_buckets
SELECT metric_send_buckets() AS buckets

-- name: metrics_queues
-- Jobs waiting (todo) and running (doing) per queue and procrastinate priority; for
-- the due todo jobs, the age of the oldest since it became due (deferred, or its
-- schedule_at when later).
SELECT j.queue_name AS queue, j.priority, j.status::text AS status, count(*) AS jobs,
       count(*) FILTER (WHERE j.scheduled_at > now()) AS scheduled_later,
       coalesce(extract(epoch FROM now() - min(greatest(e.at, j.scheduled_at))
                         FILTER (WHERE j.scheduled_at IS NULL OR j.scheduled_at <= now())), 0)
           AS oldest_seconds
  FROM procrastinate_jobs AS j
  LEFT JOIN procrastinate_events AS e ON e.job_id = j.id AND e.type = 'deferred'
 WHERE j.status IN ('todo', 'doing')
 GROUP BY j.queue_name, j.priority, j.status

-- name: metrics_workers
SELECT count(*) FILTER (WHERE last_heartbeat > now() - interval '30 seconds') AS live
  FROM procrastinate_workers

-- name: metrics_compact
-- The workers' upkeep: every key's deltas folded into one row, in one statement
-- (rows inserted meanwhile are not in its snapshot and stay as they are). A gauge at
-- zero keeps its row: its series stays, at 0, instead of vanishing.
WITH gone AS (
    DELETE FROM metric_counts RETURNING metric, channel, label, value
),
folded AS (
    INSERT INTO metric_counts (metric, channel, label, value)
    SELECT metric, channel, label, sum(value)
      FROM gone
     GROUP BY metric, channel, label
    RETURNING 1
)
SELECT (SELECT count(*) FROM gone) AS before, (SELECT count(*) FROM folded) AS after

-- name: metrics_workflow_runs
-- Runs not final, per workflow and state (waiting, digesting), 0 for a workflow
-- with none: a count over workflow_runs_open_idx (0018), which holds only the runs
-- that are not final, never a scan of every run ever made.
SELECT w.key AS workflow, s.state, coalesce(c.runs, 0) AS runs
  FROM workflows AS w
 CROSS JOIN (VALUES ('waiting'), ('digesting')) AS s(state)
  LEFT JOIN (SELECT r.workflow_key, r.state, count(*) AS runs
               FROM workflow_runs AS r
              WHERE r.state IN ('waiting', 'digesting')
              GROUP BY r.workflow_key, r.state) AS c
         ON c.workflow_key = w.key AND c.state = s.state
 ORDER BY w.key, s.state
