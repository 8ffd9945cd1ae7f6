-- name: workflows_ensure
-- The workflow's row, version 0 until its first version is stored (same transaction).
INSERT INTO workflows (key, version)
VALUES (%(key)s, 0)
    ON CONFLICT (key) DO NOTHING

-- name: workflows_lock
-- The current version, locked: concurrent PUTs of one key number their versions in turn.
SELECT w.key, w.version, v.category, v.steps
  FROM workflows AS w
  LEFT JOIN workflow_versions AS v ON v.workflow_key = w.key AND v.version = w.version
 WHERE w.key = %(key)s
   FOR UPDATE OF w

-- name: workflow_versions_add
WITH v AS (
    INSERT INTO workflow_versions (workflow_key, version, category, steps)
    VALUES (%(key)s, %(version)s, %(category)s, %(steps)s::jsonb)
    RETURNING workflow_key, version
)
UPDATE workflows AS w
   SET version = v.version, updated_at = now()
  FROM v
 WHERE w.key = v.workflow_key

-- name: workflows_get
SELECT w.key, w.version, v.category, v.steps, w.created_at, w.updated_at
  FROM workflows AS w
  JOIN workflow_versions AS v ON v.workflow_key = w.key AND v.version = w.version
 WHERE w.key = %(key)s

-- name: workflows_list
SELECT w.key, w.version, v.category, v.steps, w.created_at, w.updated_at
  FROM workflows AS w
  JOIN workflow_versions AS v ON v.workflow_key = w.key AND v.version = w.version
 ORDER BY w.key

-- name: workflows_category_exists
SELECT EXISTS (SELECT 1 FROM categories WHERE key = %(category)s) AS found

-- name: workflow_templates_active
-- The active versions of the templates a workflow names (share-locked while a
-- trigger pins them: a DELETE or an activation waits for its commit).
SELECT t.key, v.version, v.required_data, v.locales, v.default_locale
  FROM templates AS t
  JOIN template_versions AS v ON v.template_key = t.key AND v.version = t.active_version
 WHERE t.key = ANY(%(keys)s::text[])
   AND t.deleted_at IS NULL
   FOR SHARE OF t

-- name: workflows_topic_exists
SELECT EXISTS (SELECT 1 FROM topics WHERE key = %(topic)s) AS found

-- name: workflows_start
-- The trigger row and (for a list of recipients) its runs; see start_workflow().
SELECT id, created, request_hash, version
  FROM start_workflow(%(workflow)s, %(recipients)s::text[], %(topic)s, %(data)s::jsonb,
                      %(cancel_key)s, %(idempotency_scope)s, %(idempotency_key)s,
                      %(request_hash)s, make_interval(hours => %(idempotency_ttl_hours)s))

-- name: workflow_runs_insert_topic_chunk
-- One chunk of a topic trigger's runs: the next %(chunk)s subscribers after
-- recipient id %(after)s, in one INSERT ... SELECT. Answers the last recipient id
-- and how many runs it made (fewer than the chunk: the topic is done).
WITH chunk AS (
    SELECT s.recipient_id, r.external_id
      FROM topic_subscribers AS s
      JOIN recipients AS r ON r.id = s.recipient_id
     WHERE s.topic_key = %(topic)s
       AND s.recipient_id > %(after)s
     ORDER BY s.recipient_id
     LIMIT %(chunk)s
),
runs AS (
    INSERT INTO workflow_runs (trigger_id, workflow_key, version, recipient, due_at, cancel_key)
    SELECT %(trigger_id)s, %(workflow)s, %(version)s, c.external_id, now(), %(cancel_key)s
      FROM chunk AS c
)
SELECT max(recipient_id) AS last_id, count(*) AS runs FROM chunk

-- name: workflow_runs_count_trigger
SELECT count(*) AS runs FROM workflow_runs WHERE trigger_id = %(trigger_id)s

-- name: workflow_runs_cancel
SELECT cancel(%(cancel_key)s) AS cancelled

