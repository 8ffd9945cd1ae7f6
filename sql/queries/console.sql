-- name: console_queue_depth
SELECT queue, status, jobs, items, oldest_age, scheduled_later
  FROM queue_depth
 ORDER BY queue, status

-- name: console_waiting
-- Unsent deliveries per channel: what the queues hold, in deliveries.
SELECT channel, status, reason, count(*) AS deliveries,
       date_trunc('second', now() - min(next_attempt_at)) AS oldest_due
  FROM deliveries
 WHERE status IN ('pending', 'failed')
 GROUP BY channel, status, reason
 ORDER BY channel, status, reason NULLS FIRST

-- name: console_totals
SELECT (SELECT count(*) FROM dead_letters) AS dead,
       (SELECT count(*) FROM stalled_jobs) AS stalled,
       (SELECT count(*) FROM deliveries WHERE status = 'sent' AND sent_at > now() - interval '1 minute')
           AS sent_last_minute,
       (SELECT count(*) FROM procrastinate_workers
         WHERE last_heartbeat > now() - interval '30 seconds') AS live_workers
