-- name: api_keys_find
SELECT id, role FROM api_keys WHERE key_hash = %(key_hash)s AND revoked_at IS NULL

-- name: api_keys_touch
UPDATE api_keys SET last_used_at = now()
 WHERE id = %(id)s AND (last_used_at IS NULL OR last_used_at < now() - interval '1 minute')

-- name: api_keys_insert
INSERT INTO api_keys (key_hash, prefix, name, role)
VALUES (%(key_hash)s, %(prefix)s, %(name)s, %(role)s)
ON CONFLICT (key_hash) DO UPDATE SET revoked_at = NULL
RETURNING id

-- name: api_keys_list
SELECT id, prefix, name, role, created_at, last_used_at, revoked_at FROM api_keys ORDER BY id

-- name: api_keys_revoke
UPDATE api_keys SET revoked_at = now() WHERE id = %(id)s AND revoked_at IS NULL
