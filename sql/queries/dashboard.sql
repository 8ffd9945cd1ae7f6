-- name: dashboard_sessions_insert
-- A signed-in admin's session (0019): only hashes are stored.
INSERT INTO dashboard_sessions (id_hash, key_hash, expires_at)
VALUES (%(id_hash)s, %(key_hash)s, now() + make_interval(secs => %(lifetime)s))

-- name: dashboard_sessions_find
-- The session behind a cookie, while neither its lifetime nor its idle time is over,
-- with the key that opened it when that key is an API key still active (NULL for the
-- bootstrap POSTBELL_ADMIN_KEY, or for a revoked key: the caller decides).
SELECT s.key_hash, s.last_seen_at < now() - interval '1 minute' AS stale, k.role
  FROM dashboard_sessions AS s
  LEFT JOIN api_keys AS k ON k.key_hash = s.key_hash AND k.revoked_at IS NULL
 WHERE s.id_hash = %(id_hash)s
   AND s.expires_at > now()
   AND s.last_seen_at > now() - make_interval(secs => %(idle)s)

-- name: dashboard_sessions_touch
-- At most once a minute per session (the find says when): no write per page view.
UPDATE dashboard_sessions SET last_seen_at = now() WHERE id_hash = %(id_hash)s

-- name: dashboard_sessions_delete
DELETE FROM dashboard_sessions WHERE id_hash = %(id_hash)s

-- name: dashboard_sessions_purge
-- Ended sessions, swept at each sign-in (an index on expires_at; idle ones by the
-- same sweep once their lifetime is over).
DELETE FROM dashboard_sessions WHERE expires_at < now()
