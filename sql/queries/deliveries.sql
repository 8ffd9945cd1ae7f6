-- name: deliveries_load_sendable
-- What a deliver job needs to send: its deliveries that are still unsent, with the
-- notification's content and the recipient's addresses.
SELECT d.id, d.attempts, d.notification_id, job_priority(n.priority) AS job_priority,
       n.title, n.body, n.action_url, n.metadata, n.category, n.priority, n.expires_at,
       r.external_id, r.email, r.phone, r.name, r.locale, r.timezone, r.webhook_url,
       r.webhook_secret, r.slack_webhook_url, r.discord_webhook_url,
       r.metadata AS recipient_metadata
  FROM deliveries AS d
  JOIN notifications AS n ON n.id = d.notification_id
  JOIN recipients AS r ON r.id = d.recipient_id
 WHERE d.id = ANY(%(ids)s::bigint[])
   AND d.channel = %(channel)s
   AND d.status IN ('pending', 'failed')
 ORDER BY d.id

-- name: deliveries_record
-- Every outcome of a deliver run in one statement. Rows already final (another run
-- got there first) are left alone.
UPDATE deliveries AS d
   SET status = o.status,
       reason = o.reason,
       attempts = d.attempts + o.attempted::integer,
       last_error = coalesce(o.error, d.last_error),
       next_attempt_at = o.next_attempt_at,
       provider_message_id = coalesce(o.provider_message_id, d.provider_message_id),
       sent_at = CASE WHEN o.status = 'sent' THEN now() ELSE d.sent_at END,
       updated_at = now()
  FROM unnest(%(ids)s::bigint[], %(statuses)s::text[], %(reasons)s::text[], %(errors)s::text[],
              %(next_attempt_at)s::timestamptz[], %(provider_message_ids)s::text[],
              %(attempted)s::boolean[])
       AS o(id, status, reason, error, next_attempt_at, provider_message_id, attempted)
 WHERE d.id = o.id
   AND d.status IN ('pending', 'failed')
