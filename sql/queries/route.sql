-- name: route_lock_notifications
-- The notifications of a routing batch that still need routing, locked for this
-- transaction. A duplicate routing job (a stalled one retried) finds them routed.
SELECT id, topic IS NOT NULL AS is_topic, priority
  FROM notifications
 WHERE id = ANY(%(ids)s::uuid[])
   AND status IN ('queued', 'scheduled')
 ORDER BY id
   FOR UPDATE

-- name: route_ensure_recipients
-- Recipients named in a notification that the host app never registered are
-- created bare (an inbox needs no address). Sorted, so that concurrent routers
-- take the unique-index locks in one order.
INSERT INTO recipients (external_id)
SELECT DISTINCT x
  FROM notifications AS n, unnest(n.recipients) AS x
 WHERE n.id = ANY(%(ids)s::uuid[])
 ORDER BY x
    ON CONFLICT (external_id) DO NOTHING

-- name: route_direct
-- Fan a batch of notifications with explicit recipient lists out to deliveries, in
-- one statement: notification x recipient x channel, each decided by
-- delivery_skip_reason() (sent for IN_APP, skipped with a reason, or pending); a
-- fallback delivery where the notification names one for a channel that has no
-- device or address; deliver jobs for every pending id; one NOTIFY for the live
-- inboxes. ON CONFLICT makes a second run of the same batch a no-op.
WITH spec AS (
    SELECT *
      FROM unnest(%(ch_names)s::text[], %(ch_address)s::text[], %(ch_inactive)s::text[],
                  %(ch_configured)s::boolean[])
           AS s(channel, address_field, inactive_field, configured)
),
n AS (
    SELECT id, recipients, coalesce(channels, %(default_channels)s::text[]) AS channels,
           priority, expires_at, coalesce(fallback, '{}') AS fallback
      FROM notifications
     WHERE id = ANY(%(ids)s::uuid[])
),
targets AS (
    SELECT n.id AS notification_id, n.expires_at, n.fallback, n.channels, r AS recipient
      FROM n
     CROSS JOIN LATERAL unnest(n.recipients) AS x(external_id)
      JOIN recipients AS r ON r.external_id = x.external_id
),
ins AS (
    INSERT INTO deliveries (notification_id, recipient_id, channel, status, reason, sent_at,
                            next_attempt_at)
    SELECT d.notification_id, (d.recipient).id, d.channel,
           CASE WHEN d.reason IS NOT NULL THEN 'skipped'
                WHEN d.channel = 'IN_APP' THEN 'sent'
                ELSE 'pending' END,
           d.reason,
           CASE WHEN d.reason IS NULL AND d.channel = 'IN_APP' THEN now() END,
           CASE WHEN d.reason IS NULL AND d.channel <> 'IN_APP' THEN now() END
      FROM (SELECT t.notification_id, t.recipient, c.channel,
                   delivery_skip_reason(c.channel, s.configured, s.address_field,
                                        s.inactive_field, t.expires_at, t.recipient) AS reason
              FROM targets AS t
             CROSS JOIN LATERAL unnest(t.channels) AS c(channel)
              LEFT JOIN spec AS s ON s.channel = c.channel) AS d
        ON CONFLICT DO NOTHING
    RETURNING id, notification_id, recipient_id, channel, status, reason
),
fallback AS (
    INSERT INTO deliveries (notification_id, recipient_id, channel, status, reason,
                            next_attempt_at, fallback_for, fallback_reason)
    SELECT f.notification_id, (f.recipient).id, f.channel,
           CASE WHEN f.reason IS NULL THEN 'pending' ELSE 'skipped' END,
           f.reason,
           CASE WHEN f.reason IS NULL THEN now() END,
           f.fallback_for, f.fallback_reason
      FROM (SELECT i.notification_id, t.recipient, t.fallback ->> i.channel AS channel,
                   i.id AS fallback_for, i.channel || ' ' || i.reason AS fallback_reason,
                   delivery_skip_reason(t.fallback ->> i.channel, s.configured, s.address_field,
                                        s.inactive_field, t.expires_at, t.recipient) AS reason
              FROM ins AS i
              JOIN targets AS t
                ON t.notification_id = i.notification_id AND (t.recipient).id = i.recipient_id
              LEFT JOIN spec AS s ON s.channel = t.fallback ->> i.channel
             WHERE i.status = 'skipped'
               AND i.reason IN ('no_device', 'no_address')
               AND t.fallback ? i.channel
               AND NOT (t.fallback ->> i.channel = ANY(t.channels))) AS f
        ON CONFLICT DO NOTHING
    RETURNING id, notification_id, channel, status
),
pending AS (
    SELECT p.id, p.channel, job_priority(n.priority) AS priority
      FROM (SELECT id, notification_id, channel, status FROM ins
            UNION ALL
            SELECT id, notification_id, channel, status FROM fallback) AS p
      JOIN n ON n.id = p.notification_id
     WHERE p.status = 'pending'
),
jobs AS (
    SELECT defer_deliveries(array_agg(id), array_agg(channel), array_agg(priority),
                            array_agg(NULL::timestamptz), %(batch_sizes)s::jsonb) AS n
      FROM pending
),
inbox AS (
    SELECT pg_notify('postbell_inbox', json_build_object('lo', min(id), 'hi', max(id))::text)
      FROM ins
     WHERE channel = 'IN_APP' AND status = 'sent'
    HAVING count(*) > 0
)
SELECT (SELECT count(*) FROM ins) + (SELECT count(*) FROM fallback) AS deliveries,
       (SELECT count(*) FROM pending) AS pending,
       (SELECT n FROM jobs) AS jobs,
       (SELECT count(*) FROM inbox) AS inbox_notifies

-- name: route_mark_routed
UPDATE notifications SET status = 'routed', routed_at = now() WHERE id = ANY(%(ids)s::uuid[])