-- name: workflow_runs_get
SELECT r.id, r.trigger_id, r.workflow_key, r.version, r.recipient, r.step, r.state, r.reason,
       coalesce(r.due_at, d.due_at) AS due_at, r.cancel_key, r.notification_ids, t.data,
       v.steps -> r.step ->> 'type' AS step_type, jsonb_array_length(v.steps) AS steps,
       r.digest_id, d.state AS digest_state, d.run_id AS digest_run_id,
       coalesce(cardinality(d.run_ids), d.events) AS digest_count,
       r.created_at, r.updated_at, r.finished_at
  FROM workflow_runs AS r
  JOIN workflow_triggers AS t ON t.id = r.trigger_id
  JOIN workflow_versions AS v ON v.workflow_key = r.workflow_key AND v.version = r.version
  LEFT JOIN workflow_digests AS d ON d.id = r.digest_id
 WHERE r.id = %(id)s

-- name: workflow_runs_list
-- A page of a workflow's runs, newest first, optionally one recipient's and one state.
SELECT r.id, r.trigger_id, r.workflow_key, r.version, r.recipient, r.step, r.state, r.reason,
       coalesce(r.due_at, d.due_at) AS due_at, r.cancel_key, r.notification_ids,
       v.steps -> r.step ->> 'type' AS step_type, r.digest_id,
       r.created_at, r.updated_at, r.finished_at
  FROM workflow_runs AS r
  JOIN workflow_versions AS v ON v.workflow_key = r.workflow_key AND v.version = r.version
  LEFT JOIN workflow_digests AS d ON d.id = r.digest_id
 WHERE r.workflow_key = %(workflow)s
   AND (%(recipient)s::text IS NULL OR r.recipient = %(recipient)s)
   AND (%(state)s::text IS NULL OR r.state = %(state)s)
   AND r.id < %(before)s
 ORDER BY r.id DESC
 LIMIT %(limit)s

-- name: workflow_digests_events
-- The events a fired digest holds: each collected trigger's data, in trigger order.
SELECT t.data
  FROM workflow_digests AS d
 CROSS JOIN LATERAL unnest(d.run_ids) WITH ORDINALITY AS x(run_id, n)
  JOIN workflow_runs AS r ON r.id = x.run_id
  JOIN workflow_triggers AS t ON t.id = r.trigger_id
 WHERE d.id = %(digest_id)s
 ORDER BY x.n

-- name: workflow_runs_claim_due
-- The advancing engine's claim: up to %(limit)s due waiting runs, oldest due first,
-- locked for this transaction (SKIP LOCKED: several workers share the work; a
-- worker that dies mid-batch releases its claim with its connection). A run
-- cancelled before this statement is no longer 'waiting' and is not claimed.
-- digest_count: for the run that delivers a fired digest, how many events it holds.
-- delivered_digest: that digest's id; templates: the template versions the trigger pinned;
-- topic: the trigger's topic (its members' mutes apply to the sends).
SELECT r.id, r.workflow_key, r.version, r.recipient, r.step, r.trigger_id, t.data, t.templates,
       t.topic,
       CASE WHEN d.run_id = r.id THEN cardinality(d.run_ids) END AS digest_count,
       CASE WHEN d.run_id = r.id THEN d.id END AS delivered_digest
  FROM workflow_runs AS r
  JOIN workflow_triggers AS t ON t.id = r.trigger_id
  LEFT JOIN workflow_digests AS d ON d.id = r.digest_id
 WHERE r.state = 'waiting'
   AND r.due_at <= now()
 ORDER BY r.due_at
 LIMIT %(limit)s
   FOR UPDATE OF r SKIP LOCKED

