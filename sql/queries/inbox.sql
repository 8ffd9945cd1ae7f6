-- name: inbox_recipient_id
SELECT id FROM recipients WHERE external_id = %(external_id)s

-- name: inbox_view
-- GET /api/inbox/{id} in one round trip, one snapshot: the recipient, its counts
-- (kept per month by the triggers of migrations 0013 and 0035, summed by
-- inbox_counts_of(): 0035 says why a function) and a page, newest first, keyset on
-- the delivery id, from inbox_page() (a function for its plan: migration 0030 says
-- why).
-- No row: never notified. One row whose id is NULL: an empty page.
SELECT x.recipient_id, coalesce(c.unread, 0) AS unread_count,
       coalesce(c.unseen, 0) AS unseen_count, p.*
  FROM (SELECT r.id AS recipient_id FROM recipients AS r
         WHERE r.external_id = %(external_id)s) AS x
  LEFT JOIN LATERAL inbox_counts_of(ARRAY[x.recipient_id]) AS c ON true
  LEFT JOIN LATERAL inbox_page(x.recipient_id, %(before)s, %(unread_only)s, %(archived)s,
                               %(category)s, %(limit)s) AS p ON true
 ORDER BY p.id DESC

-- name: inbox_counts
-- One row: the sum of the recipient's months, kept by the deliveries triggers (0013,
-- 0035; no recount).
SELECT c.unread AS unread_count, c.unseen AS unseen_count
  FROM inbox_counts_of(ARRAY[%(recipient_id)s::bigint]) AS c

-- name: inbox_mark
-- read, unread, seen, archive or unarchive some (ids) or all of a recipient's inbox
-- items; updated_at and the *_at columns are in no index, so these are HOT updates.
-- One NOTIFY tells the live inboxes (ids only, none when many: clients refetch).
WITH changed AS (
    UPDATE deliveries
       SET read_at = CASE %(action)s WHEN 'read' THEN coalesce(read_at, now())
                                     WHEN 'unread' THEN NULL ELSE read_at END,
           seen_at = CASE WHEN %(action)s IN ('read', 'seen') THEN coalesce(seen_at, now())
                          ELSE seen_at END,
           archived_at = CASE %(action)s WHEN 'archive' THEN coalesce(archived_at, now())
                                         WHEN 'unarchive' THEN NULL ELSE archived_at END,
           updated_at = now()
     WHERE recipient_id = %(recipient_id)s
       AND channel = 'IN_APP'
       AND status = 'sent'
       AND (%(all)s OR id = ANY(%(ids)s::bigint[]))
       AND CASE %(action)s WHEN 'read' THEN read_at IS NULL
                           WHEN 'unread' THEN read_at IS NOT NULL
                           WHEN 'seen' THEN seen_at IS NULL
                           WHEN 'archive' THEN archived_at IS NULL
                           WHEN 'unarchive' THEN archived_at IS NOT NULL END
    RETURNING id
),
notified AS (
    SELECT pg_notify('postbell_inbox', json_build_object(
               'r', %(recipient_id)s::bigint, 'u', %(action)s,
               'ids', CASE WHEN count(*) <= 200 THEN array_agg(id ORDER BY id) END)::text)
      FROM changed
    HAVING count(*) > 0
)
SELECT (SELECT count(*) FROM changed) AS updated, (SELECT count(*) FROM notified) AS notified

-- name: inbox_live_items
-- New inbox items of connected recipients within the id ranges routers announced.
-- Driven by the (recipient_id, channel, id) index: one short range scan per
-- connected recipient, however many items the fan-out wrote for others.
SELECT d.id, d.recipient_id, d.notification_id, coalesce(t.content ->> 'title', n.title) AS title,
       coalesce(t.content ->> 'body', n.body) AS body,
       coalesce(t.content ->> 'action_url', n.action_url) AS action_url, n.category,
       n.metadata, n.priority, d.created_at, d.read_at, d.seen_at, d.archived_at
  FROM deliveries AS d
  JOIN notifications AS n ON n.id = d.notification_id
  CROSS JOIN LATERAL (
        -- rendered text only for a templated item (migration 0034 says why)
        SELECT CASE WHEN n.template_key IS NOT NULL OR d.content IS NOT NULL
                    THEN inbox_content(d.content, n.rendered,
                                       (SELECT r.locale FROM recipients AS r
                                         WHERE r.id = d.recipient_id)) END AS content
        OFFSET 0) AS t
 WHERE d.recipient_id = ANY(%(recipient_ids)s::bigint[])
   AND d.channel = 'IN_APP'
   AND d.status = 'sent'
   AND d.archived_at IS NULL           -- archived before the hub got to it
   AND d.id BETWEEN (SELECT min(x) FROM unnest(%(los)s::bigint[]) AS x)
                AND (SELECT max(x) FROM unnest(%(his)s::bigint[]) AS x)
   AND EXISTS (SELECT 1 FROM unnest(%(los)s::bigint[], %(his)s::bigint[]) AS g(lo, hi)
                WHERE d.id BETWEEN g.lo AND g.hi)
 ORDER BY d.id

-- name: inbox_live_counts
SELECT recipient_id, unread AS unread_count, unseen AS unseen_count
  FROM inbox_counts_of(%(recipient_ids)s::bigint[])

-- name: inbox_replay
-- What a reconnecting stream missed: items after its Last-Event-ID, oldest first.
-- Not the ones archived meanwhile (from another tab or device, or by the host app):
-- the client never showed them, and replaying them would bring them back.
SELECT d.id, d.recipient_id, d.notification_id, coalesce(t.content ->> 'title', n.title) AS title,
       coalesce(t.content ->> 'body', n.body) AS body,
       coalesce(t.content ->> 'action_url', n.action_url) AS action_url, n.category,
       n.metadata, n.priority, d.created_at, d.read_at, d.seen_at, d.archived_at
  FROM deliveries AS d
  JOIN notifications AS n ON n.id = d.notification_id
  CROSS JOIN LATERAL (
        -- rendered text only for a templated item (migration 0034 says why)
        SELECT CASE WHEN n.template_key IS NOT NULL OR d.content IS NOT NULL
                    THEN inbox_content(d.content, n.rendered,
                                       (SELECT r.locale FROM recipients AS r
                                         WHERE r.id = %(recipient_id)s)) END AS content
        OFFSET 0) AS t
 WHERE d.recipient_id = %(recipient_id)s
   AND d.channel = 'IN_APP'
   AND d.status = 'sent'
   AND d.archived_at IS NULL
   AND d.id > %(after)s
 ORDER BY d.id
 LIMIT %(limit)s

-- name: inbox_last_id
SELECT coalesce(max(id), 0) AS last_id
  FROM deliveries
 WHERE recipient_id = %(recipient_id)s AND channel = 'IN_APP' AND status = 'sent'
