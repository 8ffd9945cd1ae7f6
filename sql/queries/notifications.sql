-- name: notifications_enqueue
SELECT id, status, created, request_hash
  FROM enqueue_notification(
        %(recipients)s::text[], %(topic)s, %(title)s, %(body)s, %(action_url)s,
        %(metadata)s::jsonb, %(channels)s::text[], %(priority)s, %(category)s,
        %(fallback)s::jsonb, %(send_at)s::timestamptz, %(expires_at)s::timestamptz,
        %(idempotency_scope)s, %(idempotency_key)s, %(request_hash)s::bytea,
        make_interval(hours => %(idempotency_ttl_hours)s), %(wakeup)s,
        %(template_key)s, %(template_version)s::integer, %(template_data)s::jsonb)

-- name: notifications_get
SELECT id, status, priority, category, title, body, action_url, metadata, channels, topic,
       cardinality(recipients) AS recipient_count, fallback, send_at, expires_at,
       created_at, routed_at, template_key, template_version, template_data, experiment,
       variants
  FROM notifications
 WHERE id = %(id)s

-- name: notifications_delivery_counts
-- One row per status, kept by the deliveries triggers of migration 0013: a poll of a
-- 1,000,000-delivery fan-out reads a handful of rows, not the deliveries.
SELECT status, n
  FROM notification_counts
 WHERE notification_id = %(id)s AND n <> 0

-- name: notifications_deliveries_page
-- A page of a notification's deliveries in (recipient, channel) order: keyset
-- pagination on the (notification_id, recipient_id, channel) unique index, so a page
-- reads its own rows whatever the size of the fan-out or of the table. (In id order
-- the planner walked the primary key from the table's first row, filtering by
-- notification: the page of a recent 50,000-member notification read 350,000 rows
-- of older ones, 97 ms, and more as the table grew.)
SELECT d.id, d.channel, r.external_id AS recipient, d.status, d.reason, d.attempts,
       d.last_error, d.next_attempt_at, d.sent_at, d.created_at, d.fallback_for, d.fallback_reason,
       d.recipient_id
  FROM deliveries d
  JOIN recipients r ON r.id = d.recipient_id
 WHERE d.notification_id = %(id)s
   AND (d.recipient_id, d.channel) > (%(after_recipient)s::bigint, %(after_channel)s::text)
 ORDER BY d.recipient_id, d.channel
 LIMIT %(limit)s