-- name: workflow_digests_events_many
-- For the runs about to send what their fired digest collected: each digest's first
-- %(max_events)s events (each trigger's data), in trigger order.
SELECT d.id AS digest_id,
       (SELECT jsonb_agg(t.data ORDER BY x.n)
          FROM unnest(d.run_ids[1:%(max_events)s]) WITH ORDINALITY AS x(run_id, n)
          JOIN workflow_runs AS r ON r.id = x.run_id
          JOIN workflow_triggers AS t ON t.id = r.trigger_id) AS events
  FROM workflow_digests AS d
 WHERE d.id = ANY(%(ids)s::bigint[])

-- name: workflow_versions_get_many
SELECT workflow_key, version, category, steps
  FROM workflow_versions
 WHERE (workflow_key, version) IN (SELECT * FROM unnest(%(keys)s::text[], %(versions)s::int[]))

-- name: workflow_runs_in_app_state
-- For runs about to check an `in_app` condition: the latest IN_APP delivery of the
-- notifications the run made, for its recipient, and whether every one of those
-- notifications has been routed yet (until then the item may not exist).
SELECT w.id AS run_id,
       NOT EXISTS (SELECT 1 FROM notifications AS n
                    WHERE n.id = ANY(w.notification_ids) AND n.routed_at IS NULL
                      AND n.status <> 'cancelled') AS routed,
       d.id AS delivery_id, d.read_at, d.seen_at, d.archived_at
  FROM workflow_runs AS w
  LEFT JOIN recipients AS rc ON rc.external_id = w.recipient
  LEFT JOIN LATERAL (
      SELECT d.id, d.read_at, d.seen_at, d.archived_at
        FROM deliveries AS d
       WHERE d.notification_id = ANY(w.notification_ids)
         AND d.recipient_id = rc.id
         AND d.channel = 'IN_APP'
       ORDER BY d.id DESC
       LIMIT 1) AS d ON true
 WHERE w.id = ANY(%(ids)s::bigint[])

-- name: workflow_runs_send
-- The notifications of a batch's send steps, one per group of runs whose message is
-- the same (so a topic's runs at one step make one notification per batch, not one
-- each), through enqueue_notification: routing applies preferences, quiet hours,
-- priorities, fallbacks and rate limits as for any notification. Same transaction
-- as the runs' advance: a crash leaves both undone, never a notification without
-- the advance (or the reverse). A templated step's notification carries the pinned
-- version and its data (the router and the deliver runs render it, as for any
-- templated notification); without a workflow category it takes the template's.
SELECT g.n, e.id
  FROM jsonb_to_recordset(%(groups)s::jsonb)
       AS g(n int, recipients jsonb, title text, body text, action_url text, metadata jsonb,
            channels jsonb, priority text, category text, fallback jsonb, template_key text,
            template_version int, template_data jsonb)
 CROSS JOIN LATERAL enqueue_notification(
       ARRAY(SELECT jsonb_array_elements_text(g.recipients)), NULL, g.title, coalesce(g.body, ''),
       g.action_url, g.metadata,
       CASE WHEN g.channels IS NOT NULL THEN ARRAY(SELECT jsonb_array_elements_text(g.channels)) END,
       g.priority,
       coalesce(g.category, (SELECT v.category FROM template_versions AS v
                              WHERE v.template_key = g.template_key
                                AND v.version = g.template_version)),
       g.fallback, NULL, NULL, NULL, NULL, NULL, interval '1 day', true,
       g.template_key, g.template_version, g.template_data) AS e

-- name: workflow_digests_join
-- Runs reaching a digest step join the open digest of their (workflow, version,
-- step, recipient, key), or open it: INSERT ... ON CONFLICT on the partial unique
-- index, so concurrent batches can never open two. A new event moves the due time
-- to now + window, never past max_due_at (first event + max_wait).
-- A step with "window": "preference" (window_s null) reads the recipient's digest
-- frequency for the workflow's category (else the step's default): the digest is
-- due at digest_due_at() (an hour on, or the next delivery hour in the recipient's
-- timezone), capped by max_wait when given, and that time is fixed (max_due_at).
-- Runs whose recipient chose "off" join nothing: they are answered, and go on.
WITH x AS (
    SELECT *
      FROM unnest(%(run_ids)s::bigint[], %(workflows)s::text[], %(versions)s::int[],
                  %(steps)s::int[], %(recipients)s::text[], %(keys)s::text[],
                  %(windows)s::float8[], %(max_waits)s::float8[], %(categories)s::text[],
                  %(defaults)s::jsonb[])
           AS x(run_id, workflow_key, version, step, recipient, digest_key, window_s, max_wait_s,
                category, default_setting)
),
p AS (
    SELECT x.run_id, x.workflow_key, x.version, x.step, x.recipient, x.digest_key,
           coalesce(now() + make_interval(secs => x.window_s), s.due_at) AS due_at,
           CASE WHEN x.window_s IS NOT NULL THEN now() + make_interval(secs => x.max_wait_s)
                ELSE s.due_at END AS max_due_at,
           x.window_s IS NULL AND s.setting ->> 'frequency' = 'off' AS off
      FROM x
      LEFT JOIN recipients AS rc ON x.window_s IS NULL AND rc.external_id = x.recipient
      LEFT JOIN digest_preferences AS dp
        ON dp.recipient_id = rc.id AND dp.category = x.category
     CROSS JOIN LATERAL (
         SELECT CASE WHEN dp.recipient_id IS NOT NULL
                     THEN jsonb_build_object('frequency', dp.frequency, 'hour', dp.hour,
                                             'weekday', dp.weekday)
                     ELSE x.default_setting END AS setting) AS c
     CROSS JOIN LATERAL (
         SELECT c.setting,
                least(digest_due_at(c.setting, rc.timezone, now()),
                      now() + make_interval(secs => x.max_wait_s)) AS due_at) AS s
),
g AS (
    SELECT workflow_key, version, step, recipient, digest_key, count(*) AS n,
           min(due_at) AS due_at, min(max_due_at) AS max_due_at
      FROM p
     WHERE NOT p.off
     GROUP BY 1, 2, 3, 4, 5
     ORDER BY 1, 2, 3, 4, 5
),
d AS (
    INSERT INTO workflow_digests AS d (workflow_key, version, step, recipient, digest_key, events,
                                       due_at, max_due_at)
    SELECT workflow_key, version, step, recipient, digest_key, n, due_at, max_due_at
      FROM g
        ON CONFLICT (workflow_key, version, step, recipient, digest_key) WHERE state = 'open'
        DO UPDATE SET events = d.events + excluded.events, last_event_at = now(),
                      due_at = least(excluded.due_at, d.max_due_at)
    RETURNING d.id, d.workflow_key, d.version, d.step, d.recipient, d.digest_key
),
joined AS (
    UPDATE workflow_runs AS r
       SET state = 'digesting', due_at = NULL, digest_id = d.id, updated_at = now()
      FROM p
      JOIN d USING (workflow_key, version, step, recipient, digest_key)
     WHERE r.id = p.run_id
)
SELECT run_id FROM p WHERE p.off

