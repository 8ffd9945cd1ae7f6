-- name: preferences_get
SELECT p.channels, p.categories, p.topics, p.quiet_hours, p.updated_at
  FROM preferences AS p
  JOIN recipients AS r ON r.id = p.recipient_id
 WHERE r.external_id = %(external_id)s

-- name: preferences_put
-- A partial PUT: channel switches merge into the stored ones, category switches
-- merge per category, quiet_hours is replaced when named (null clears it). Topics
-- (preferences_topics_merge): per topic, a true/false replaces what was there, a map
-- of channel switches merges into the stored one, null forgets the topic.
INSERT INTO preferences AS p (recipient_id, channels, categories, topics, quiet_hours)
SELECT r.id, coalesce(%(channels)s::jsonb, '{}'), coalesce(%(categories)s::jsonb, '{}'),
       preferences_topics_merge('{}', %(topics)s::jsonb),
       CASE WHEN %(quiet_hours_set)s THEN %(quiet_hours)s::jsonb END
  FROM recipients AS r
 WHERE r.external_id = %(external_id)s
    ON CONFLICT (recipient_id) DO UPDATE
   SET channels = p.channels || coalesce(%(channels)s::jsonb, '{}'),
       categories = (SELECT coalesce(jsonb_object_agg(k, coalesce(p.categories -> k, '{}')
                                                        || coalesce(%(categories)s::jsonb -> k, '{}')),
                                     '{}')
                       FROM (SELECT jsonb_object_keys(p.categories) AS k
                             UNION
                             SELECT jsonb_object_keys(coalesce(%(categories)s::jsonb, '{}'))) AS keys),
       topics = preferences_topics_merge(p.topics, %(topics)s::jsonb),
       quiet_hours = CASE WHEN %(quiet_hours_set)s THEN %(quiet_hours)s::jsonb ELSE p.quiet_hours END,
       updated_at = now()
RETURNING channels, categories, topics, quiet_hours, updated_at
