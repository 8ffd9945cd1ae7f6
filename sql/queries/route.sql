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
-- one statement: notification x recipient x channel, each decided in SQL (sent for
-- IN_APP, skipped with a reason, or pending), then one deliver job per channel,
-- priority and batch of ids, and one NOTIFY for the live inboxes. ON CONFLICT makes
-- a second run of the same batch a no-op.
WITH spec AS (
    SELECT *
      FROM unnest(%(ch_names)s::text[], %(ch_address)s::text[], %(ch_inactive)s::text[],
                  %(ch_configured)s::boolean[], %(ch_batch)s::integer[])
           AS s(channel, address_field, inactive_field, configured, batch_size)
),
n AS (
    SELECT id, recipients, coalesce(channels, %(default_channels)s::text[]) AS channels,
           priority, expires_at
      FROM notifications
     WHERE id = ANY(%(ids)s::uuid[])
),
candidates AS (
    SELECT n.id AS notification_id, r.id AS recipient_id, c.channel,
           CASE
               WHEN n.expires_at <= now() THEN 'expired'
               WHEN s.channel IS NULL OR NOT s.configured THEN 'channel_not_configured'
               WHEN s.address_field IS NULL THEN NULL
               WHEN rj.doc ->> s.address_field IS NULL THEN 'no_address'
               WHEN rj.doc ->> s.inactive_field IS NOT NULL THEN 'address_inactive'
           END AS reason
      FROM n
     CROSS JOIN LATERAL unnest(n.channels) AS c(channel)
      LEFT JOIN spec AS s ON s.channel = c.channel
     CROSS JOIN LATERAL unnest(n.recipients) AS x(external_id)
      JOIN recipients AS r ON r.external_id = x.external_id
     CROSS JOIN LATERAL (SELECT CASE WHEN s.address_field IS NOT NULL THEN to_jsonb(r) END) AS rj(doc)
),
ins AS (
    INSERT INTO deliveries (notification_id, recipient_id, channel, status, reason, sent_at,
                            next_attempt_at)
    SELECT notification_id, recipient_id, channel,
           CASE WHEN reason IS NOT NULL THEN 'skipped'
                WHEN channel = 'IN_APP' THEN 'sent'
                ELSE 'pending' END,
           reason,
           CASE WHEN reason IS NULL AND channel = 'IN_APP' THEN now() END,
           CASE WHEN reason IS NULL AND channel <> 'IN_APP' THEN now() END
      FROM candidates
        ON CONFLICT DO NOTHING
    RETURNING id, notification_id, channel, status
),
batches AS (
    SELECT p.channel, p.priority, jsonb_agg(p.id ORDER BY p.id) AS ids
      FROM (SELECT i.id, i.channel, job_priority(n.priority) AS priority,
                   (row_number() OVER (PARTITION BY i.channel, n.priority ORDER BY i.id) - 1)
                       / s.batch_size AS grp
              FROM ins AS i
              JOIN n ON n.id = i.notification_id
              JOIN spec AS s ON s.channel = i.channel
             WHERE i.status = 'pending') AS p
     GROUP BY p.channel, p.priority, p.grp
),
jobs AS (
    SELECT procrastinate_defer_jobs_v1(
               ARRAY(SELECT deliver_job(b.channel, b.ids, b.priority, NULL) FROM batches AS b)
           ) AS job_ids
),
inbox AS (
    SELECT pg_notify('postbell_inbox', json_build_object('lo', min(id), 'hi', max(id))::text)
      FROM ins
     WHERE channel = 'IN_APP' AND status = 'sent'
    HAVING count(*) > 0
)
SELECT (SELECT count(*) FROM ins) AS deliveries,
       (SELECT count(*) FROM ins WHERE status = 'pending') AS pending,
       (SELECT coalesce(cardinality(job_ids), 0) FROM jobs) AS jobs,
       (SELECT count(*) FROM inbox) AS inbox_notifies

-- name: route_mark_routed
UPDATE notifications SET status = 'routed', routed_at = now() WHERE id = ANY(%(ids)s::uuid[])
