-- name: preferences_get
SELECT p.channels, p.categories, p.topics, p.quiet_hours, p.updated_at,
       (SELECT coalesce(jsonb_object_agg(d.category, jsonb_build_object(
                   'frequency', d.frequency, 'hour', d.hour, 'weekday', d.weekday)), '{}')
          FROM digest_preferences AS d WHERE d.recipient_id = r.id) AS digest
  FROM preferences AS p
  JOIN recipients AS r ON r.id = p.recipient_id
 WHERE r.external_id = %(external_id)s

-- name: digest_preferences_get
SELECT coalesce(jsonb_object_agg(d.category, jsonb_build_object(
           'frequency', d.frequency, 'hour', d.hour, 'weekday', d.weekday)), '{}') AS digest
  FROM digest_preferences AS d
  JOIN recipients AS r ON r.id = d.recipient_id
 WHERE r.external_id = %(external_id)s

-- name: digest_preferences_put
-- A partial PUT of the digest frequencies: each named category's setting replaces
-- the stored one; a null one is removed (back to the workflow step's default).
WITH x AS (
    SELECT r.id AS recipient_id, x.category, x.setting
      FROM recipients AS r
     CROSS JOIN unnest(%(categories)s::text[], %(settings)s::jsonb[]) AS x(category, setting)
     WHERE r.external_id = %(external_id)s
),
cleared AS (
    DELETE FROM digest_preferences AS d
     USING x
     WHERE d.recipient_id = x.recipient_id AND d.category = x.category AND x.setting IS NULL
)
INSERT INTO digest_preferences AS d (recipient_id, category, frequency, hour, weekday)
SELECT recipient_id, category, setting ->> 'frequency', (setting ->> 'hour')::int,
       setting ->> 'weekday'
  FROM x
 WHERE setting IS NOT NULL
    ON CONFLICT (recipient_id, category) DO UPDATE
   SET frequency = excluded.frequency, hour = excluded.hour, weekday = excluded.weekday,
       updated_at = now()

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
