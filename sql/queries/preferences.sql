-- name: preferences_get
SELECT p.channels, p.categories, p.quiet_hours, p.updated_at
  FROM preferences AS p
  JOIN recipients AS r ON r.id = p.recipient_id
 WHERE r.external_id = %(external_id)s

-- name: preferences_put
-- A partial PUT: channel switches merge into the stored ones, category switches
-- merge per category, quiet_hours is replaced when named (null clears it).
INSERT INTO preferences AS p (recipient_id, channels, categories, quiet_hours)
SELECT r.id, coalesce(%(channels)s::jsonb, '{}'), coalesce(%(categories)s::jsonb, '{}'),
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
       quiet_hours = CASE WHEN %(quiet_hours_set)s THEN %(quiet_hours)s::jsonb ELSE p.quiet_hours END,
       updated_at = now()
RETURNING channels, categories, quiet_hours, updated_at
