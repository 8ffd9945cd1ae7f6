-- name: notifications_enqueue
SELECT id, status, created, request_hash
  FROM enqueue_notification(
        %(recipients)s::text[], %(topic)s, %(title)s, %(body)s, %(action_url)s,
        %(metadata)s::jsonb, %(channels)s::text[], %(priority)s, %(category)s,
        %(fallback)s::jsonb, %(send_at)s::timestamptz, %(expires_at)s::timestamptz,
        %(idempotency_scope)s, %(idempotency_key)s, %(request_hash)s::bytea)

-- name: notifications_get
SELECT id, status, priority, category, title, body, action_url, metadata, channels, topic,
       cardinality(recipients) AS recipient_count, fallback, send_at, expires_at,
       created_at, routed_at
  FROM notifications
 WHERE id = %(id)s

-- name: notifications_delivery_counts
SELECT status, count(*) AS n
  FROM deliveries
 WHERE notification_id = %(id)s
 GROUP BY status

-- name: notifications_deliveries_page
SELECT d.id, d.channel, r.external_id AS recipient, d.status, d.reason, d.attempts,
       d.last_error, d.next_attempt_at, d.sent_at, d.created_at, d.fallback_for, d.fallback_reason
  FROM deliveries d
  JOIN recipients r ON r.id = d.recipient_id
 WHERE d.notification_id = %(id)s
   AND d.id > %(after)s
 ORDER BY d.id
 LIMIT %(limit)s
