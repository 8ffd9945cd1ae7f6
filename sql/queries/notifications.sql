-- name: notifications_enqueue
SELECT id, status, created, request_hash
  FROM enqueue_notification(
        %(recipients)s::text[], %(topic)s, %(title)s, %(body)s, %(action_url)s,
        %(metadata)s::jsonb, %(channels)s::text[], %(priority)s, %(category)s,
        %(fallback)s::jsonb, %(send_at)s::timestamptz, %(expires_at)s::timestamptz,
        %(idempotency_scope)s, %(idempotency_key)s, %(request_hash)s::bytea,
        make_interval(hours => %(idempotency_ttl_hours)s), %(wakeup)s)

-- name: notifications_get
SELECT id, status, priority, category, title, body, action_url, metadata, channels, topic,
       cardinality(recipients) AS recipient_count, fallback, send_at, expires_at,
       created_at, routed_at
  FROM notifications
 WHERE id = %(id)s

-- name: notifications_delivery_counts
-- One row per status, kept by the deliveries triggers of migration 0013: a poll of a
-- 1,000,000-delivery fan-out reads a handful of rows, not the deliveries.
SELECT status, n
  FROM notification_counts
 WHERE notification_id = %(id)s AND n <> 0

-- name: notifications_deliveries_page
SELECT d.id, d.channel, r.external_id AS recipient, d.status, d.reason, d.attempts,
       d.last_error, d.next_attempt_at, d.sent_at, d.created_at, d.fallback_for, d.fallback_reason
  FROM deliveries d
  JOIN recipients r ON r.id = d.recipient_id
 WHERE d.notification_id = %(id)s
   AND d.id > %(after)s
 ORDER BY d.id
 LIMIT %(limit)s

-- name: notifications_lock
SELECT id, status, routed_at FROM notifications WHERE id = %(id)s FOR UPDATE

-- name: notifications_cancel_unrouted
-- Cancelled before routing: its routing job runs now (in cancel mode, recording every
-- delivery as cancelled). Answers how many deliveries that will be.
WITH n AS (
    UPDATE notifications SET status = 'cancelled' WHERE id = %(id)s
    RETURNING id, recipients, topic, channels, category
),
job AS (
    UPDATE procrastinate_jobs
       SET scheduled_at = NULL
     WHERE task_name = 'postbell.route'
       AND status = 'todo'
       AND args ->> 'notification_id' = %(id)s::text
    RETURNING 1
)
SELECT coalesce(cardinality(n.recipients),
                (SELECT count(*) FROM topic_subscribers AS s WHERE s.topic_key = n.topic))
       * cardinality(coalesce(n.channels, c.default_channels, ARRAY['IN_APP'])) AS deliveries,
       (SELECT count(*) FROM job) AS jobs
  FROM n
  LEFT JOIN categories AS c ON c.key = n.category

-- name: notifications_cancel_routed
-- Every not-yet-sent delivery of a routed notification: cancelled. Jobs that carry
-- them find nothing left to send.
WITH d AS (
    UPDATE deliveries
       SET status = 'cancelled', next_attempt_at = NULL, updated_at = now()
     WHERE notification_id = %(id)s AND status IN ('pending', 'failed')
    RETURNING 1
),
n AS (
    UPDATE notifications SET status = 'cancelled'
     WHERE id = %(id)s AND EXISTS (SELECT 1 FROM d)
    RETURNING 1
)
SELECT (SELECT count(*) FROM d) AS deliveries, (SELECT count(*) FROM n) AS notifications

-- name: notifications_target_check
SELECT (%(category)s::text IS NULL OR EXISTS (SELECT 1 FROM categories WHERE key = %(category)s))
           AS category_ok,
       (%(topic)s::text IS NULL OR EXISTS (SELECT 1 FROM topics WHERE key = %(topic)s)) AS topic_ok