-- name: workflow_digests_claim_due
-- Due open digests, marked fired (their unique slot frees: the next event opens a
-- new digest), locked SKIP LOCKED so workers share them.
UPDATE workflow_digests AS d
   SET state = 'fired', fired_at = now()
 WHERE d.id IN (SELECT id FROM workflow_digests
                 WHERE state = 'open' AND due_at <= now()
                 ORDER BY due_at
                 LIMIT %(limit)s
                   FOR UPDATE SKIP LOCKED)
RETURNING d.id

-- name: workflow_digests_deliver
-- A fired digest's runs still digesting (locked first: a cancel committed before
-- wins, one committed after waits): the first goes on to the next step carrying the
-- digest, the others end done ('digested'). The digest records them in order.
WITH m AS (
    SELECT r.id, r.digest_id
      FROM workflow_runs AS r
     WHERE r.digest_id = ANY(%(ids)s::bigint[])
       AND r.state = 'digesting'
     ORDER BY r.id
       FOR UPDATE
),
agg AS (
    SELECT digest_id, array_agg(id ORDER BY id) AS ids FROM m GROUP BY digest_id
),
digests AS (
    UPDATE workflow_digests AS d
       SET run_ids = agg.ids, run_id = agg.ids[1], events = cardinality(agg.ids)
      FROM agg
     WHERE d.id = agg.digest_id
)
UPDATE workflow_runs AS r
   SET state = CASE WHEN r.id = agg.ids[1] THEN 'waiting' ELSE 'done' END,
       step = CASE WHEN r.id = agg.ids[1] THEN r.step + 1 ELSE r.step END,
       due_at = CASE WHEN r.id = agg.ids[1] THEN now() END,
       reason = CASE WHEN r.id = agg.ids[1] THEN NULL ELSE 'digested' END,
       finished_at = CASE WHEN r.id = agg.ids[1] THEN NULL ELSE now() END,
       updated_at = now()
  FROM agg
 WHERE r.digest_id = agg.digest_id
   AND r.id = ANY(agg.ids)

