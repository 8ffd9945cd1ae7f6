-- name: route_lock_notifications
-- The notifications of a routing batch that still need routing, locked for this
-- transaction. A duplicate routing job (a stalled one retried) finds them routed.
-- One cancelled before it was routed is routed too, every delivery 'cancelled', so
-- that it ends with a recorded state per delivery like any other.
SELECT id, topic, priority, coalesce(routed_through, 0) AS routed_through
  FROM notifications
 WHERE id = ANY(%(ids)s::uuid[])
   AND (status IN ('queued', 'scheduled') OR (status = 'cancelled' AND routed_at IS NULL))
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

-- name: route_deliveries
-- Fan notifications out to deliveries, in one statement. Targets are each direct
-- notification's recipient list, or one chunk of a topic notification's subscribers
-- (topic %(topic)s, recipient_id in (%(after)s, %(until)s], %(chunk)s of them at most,
-- in id order). For every target x
-- channel (the notification's, else its category's defaults, else IN_APP),
-- delivery_skip_reason() decides: skipped with a reason (expired, opted out of the
-- channel, the category or the topic, no address ...), or sent at once for IN_APP,
-- or pending — held to the end of the recipient's quiet hours unless urgent. A fallback delivery is added where the
-- notification (or its category) names one for a channel without device or address.
-- Then deliver jobs for every pending id, and one NOTIFY for the live inboxes.
-- ON CONFLICT makes a second run of the same batch or chunk a no-op.
WITH spec AS (
    SELECT *
      FROM unnest(%(ch_names)s::text[], %(ch_address)s::text[], %(ch_inactive)s::text[],
                  %(ch_configured)s::boolean[])
           AS s(channel, address_field, inactive_field, configured)
),
n AS (
    SELECT n.id, n.recipients, n.topic, n.priority, n.expires_at, n.category,
           n.status = 'cancelled' AS cancelled,
           -- every delivery of a notification carries the time it was due: the
           -- partition key, and part of the idempotency key (0030)
           greatest(n.created_at, n.send_at) AS due_at,
           coalesce(n.channels, c.default_channels, %(default_channels)s::text[]) AS channels,
           coalesce(n.fallback, c.fallback, '{}') AS fallback,
           coalesce(c.required, false) AS required, n.experiment, n.variants,
           -- the topic whose mutes apply: the notification's own, or the topic of the
           -- workflow trigger whose run made it
           coalesce(n.topic, n.metadata #>> '{workflow,topic}') AS mute_topic
      FROM notifications AS n
      LEFT JOIN categories AS c ON c.key = n.category
     WHERE n.id = ANY(%(ids)s::uuid[])
),
members AS (
    SELECT n.id AS notification_id, r.id AS recipient_id
      FROM n
     CROSS JOIN LATERAL unnest(n.recipients) AS x(external_id)
      JOIN recipients AS r ON r.external_id = x.external_id
     WHERE n.topic IS NULL
    UNION ALL
    -- by the topic's key as a parameter, so that the plan walks the topic's own
    -- members (its primary key index, in id order) and not every subscription of
    -- every topic filtered by topic
    (SELECT n.id, s.recipient_id
       FROM n
       JOIN topic_subscribers AS s ON s.topic_key = n.topic
      WHERE s.topic_key = %(topic)s::text
        AND s.recipient_id > %(after)s
        AND s.recipient_id <= %(until)s
      ORDER BY s.recipient_id
      LIMIT %(chunk)s)
),
targets AS (
    SELECT m.notification_id, n.due_at, n.priority, n.expires_at, n.category, n.channels, n.fallback,
           n.required, n.cancelled, n.mute_topic, r AS recipient, p AS preferences, n.variants,
           -- an experiment's variant for this recipient (0021: a hash, the same every time)
           CASE WHEN n.experiment IS NOT NULL
                THEN experiment_variant(n.experiment, r.external_id, n.variants) END AS variant
      FROM members AS m
      JOIN n ON n.id = m.notification_id
      JOIN recipients AS r ON r.id = m.recipient_id
      LEFT JOIN preferences AS p ON p.recipient_id = m.recipient_id
),
-- OFFSET 0 keeps this a subquery of its own: pulled up into ins, its reason and
-- quiet_until were written out again at each of their uses there, so every
-- delivery computed delivery_skip_reason() four times (to_jsonb of its recipient
-- twice each) and quiet_hours_end() twice: 10,000 webhooks routed in 0.99 s, now
-- 0.37 s. quiet_hours_end() (not inlined: a subquery) runs only where there are
-- quiet hours.
decided AS (
    SELECT t.notification_id, t.due_at, (t.recipient).id AS recipient_id, c.channel, t.cancelled,
           t.variant,
           t.variants,
           delivery_skip_reason(c.channel, s.configured, s.address_field, s.inactive_field,
                                t.expires_at, t.recipient, t.preferences, t.category,
                                t.required, t.mute_topic) AS reason,
           CASE WHEN c.channel <> 'IN_APP' AND t.priority <> 'urgent'
                     AND (t.preferences).quiet_hours IS NOT NULL
                THEN quiet_hours_end((t.preferences).quiet_hours, (t.recipient).timezone, now())
           END AS quiet_until
      FROM targets AS t
     CROSS JOIN LATERAL unnest(t.channels) AS c(channel)
      LEFT JOIN spec AS s ON s.channel = c.channel
    OFFSET 0
),
ins AS (
    INSERT INTO deliveries (notification_id, created_at, recipient_id, channel, status, reason,
                            sent_at, next_attempt_at, variant, content)
    SELECT notification_id, due_at, recipient_id, channel,
           CASE WHEN cancelled THEN 'cancelled'
                WHEN reason IS NOT NULL THEN 'skipped'
                WHEN channel = 'IN_APP' THEN 'sent'
                ELSE 'pending' END,
           CASE WHEN NOT cancelled
                THEN coalesce(reason, CASE WHEN quiet_until IS NOT NULL THEN 'quiet_hours' END) END,
           CASE WHEN NOT cancelled AND reason IS NULL AND channel = 'IN_APP' THEN now() END,
           CASE WHEN NOT cancelled AND reason IS NULL AND channel <> 'IN_APP'
                THEN coalesce(quiet_until, now()) END,
           variant,
           -- an IN_APP item of a variant shows the variant's text
           CASE WHEN channel = 'IN_APP' AND variant IS NOT NULL
                THEN experiment_content(variants, variant) END
      FROM decided
        ON CONFLICT DO NOTHING
    RETURNING id, notification_id, created_at, recipient_id, channel, status, reason,
              next_attempt_at, variant
),
fallback AS (
    INSERT INTO deliveries (notification_id, created_at, recipient_id, channel, status, reason,
                            next_attempt_at, fallback_for, fallback_reason, variant)
    SELECT f.notification_id, f.created_at, f.recipient_id, f.channel,
           CASE WHEN f.reason IS NULL THEN 'pending' ELSE 'skipped' END,
           f.reason,
           CASE WHEN f.reason IS NULL THEN now() END,
           f.fallback_for, f.fallback_reason, f.variant
      FROM (SELECT i.notification_id, i.created_at, i.recipient_id,
                   t.fallback ->> i.channel AS channel,
                   i.variant,
                   i.id AS fallback_for, i.channel || ' ' || i.reason AS fallback_reason,
                   delivery_skip_reason(t.fallback ->> i.channel, s.configured, s.address_field,
                                        s.inactive_field, t.expires_at, r, p, t.category,
                                        t.required, t.mute_topic) AS reason
              FROM ins AS i
              -- the recipient and preferences looked up again for these few rows, not
              -- read back from targets: a second use of targets would make Postgres
              -- keep all of it (a 50,000-member chunk's recipients and preferences
              -- rows, ~12 MB written to a temporary file) for the rare fallback
              JOIN n AS t ON t.id = i.notification_id
              JOIN recipients AS r ON r.id = i.recipient_id
              LEFT JOIN preferences AS p ON p.recipient_id = i.recipient_id
              LEFT JOIN spec AS s ON s.channel = t.fallback ->> i.channel
             WHERE i.status = 'skipped'
               AND i.reason IN ('no_device', 'no_address')
               AND t.fallback ? i.channel
               AND NOT (t.fallback ->> i.channel = ANY(t.channels))) AS f
        ON CONFLICT DO NOTHING
    RETURNING id, notification_id, channel, status, next_attempt_at
),
pending AS (
    SELECT p.id, p.channel, job_priority(n.priority) AS priority,
           CASE WHEN p.next_attempt_at > now() THEN p.next_attempt_at END AS run_at
      FROM (SELECT id, notification_id, channel, status, next_attempt_at FROM ins
            UNION ALL
            SELECT id, notification_id, channel, status, next_attempt_at FROM fallback) AS p
      JOIN n ON n.id = p.notification_id
     WHERE p.status = 'pending'
),
jobs AS (
    SELECT defer_deliveries(array_agg(id), array_agg(channel), array_agg(priority),
                            array_agg(run_at), %(batch_sizes)s::jsonb) AS n
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
       (SELECT count(*) FROM inbox) AS inbox_notifies,
       (SELECT count(*) FROM members) AS members,
       (SELECT max(recipient_id) FROM members) AS last_recipient

-- name: route_mark_routed
UPDATE notifications
   SET status = CASE WHEN status = 'cancelled' THEN 'cancelled' ELSE 'routed' END, routed_at = now()
 WHERE id = ANY(%(ids)s::uuid[])

-- name: route_share_notification
-- A topic notification still to route, locked against change (a cancel waits) but
-- not against the other chunks of its fan-out, which run beside this one.
SELECT id, topic
  FROM notifications
 WHERE id = %(id)s
   AND (status IN ('queued', 'scheduled') OR (status = 'cancelled' AND routed_at IS NULL))
   FOR SHARE

-- name: route_plan_ranges
-- A topic notification's members still to route (past routed_through, where a
-- router from before 0028 left it) split into ranges of %(chunk)s, the last one
-- open-ended: the chunks its fan-out routes side by side (0028). Nothing when its
-- ranges exist already (a rerun resumes them). The split reads the members' ids once,
-- from the topic's primary key.
WITH cuts AS (
    SELECT recipient_id
      FROM (SELECT recipient_id, row_number() OVER (ORDER BY recipient_id) AS k
              FROM topic_subscribers
             WHERE topic_key = %(topic)s
               AND recipient_id > %(after)s) AS s
     WHERE k %% %(chunk)s = 0
),
bounds AS (
    SELECT lag(recipient_id, 1, %(after)s::bigint) OVER (ORDER BY recipient_id) AS lo,
           recipient_id AS hi
      FROM cuts
    UNION ALL
    SELECT coalesce(max(recipient_id), %(after)s::bigint), NULL FROM cuts
)
INSERT INTO topic_ranges (notification_id, lo, hi, routed_through)
SELECT %(id)s, lo, hi, lo
  FROM bounds
 WHERE NOT EXISTS (SELECT 1 FROM topic_ranges WHERE notification_id = %(id)s)
    ON CONFLICT DO NOTHING

-- name: route_take_range
-- A range of this fan-out that no other chunk holds, locked for this chunk's
-- transaction.
SELECT lo, hi, routed_through
  FROM topic_ranges
 WHERE notification_id = %(id)s AND NOT done
 ORDER BY lo
 LIMIT 1
   FOR UPDATE SKIP LOCKED

-- name: route_wait_range
-- When every range not done is held by another chunk: wait for one of them to
-- commit (a lock wait, not a poll); answers a range still open, if any.
SELECT lo
  FROM topic_ranges
 WHERE notification_id = %(id)s AND NOT done
 ORDER BY lo
 LIMIT 1
   FOR UPDATE

-- name: route_range_progress
UPDATE topic_ranges
   SET routed_through = %(through)s, done = %(done)s
 WHERE notification_id = %(id)s AND lo = %(lo)s

-- name: route_forget_ranges
DELETE FROM topic_ranges WHERE notification_id = %(id)s

-- name: route_templated
-- The templated notifications of a routing batch: their IN_APP text is rendered here.
-- Rows with a variant: an experiment's template variants (0022), each with its pinned
-- version and the notification's data, rendered per recipient
-- (route_unrendered_variant_in_app).
SELECT id, NULL::text AS variant, template_key, template_version, template_data, category,
       priority, rendered IS NOT NULL AS rendered
  FROM notifications
 WHERE id = ANY(%(ids)s::uuid[])
   AND template_key IS NOT NULL
UNION ALL
SELECT n.id, e ->> 'name', e ->> 'template', (e ->> 'template_version')::integer,
       n.template_data, n.category, n.priority, false
  FROM notifications AS n
 CROSS JOIN LATERAL jsonb_array_elements(n.variants) AS e
 WHERE n.id = ANY(%(ids)s::uuid[])
   AND n.experiment IS NOT NULL
   AND e ? 'template'

-- name: route_store_rendered
-- The IN_APP text of a notification whose part shows nothing of the recipient:
-- rendered once per template locale ({"default": ..., "locales": {...}}).
UPDATE notifications SET rendered = %(rendered)s::jsonb WHERE id = %(id)s

-- name: route_unrendered_in_app
-- IN_APP deliveries of a templated notification still without their own text (the
-- part shows the recipient): rendered per recipient, in batches; of a topic chunk,
-- those of its members (recipient_id in (%(after)s, %(until)s]), read by the
-- (notification_id, recipient_id, channel) index.
SELECT d.id, r.external_id, r.name, r.email, r.locale, r.timezone, r.metadata
  FROM deliveries AS d
  JOIN recipients AS r ON r.id = d.recipient_id
 WHERE d.notification_id = %(id)s
   AND d.recipient_id > %(after)s AND d.recipient_id <= %(until)s
   AND d.channel = 'IN_APP'
   AND d.status = 'sent'
   AND d.content IS NULL
 ORDER BY d.id

-- name: route_set_content
-- Each IN_APP delivery's rendered text, or, where the template failed for it, dead
-- with reason template_error (the error names the field and line, not the content).
UPDATE deliveries AS d
   SET content = c.content,
       status = CASE WHEN c.error IS NULL THEN d.status ELSE 'dead' END,
       reason = CASE WHEN c.error IS NULL THEN d.reason ELSE 'template_error' END,
       last_error = c.error,
       sent_at = CASE WHEN c.error IS NULL THEN d.sent_at END,
       updated_at = now()
  FROM unnest(%(ids)s::bigint[], %(contents)s::jsonb[], %(errors)s::text[]) AS c(id, content, error)
 WHERE d.id = c.id

-- name: route_unrendered_variant_in_app
-- route_unrendered_in_app for the deliveries of one template variant.
SELECT d.id, r.external_id, r.name, r.email, r.locale, r.timezone, r.metadata
  FROM deliveries AS d
  JOIN recipients AS r ON r.id = d.recipient_id
 WHERE d.notification_id = %(id)s
   AND d.recipient_id > %(after)s AND d.recipient_id <= %(until)s
   AND d.channel = 'IN_APP'
   AND d.status = 'sent'
   AND d.content IS NULL
   AND d.variant = %(variant)s
 ORDER BY d.id

-- name: template_versions_load
-- The versions a router or deliver run renders with (cached: versions never change).
SELECT template_key AS key, version, default_locale, locales
  FROM template_versions
 WHERE (template_key, version) IN (SELECT * FROM unnest(%(keys)s::text[], %(versions)s::integer[]))
