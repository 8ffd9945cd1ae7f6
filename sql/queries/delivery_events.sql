-- name: deliveries_get
SELECT d.id, d.notification_id, d.channel, r.external_id AS recipient, d.status, d.reason,
       d.attempts, d.last_error, d.next_attempt_at, d.provider_message_id, d.created_at,
       d.updated_at, d.sent_at, d.read_at, d.seen_at, d.archived_at, d.fallback_for,
       d.fallback_reason, d.replay_id, d.variant
  FROM deliveries AS d
  JOIN recipients AS r ON r.id = d.recipient_id
 WHERE d.id = %(id)s

-- name: delivery_events_list
-- A delivery's timeline, newest first (the caller reverses it), at most %(limit)s.
SELECT at, kind, outcome, error_class, error, provider_message_id, started_at, duration_ms,
       detail
  FROM delivery_events
 WHERE delivery_id = %(id)s
 ORDER BY at DESC
 LIMIT %(limit)s