-- name: notifications_delivery_position
-- Where a cursor of the id-ordered pages (before the keyset above) stands now.
SELECT recipient_id, channel FROM deliveries WHERE id = %(id)s AND notification_id = %(notification)s

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
       AND (args ->> 'notification_id' = %(id)s::text OR args -> 'ids' ? %(id)s::text)
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
    RETURNING id
),
timeline AS (
    INSERT INTO delivery_events (delivery_id, kind, outcome)
    SELECT id, 'cancel', 'cancelled' FROM d
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

-- name: notifications_list
-- Newest first, keyset on (created_at, id): the list walks an index backwards
-- (notifications_created_idx; with a category notifications_category_created_idx),
-- the other filters narrow that walk. channel: the channels it sends on — its own, else its
-- category's defaults, else IN_APP — and any fallback channel it names. template: the
-- template it was sent with (template_key); workflow: the workflow whose send step made
-- it (the engine records it in metadata.workflow, workers/workflows.py). Run
-- unprepared, so each call is planned for the filters it has.
SELECT n.id, n.status, n.priority, n.category, n.title, n.topic,
       cardinality(n.recipients) AS recipient_count, n.channels, n.send_at, n.expires_at,
       n.created_at, n.routed_at, n.template_key AS template,
       n.metadata -> 'workflow' ->> 'key' AS workflow
  FROM notifications AS n
 WHERE (%(before_at)s::timestamptz IS NULL
        OR (n.created_at, n.id) < (%(before_at)s::timestamptz, %(before_id)s::uuid))
   AND (%(category)s::text IS NULL OR n.category = %(category)s::text)
   AND (%(status)s::text IS NULL OR n.status = %(status)s::text)
   AND (%(created_after)s::timestamptz IS NULL OR n.created_at >= %(created_after)s::timestamptz)
   AND (%(created_before)s::timestamptz IS NULL OR n.created_at < %(created_before)s::timestamptz)
   AND (%(channel)s::text IS NULL OR notification_sends_on(n, %(channel)s::text))
   AND (%(template)s::text IS NULL OR n.template_key = %(template)s::text)
   AND (%(workflow)s::text IS NULL OR n.metadata -> 'workflow' ->> 'key' = %(workflow)s::text)
 ORDER BY n.created_at DESC, n.id DESC
 LIMIT %(limit)s

-- name: notifications_list_for_recipient
-- The same list for one recipient: the notifications that made them a delivery (the
-- recipient's deliveries index), plus scheduled ones not yet routed that name them in
-- `to` (notifications_send_at_idx, from a day back: those not due yet, or due and
-- about to be routed), then the same filters. A notification being routed right now
-- shows once its deliveries exist (milliseconds after it is accepted).
WITH r AS (
    SELECT id FROM recipients WHERE external_id = %(recipient)s::text
),
mine AS (
    SELECT d.notification_id AS id FROM deliveries AS d JOIN r ON d.recipient_id = r.id
    UNION
    SELECT n.id
      FROM notifications AS n
     WHERE n.send_at > now() - interval '1 day'
       AND n.routed_at IS NULL
       AND n.recipients @> ARRAY[%(recipient)s::text]
)
SELECT n.id, n.status, n.priority, n.category, n.title, n.topic,
       cardinality(n.recipients) AS recipient_count, n.channels, n.send_at, n.expires_at,
       n.created_at, n.routed_at, n.template_key AS template,
       n.metadata -> 'workflow' ->> 'key' AS workflow
  FROM notifications AS n
  JOIN mine USING (id)
 WHERE (%(before_at)s::timestamptz IS NULL
        OR (n.created_at, n.id) < (%(before_at)s::timestamptz, %(before_id)s::uuid))
   AND (%(category)s::text IS NULL OR n.category = %(category)s::text)
   AND (%(status)s::text IS NULL OR n.status = %(status)s::text)
   AND (%(created_after)s::timestamptz IS NULL OR n.created_at >= %(created_after)s::timestamptz)
   AND (%(created_before)s::timestamptz IS NULL OR n.created_at < %(created_before)s::timestamptz)
   AND (%(channel)s::text IS NULL OR notification_sends_on(n, %(channel)s::text))
   AND (%(template)s::text IS NULL OR n.template_key = %(template)s::text)
   AND (%(workflow)s::text IS NULL OR n.metadata -> 'workflow' ->> 'key' = %(workflow)s::text)
 ORDER BY n.created_at DESC, n.id DESC
 LIMIT %(limit)s

-- name: notifications_list_counts
-- delivery_counts of a page of notifications, by status (the unique index's first column).
SELECT notification_id, status, count(*) AS n
  FROM deliveries
 WHERE notification_id = ANY(%(ids)s::uuid[])
 GROUP BY notification_id, status

-- name: notifications_template
-- The active version of a live template, for a notification about to pin it. FOR
-- SHARE: a concurrent DELETE of the template waits until this one is written.
SELECT v.template_key AS key, v.version, v.category, v.default_locale, v.example_recipient,
       v.locales, v.required_data
  FROM templates AS t
  JOIN template_versions AS v ON v.template_key = t.key AND v.version = t.active_version
 WHERE t.key = %(key)s
   AND t.deleted_at IS NULL
   FOR SHARE OF t

-- name: notifications_set_experiment
-- An experiment's key and variants, in the transaction that enqueued the notification
-- (before its route job can be seen). Variants without their null fields; a template
-- variant carries its pinned template_version. The templates' data (%(data)s, null
-- when no variant names a template) is kept where the notification has none of its own.
UPDATE notifications
   SET experiment = %(experiment)s,
       variants = (SELECT jsonb_agg(jsonb_strip_nulls(e) ORDER BY i)
                     FROM jsonb_array_elements(%(variants)s::jsonb) WITH ORDINALITY AS v(e, i)),
       template_data = coalesce(template_data, %(data)s::jsonb)
 WHERE id = %(id)s

-- name: notifications_enqueue_batch
-- The group commit (app/api/notifications/batches.py): many requests' notifications
-- and route jobs in one statement, one row per item in order (id NULL and error set
-- for an item whose category or topic does not exist).
SELECT ord, id, status, error FROM enqueue_notifications(%(items)s::jsonb)