-- name: workflow_throttle_lock
-- Serialise throttle decisions per (workflow, step, recipient, key) for this
-- transaction, in one order (no deadlock between batches).
SELECT count(pg_advisory_xact_lock(h))
  FROM (SELECT DISTINCT hashtextextended(concat_ws(chr(31), w, s::text, r, k), 7415100016) AS h
          FROM unnest(%(workflows)s::text[], %(steps)s::int[], %(recipients)s::text[],
                      %(keys)s::text[]) AS x(w, s, r, k)
         ORDER BY h) AS locks

-- name: workflow_throttle_decide
-- Which runs pass their throttle step: within each (workflow, step, recipient,
-- key), in run order, while the passes of the last `per` stay under `limit`. The
-- passes are recorded in the same statement.
WITH x AS (
    SELECT *
      FROM unnest(%(run_ids)s::bigint[], %(workflows)s::text[], %(steps)s::int[],
                  %(recipients)s::text[], %(keys)s::text[], %(limits)s::int[], %(pers)s::float8[])
           AS x(run_id, workflow_key, step, recipient, throttle_key, lim, per_s)
),
ranked AS (
    SELECT x.*, row_number() OVER (PARTITION BY workflow_key, step, recipient, throttle_key
                                   ORDER BY run_id) AS rank
      FROM x
),
used AS (
    SELECT g.workflow_key, g.step, g.recipient, g.throttle_key,
           (SELECT count(*) FROM workflow_throttle_passes AS p
             WHERE p.workflow_key = g.workflow_key AND p.step = g.step
               AND p.recipient = g.recipient AND p.throttle_key = g.throttle_key
               AND p.passed_at > now() - make_interval(secs => g.per_s)) AS used
      FROM (SELECT DISTINCT workflow_key, step, recipient, throttle_key, per_s FROM x) AS g
),
decided AS (
    SELECT r.run_id, r.workflow_key, r.step, r.recipient, r.throttle_key, r.per_s,
           r.rank + u.used <= r.lim AS passes
      FROM ranked AS r
      JOIN used AS u USING (workflow_key, step, recipient, throttle_key)
),
passes AS (
    INSERT INTO workflow_throttle_passes (workflow_key, step, recipient, throttle_key, run_id, expires_at)
    SELECT workflow_key, step, recipient, throttle_key, run_id, now() + make_interval(secs => per_s)
      FROM decided
     WHERE passes
)
SELECT run_id, passes FROM decided

-- name: workflow_throttle_passes_purge
DELETE FROM workflow_throttle_passes
 WHERE ctid = ANY(ARRAY(SELECT ctid FROM workflow_throttle_passes
                         WHERE expires_at < now() LIMIT %(limit)s))

-- name: workflow_runs_advance
-- Every claimed run's outcome in one statement: its next step and state, when that
-- step is due, why it ended, and the notification its send step made.
UPDATE workflow_runs AS r
   SET step = x.step, state = x.state, due_at = x.due_at, reason = x.reason,
       notification_ids = CASE WHEN x.notification_id IS NULL THEN r.notification_ids
                               ELSE r.notification_ids || x.notification_id END,
       finished_at = CASE WHEN x.state IN ('done', 'failed', 'throttled') THEN now() END,
       updated_at = now()
  FROM unnest(%(ids)s::bigint[], %(steps)s::int[], %(states)s::text[],
              %(due_ats)s::timestamptz[], %(reasons)s::text[], %(notification_ids)s::uuid[])
       AS x(id, step, state, due_at, reason, notification_id)
 WHERE r.id = x.id
