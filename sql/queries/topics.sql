-- name: topics_subscribe
-- Subscribe external ids to a topic in one statement; unknown recipients and an
-- unknown topic are created. Answers how many were newly subscribed.
WITH topic AS (
    INSERT INTO topics (key) VALUES (%(topic)s) ON CONFLICT (key) DO NOTHING
),
wanted AS (
    SELECT DISTINCT x AS external_id FROM unnest(%(external_ids)s::text[]) AS x
),
created AS (
    INSERT INTO recipients (external_id)
    SELECT external_id FROM wanted ORDER BY external_id
        ON CONFLICT (external_id) DO NOTHING
    RETURNING id
),
ids AS (
    SELECT r.id FROM recipients AS r JOIN wanted AS w ON w.external_id = r.external_id
    UNION
    SELECT id FROM created
),
added AS (
    INSERT INTO topic_subscribers (topic_key, recipient_id)
    SELECT %(topic)s, id FROM ids ORDER BY id
        ON CONFLICT DO NOTHING
    RETURNING 1
)
SELECT count(*) AS added FROM added

-- name: topics_unsubscribe
DELETE FROM topic_subscribers AS s
 USING recipients AS r
 WHERE s.topic_key = %(topic)s
   AND r.id = s.recipient_id
   AND r.external_id = ANY(%(external_ids)s::text[])

-- name: topics_subscribers_page
SELECT r.id, r.external_id, s.created_at
  FROM topic_subscribers AS s
  JOIN recipients AS r ON r.id = s.recipient_id
 WHERE s.topic_key = %(topic)s
   AND s.recipient_id > %(after)s
 ORDER BY s.recipient_id
 LIMIT %(limit)s

-- name: topics_count
SELECT (SELECT count(*) FROM topic_subscribers WHERE topic_key = %(topic)s) AS subscribers,
       EXISTS (SELECT 1 FROM topics WHERE key = %(topic)s) AS exists
