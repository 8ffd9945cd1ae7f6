-- name: replays_run
-- A replay, or a dry run of one (the SQL function replay() of migration 0020: chunks
-- of p_chunk deliveries, one statement each, in the caller's transaction).
SELECT id, deliveries, created, request_hash, too_large
  FROM replay(p_channels => %(channels)s::text[], p_from => %(from)s::timestamptz,
              p_to => %(to)s::timestamptz, p_statuses => %(statuses)s::text[],
              p_recipient => %(recipient)s::text, p_category => %(category)s::text,
              p_priority => %(priority)s::text, p_notification => %(notification_id)s::uuid,
              p_dry_run => %(dry_run)s::boolean, p_idempotency_key => %(idempotency_key)s::text,
              p_idempotency_scope => %(idempotency_scope)s::text,
              p_request_hash => %(request_hash)s::bytea,
              p_idempotency_ttl => make_interval(hours => %(idempotency_ttl_hours)s::integer),
              p_batch_sizes => %(batch_sizes)s::jsonb, p_chunk => %(chunk)s::integer,
              p_max => %(max)s::bigint)

-- name: replays_notification_channels
-- The channels a notification's deliveries are on, but IN_APP (NULL: no such
-- notification).
SELECT n.id,
       ARRAY(SELECT DISTINCT d.channel FROM deliveries AS d
              WHERE d.notification_id = n.id AND d.channel <> 'IN_APP'
              ORDER BY 1) AS channels
  FROM notifications AS n
 WHERE n.id = %(id)s
