-- name: deliveries_load_sendable
-- What a deliver job needs to send: its deliveries that are still unsent, with the
-- notification's content, the recipient's addresses (and, for PUSH, devices), and
-- what the category sets per channel (the Apprise URLs only for APPRISE: they hold
-- credentials, so no other channel's run loads them).
SELECT d.id, d.attempts, d.notification_id, d.recipient_id, d.replay_id, d.variant,
       job_priority(n.priority) AS job_priority,
       coalesce(v.title, n.title) AS title, coalesce(v.body, n.body) AS body,
       coalesce(v.action_url, n.action_url) AS action_url,
       n.metadata, n.category, n.priority, n.expires_at,
       -- a template variant renders its pinned version; a text variant its own text
       CASE WHEN v.template_key IS NOT NULL THEN v.template_key
            WHEN v.own_text THEN NULL ELSE n.template_key END AS template_key,
       CASE WHEN v.template_key IS NOT NULL THEN v.template_version
            WHEN v.own_text THEN NULL ELSE n.template_version END AS template_version,
       n.template_data,
       c.rate_limits -> d.channel AS rate_limit, coalesce(c.required, false) AS category_required,
       r.external_id, r.email, r.phone, r.name, r.locale, r.timezone, r.webhook_url,
       r.webhook_secret, r.slack_webhook_url, r.discord_webhook_url, r.whatsapp,
       r.telegram_chat_id, r.teams_webhook_url,
       r.metadata AS recipient_metadata,
       c.teams_webhook_url AS category_teams_webhook_url, c.sms_type AS category_sms_type,
       c.whatsapp_content_sid AS category_whatsapp_content_sid,
       CASE WHEN d.channel = 'APPRISE' THEN c.apprise_urls END AS category_apprise_urls,
       CASE WHEN d.channel = 'PUSH' THEN
           (SELECT coalesce(jsonb_agg(jsonb_build_object('token', v.token, 'platform', v.platform)
                                      ORDER BY v.id), '[]')
              FROM devices AS v
             WHERE v.recipient_id = r.id AND v.disabled_at IS NULL)
       END AS devices
  FROM deliveries AS d
  JOIN notifications AS n ON n.id = d.notification_id
  LEFT JOIN categories AS c ON c.key = n.category
  JOIN recipients AS r ON r.id = d.recipient_id
  -- an experiment's variant: its own text (0021), or its template (0022)
  LEFT JOIN LATERAL (
        SELECT e ->> 'title' AS title, e ->> 'body' AS body, e ->> 'action_url' AS action_url,
               e ->> 'template' AS template_key, (e ->> 'template_version')::integer
                   AS template_version,
               NOT e ? 'template' AND (e ? 'title' OR e ? 'body') AS own_text
          FROM jsonb_array_elements(n.variants) AS e
         WHERE e ->> 'name' = d.variant
         LIMIT 1) AS v ON d.variant IS NOT NULL
 WHERE d.id = ANY(%(ids)s::bigint[])
   AND d.channel = %(channel)s
   AND d.status IN ('pending', 'failed')
 ORDER BY d.id

-- name: deliveries_record
-- Every outcome of a deliver run in one statement. Rows already final (another run
-- got there first) are left alone. IN_APP deliveries it makes sent (fallbacks to
-- IN_APP; routing writes the others) are announced to the live inboxes, one NOTIFY
-- each with an exact range, so that no earlier item is announced again.
-- The same statement writes the timeline (one event per attempt, or per delivery
-- skipped at send time; none for IN_APP, nor for a delivery only held back; a
-- replayed delivery's events name the replay) and adds the batch's failed attempts
-- to the provider-error rollup, by error class.
WITH recorded AS (
    UPDATE deliveries AS d
       SET status = o.status,
           reason = o.reason,
           attempts = d.attempts + o.attempted::integer,
           last_error = coalesce(o.error, d.last_error),
           next_attempt_at = o.next_attempt_at,
           provider_message_id = coalesce(o.provider_message_id, d.provider_message_id),
           sent_at = CASE WHEN o.status = 'sent' THEN now() ELSE d.sent_at END,
           updated_at = now()
      FROM unnest(%(ids)s::bigint[], %(statuses)s::text[], %(reasons)s::text[],
                  %(errors)s::text[], %(next_attempt_at)s::timestamptz[],
                  %(provider_message_ids)s::text[], %(attempted)s::boolean[],
                  %(error_classes)s::text[])
           AS o(id, status, reason, error, next_attempt_at, provider_message_id, attempted,
                error_class)
     WHERE d.id = o.id
       AND d.status IN ('pending', 'failed')
    RETURNING d.id, d.channel, d.status, o.reason, o.error, o.provider_message_id, o.attempted,
              o.error_class, d.replay_id
),
inbox AS (
    SELECT pg_notify('postbell_inbox', json_build_object('lo', id, 'hi', id)::text)
      FROM recorded
     WHERE channel = 'IN_APP' AND status = 'sent'
),
events AS (
    INSERT INTO delivery_events (delivery_id, kind, outcome, error_class, error,
                                 provider_message_id, started_at, duration_ms, detail)
    SELECT id, CASE WHEN attempted THEN 'attempt' ELSE 'skip' END, status, error_class, error,
           provider_message_id,
           CASE WHEN attempted THEN %(started_at)s::timestamptz END,
           CASE WHEN attempted THEN %(duration_ms)s::double precision END,
           nullif(jsonb_strip_nulls(jsonb_build_object('reason', reason, 'replay_id', replay_id)),
                  '{}')
      FROM recorded
     WHERE channel <> 'IN_APP' AND (attempted OR status = 'skipped')
),
errors AS (
    INSERT INTO metric_counts (metric, channel, label, value)
    SELECT 'provider_errors', channel, error_class, count(*)
      FROM recorded
     WHERE attempted AND error_class IS NOT NULL
     GROUP BY channel, error_class
)
SELECT (SELECT count(*) FROM recorded) AS recorded, (SELECT count(*) FROM inbox) AS notifies

-- name: deliveries_defer_retries
-- One deliver job per group of transient failures: [{"ids": [...], "priority": 10,
-- "run_at": "..."}], in the transaction that records them.
SELECT procrastinate_defer_jobs_v1(ARRAY(
           SELECT deliver_job(%(channel)s, g -> 'ids', (g ->> 'priority')::integer,
                              (g ->> 'run_at')::timestamptz)
             FROM jsonb_array_elements(%(groups)s::jsonb) AS g)) AS job_ids

-- name: deliveries_add_fallbacks
-- Deliveries that just ended dead (or found no device or address) on a channel their
-- notification (or its category) names a fallback for: the fallback delivery,
-- decided like routing decides, with its job.
WITH spec AS (
    SELECT *
      FROM unnest(%(ch_names)s::text[], %(ch_address)s::text[], %(ch_inactive)s::text[],
                  %(ch_configured)s::boolean[])
           AS s(channel, address_field, inactive_field, configured)
),
f AS (
    SELECT d.notification_id, d.created_at, r.id AS recipient_id, fb.channel,
           job_priority(n.priority) AS priority, d.id AS fallback_for,
           d.channel || ' ' || CASE WHEN d.status = 'dead' THEN 'dead' ELSE d.reason END
               AS fallback_reason,
           delivery_skip_reason(fb.channel, s.configured, s.address_field, s.inactive_field,
                                n.expires_at, r, p, n.category, coalesce(c.required, false),
                                coalesce(n.topic, n.metadata #>> '{workflow,topic}')) AS reason
      FROM deliveries AS d
      JOIN notifications AS n ON n.id = d.notification_id
      LEFT JOIN categories AS c ON c.key = n.category
      JOIN recipients AS r ON r.id = d.recipient_id
      LEFT JOIN preferences AS p ON p.recipient_id = r.id
     CROSS JOIN LATERAL (SELECT coalesce(n.fallback, c.fallback) ->> d.channel AS channel) AS fb
      LEFT JOIN spec AS s ON s.channel = fb.channel
     WHERE d.id = ANY(%(ids)s::bigint[])
       AND (d.status = 'dead' OR (d.status = 'skipped' AND d.reason IN ('no_device', 'no_address')))
       AND d.fallback_for IS NULL          -- one level: a fallback has no fallback
       AND fb.channel IS NOT NULL
),
ins AS (
    -- in its original's partition, under the same key (0030)
    INSERT INTO deliveries (notification_id, created_at, recipient_id, channel, status, reason,
                            next_attempt_at, fallback_for, fallback_reason)
    SELECT notification_id, created_at, recipient_id, channel,
           CASE WHEN reason IS NULL THEN 'pending' ELSE 'skipped' END, reason,
           CASE WHEN reason IS NULL THEN now() END, fallback_for, fallback_reason
      FROM f
        ON CONFLICT DO NOTHING
    RETURNING id, channel, status, fallback_for
)
SELECT (SELECT count(*) FROM ins) AS deliveries,
       defer_deliveries(array_agg(i.id), array_agg(i.channel), array_agg(f.priority),
                        array_agg(NULL::timestamptz), %(batch_sizes)s::jsonb) AS jobs
  FROM ins AS i
  JOIN f ON f.fallback_for = i.fallback_for
 WHERE i.status = 'pending'

-- name: deliveries_requeue_dead
-- Dead letters back to pending, with fresh attempts and their jobs. Either the ids
-- given, or every dead delivery matching the filters (channel, reason, older than).
WITH picked AS (
    SELECT d.id
      FROM deliveries AS d
     WHERE d.status = 'dead'
       AND (%(ids)s::bigint[] IS NULL OR d.id = ANY(%(ids)s::bigint[]))
       AND (%(channel)s::text IS NULL OR d.channel = %(channel)s)
       AND (%(reason)s::text IS NULL OR d.reason = %(reason)s)
       AND (%(older_than)s::timestamptz IS NULL OR d.updated_at < %(older_than)s)
     ORDER BY d.id
     LIMIT %(limit)s
       FOR UPDATE
),
requeued AS (
    UPDATE deliveries AS d
       SET status = 'pending', reason = NULL, attempts = 0, next_attempt_at = now(),
           updated_at = now()
      FROM picked
     WHERE d.id = picked.id
    RETURNING d.id, d.channel, d.notification_id
),
timeline AS (
    INSERT INTO delivery_events (delivery_id, kind, outcome)
    SELECT id, 'requeue', 'pending' FROM requeued
)
SELECT count(*) AS deliveries, array_agg(q.id) AS ids,
       defer_deliveries(array_agg(q.id), array_agg(q.channel), array_agg(job_priority(n.priority)),
                        array_agg(NULL::timestamptz), %(batch_sizes)s::jsonb) AS jobs
  FROM requeued AS q
  JOIN notifications AS n ON n.id = q.notification_id

-- name: deliveries_dead_page
SELECT d.id, d.notification_id, d.channel, r.external_id AS recipient, d.reason, d.last_error,
       d.attempts, d.created_at, d.updated_at AS died_at
  FROM deliveries AS d
  JOIN recipients AS r ON r.id = d.recipient_id
 WHERE d.status = 'dead'
   AND d.id > %(after)s
   AND (%(channel)s::text IS NULL OR d.channel = %(channel)s)
   AND (%(reason)s::text IS NULL OR d.reason = %(reason)s)
   AND (%(older_than)s::timestamptz IS NULL OR d.updated_at < %(older_than)s)
 ORDER BY d.id
 LIMIT %(limit)s

-- name: deliveries_dead_count
SELECT count(*) AS total
  FROM deliveries AS d
 WHERE d.status = 'dead'
   AND (%(channel)s::text IS NULL OR d.channel = %(channel)s)
   AND (%(reason)s::text IS NULL OR d.reason = %(reason)s)
   AND (%(older_than)s::timestamptz IS NULL OR d.updated_at < %(older_than)s)

-- name: devices_disable
-- Push tokens FCM called unregistered or invalid: never used again.
UPDATE devices
   SET disabled_at = now(), disabled_reason = %(reason)s
 WHERE token = ANY(%(tokens)s::text[])
   AND disabled_at IS NULL

-- name: deliveries_recent_sends
-- For rate limits: what each (recipient, category) got on this channel within its
-- window, and when the oldest of those was sent.
SELECT w.recipient_id, w.category, count(d.id) AS sent, min(d.sent_at) AS oldest
  FROM unnest(%(recipient_ids)s::bigint[], %(categories)s::text[], %(windows)s::double precision[])
       AS w(recipient_id, category, seconds)
  LEFT JOIN deliveries AS d
    ON d.recipient_id = w.recipient_id
   AND d.channel = %(channel)s
   AND d.sent_at IS NOT NULL
   AND d.sent_at > now() - make_interval(secs => w.seconds)
   AND EXISTS (SELECT 1 FROM notifications AS n WHERE n.id = d.notification_id AND n.category = w.category)
 GROUP BY w.recipient_id, w.category

-- name: deliveries_feedback
-- What a provider reported after 'sent', in one statement and so one transaction:
--  1. each event is recorded in provider_events by its provider id; one already there
--     (a retry or a replay) is dropped here and changes nothing;
--  2. of a delivery's new events in one callback, one is applied: the first bounce or
--     complaint, else the first (a SendGrid batch may carry 'delivered' and 'bounce');
--  3. the delivery moves only forward: from sent, or from delivered to a bounce or a
--     complaint (both can arrive after the delivery report); never out of bounced,
--     complained or undelivered;
--  4. a hard bounce, complaint or opt-out marks the recipient's address inactive only
--     when its delivery moved here AND the address the provider named is still the
--     recipient's (email compared case-insensitively): feedback about an address the
--     host has since replaced never silences the new one.
-- addresses[i] is a JSON array of the addresses event i names.
WITH ev AS (
    SELECT *
      FROM unnest(%(event_keys)s::text[], %(ids)s::bigint[], %(statuses)s::text[],
                  %(reasons)s::text[], %(addresses)s::text[], %(inactive)s::boolean[])
           WITH ORDINALITY AS e(event_key, id, status, reason, addresses, inactive, n)
),
fresh AS (
    INSERT INTO provider_events (provider, event_key, delivery_id)
    SELECT DISTINCT ON (event_key) %(provider)s, event_key, id
      FROM ev
     ORDER BY event_key, n
        ON CONFLICT DO NOTHING
    RETURNING event_key
),
picked AS (
    SELECT DISTINCT ON (ev.id) ev.*
      FROM ev
      JOIN fresh USING (event_key)
     ORDER BY ev.id, ev.status IN ('bounced', 'complained') DESC, ev.n
),
moved AS (
    UPDATE deliveries AS d
       SET status = p.status, reason = p.reason, updated_at = now()
      FROM picked AS p
     WHERE d.id = p.id
       AND d.channel = %(channel)s
       AND (d.status = 'sent' OR (d.status = 'delivered' AND p.status IN ('bounced', 'complained')))
    RETURNING d.id, d.recipient_id, p.addresses, p.inactive
),
marked AS (
    UPDATE recipients AS r
       SET email_inactive_at = CASE WHEN %(channel)s = 'EMAIL'
                                    THEN coalesce(r.email_inactive_at, now()) ELSE r.email_inactive_at END,
           phone_inactive_at = CASE WHEN %(channel)s = 'SMS'
                                    THEN coalesce(r.phone_inactive_at, now()) ELSE r.phone_inactive_at END,
           whatsapp_inactive_at = CASE WHEN %(channel)s = 'WHATSAPP'
                                       THEN coalesce(r.whatsapp_inactive_at, now())
                                       ELSE r.whatsapp_inactive_at END
      FROM moved AS m
     WHERE r.id = m.recipient_id
       AND m.inactive
       AND CASE %(channel)s WHEN 'EMAIL' THEN r.email_inactive_at IS NULL
                            WHEN 'WHATSAPP' THEN r.whatsapp_inactive_at IS NULL
                            ELSE r.phone_inactive_at IS NULL END
       AND EXISTS (SELECT 1
                     FROM jsonb_array_elements_text(m.addresses::jsonb) AS a(address)
                    WHERE CASE %(channel)s WHEN 'EMAIL' THEN lower(a.address) = lower(r.email)
                                           WHEN 'WHATSAPP' THEN a.address = r.whatsapp
                                           ELSE a.address = r.phone END)
    RETURNING r.id
),
timeline AS (
    -- Every new event about one of this channel's deliveries, and whether it moved it.
    INSERT INTO delivery_events (delivery_id, kind, outcome, detail)
    SELECT DISTINCT ON (ev.event_key) ev.id, 'feedback', ev.status,
           jsonb_strip_nulls(jsonb_build_object(
               'provider', %(provider)s::text, 'reason', ev.reason,
               'applied', EXISTS (SELECT 1 FROM picked AS p JOIN moved AS m ON m.id = p.id
                                   WHERE p.id = ev.id AND p.n = ev.n)))
      FROM ev
      JOIN fresh USING (event_key)
     WHERE EXISTS (SELECT 1 FROM deliveries AS d WHERE d.id = ev.id AND d.channel = %(channel)s)
     ORDER BY ev.event_key, ev.n
)
SELECT (SELECT count(*) FROM ev) AS events, (SELECT count(*) FROM fresh) AS fresh,
       (SELECT count(*) FROM moved) AS moved, (SELECT count(DISTINCT id) FROM marked) AS marked
