-- 0025: group commit for the API. Concurrent POST /api/notifications requests are
-- written by one statement in one transaction (app/api/notifications/batches.py):
-- one WAL flush, one function call and one job insert for the lot instead of one of
-- each per request. Each item is checked on its own (an unknown category or topic
-- fails only its own request, answered by `error`); the others are written.
--
-- Items: [{"recipients": [...] | null, "topic", "title", "body", "action_url",
-- "metadata", "channels": [...] | null, "priority", "category", "fallback",
-- "send_at", "expires_at"}, ...] — what enqueue_notification() takes for a request
-- without an idempotency key, a template or an experiment (those keep that path: a
-- key may wait on another request's row lock, which must not hold up a batch).
-- Route jobs are deferred quietly (postbell.quiet_defer): the API's Waker wakes the
-- workers once after the commit.

CREATE FUNCTION enqueue_notifications(p_items jsonb)
    RETURNS TABLE(ord integer, id uuid, status text, error text)
    LANGUAGE plpgsql
    SET search_path = pg_catalog, postbell
AS $$
BEGIN
    PERFORM set_config('postbell.quiet_defer', 'on', true);
    RETURN QUERY
    WITH items AS (
        SELECT i.ord::integer AS ord, i.e, gen_random_uuid() AS id,
               (i.e ->> 'send_at')::timestamptz AS send_at,
               CASE WHEN jsonb_typeof(i.e -> 'recipients') = 'array'
                    THEN ARRAY(SELECT jsonb_array_elements_text(i.e -> 'recipients')) END
                   AS recipients,
               CASE WHEN jsonb_typeof(i.e -> 'channels') = 'array'
                    THEN ARRAY(SELECT jsonb_array_elements_text(i.e -> 'channels')) END
                   AS channels
          FROM jsonb_array_elements(p_items) WITH ORDINALITY AS i(e, ord)
    ),
    checked AS MATERIALIZED (
        SELECT items.*,
               CASE WHEN items.e ->> 'category' IS NOT NULL
                         AND NOT EXISTS (SELECT 1 FROM categories AS c
                                          WHERE c.key = items.e ->> 'category')
                    THEN 'unknown_category'
                    WHEN items.e ->> 'topic' IS NOT NULL
                         AND NOT EXISTS (SELECT 1 FROM topics AS t
                                          WHERE t.key = items.e ->> 'topic')
                    THEN 'unknown_topic' END AS error,
               CASE WHEN items.send_at > now() THEN 'scheduled' ELSE 'queued' END AS status,
               coalesce(items.e ->> 'priority', 'normal') AS priority
          FROM items
    ),
    written AS (
        INSERT INTO notifications AS n (
            id, status, priority, category, title, body, action_url, metadata, channels,
            recipients, topic, fallback, send_at, expires_at)
        SELECT c.id, c.status, c.priority, c.e ->> 'category', c.e ->> 'title',
               c.e ->> 'body', c.e ->> 'action_url',
               coalesce(nullif(c.e -> 'metadata', 'null'), '{}'), c.channels, c.recipients,
               c.e ->> 'topic', nullif(c.e -> 'fallback', 'null'), c.send_at,
               (c.e ->> 'expires_at')::timestamptz
          FROM checked AS c
         WHERE c.error IS NULL
         ORDER BY c.ord
        RETURNING n.id
    ),
    jobs AS (
        SELECT procrastinate_defer_jobs_v1(ARRAY(
                   SELECT route_job(c.id, c.priority,
                                    CASE WHEN c.status = 'scheduled' THEN c.send_at END)
                     FROM checked AS c JOIN written AS w ON w.id = c.id
                    ORDER BY c.ord)) AS job_ids
    )
    SELECT c.ord, CASE WHEN c.error IS NULL THEN c.id END, c.status, c.error
      FROM checked AS c CROSS JOIN jobs
     ORDER BY c.ord;
    PERFORM set_config('postbell.quiet_defer', 'off', true);
END;
$$;
