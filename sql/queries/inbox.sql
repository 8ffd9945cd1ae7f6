-- name: inbox_recipient_id
SELECT id FROM recipients WHERE external_id = %(external_id)s

-- name: inbox_page
-- Newest first; keyset pagination on the delivery id.
SELECT d.id, d.notification_id, n.title, n.body, n.action_url, n.category, n.metadata,
       n.priority, d.created_at, d.read_at, d.seen_at, d.archived_at
  FROM deliveries d
  JOIN notifications n ON n.id = d.notification_id
 WHERE d.recipient_id = %(recipient_id)s
   AND d.channel = 'IN_APP'
   AND d.status = 'sent'               -- not the skipped (opted out) or cancelled ones
   AND d.id < %(before)s
   AND (NOT %(unread_only)s OR d.read_at IS NULL)
   AND (%(archived)s::boolean IS NULL OR (d.archived_at IS NOT NULL) = %(archived)s)
   AND (%(category)s::text IS NULL OR n.category = %(category)s)
 ORDER BY d.id DESC
 LIMIT %(limit)s

-- name: inbox_counts
SELECT count(*) FILTER (WHERE read_at IS NULL) AS unread_count,
       count(*) FILTER (WHERE seen_at IS NULL) AS unseen_count
  FROM deliveries
 WHERE recipient_id = %(recipient_id)s
   AND channel = 'IN_APP'
   AND status = 'sent'
   AND archived_at IS NULL

-- name: inbox_mark_read
UPDATE deliveries
   SET read_at = now(), seen_at = coalesce(seen_at, now()), updated_at = now()
 WHERE recipient_id = %(recipient_id)s
   AND channel = 'IN_APP'
   AND status = 'sent'
   AND read_at IS NULL
   AND (%(all)s OR id = ANY(%(ids)s::bigint[]))
RETURNING id
