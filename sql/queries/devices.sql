-- name: devices_ensure_recipient
INSERT INTO recipients (external_id) VALUES (%(external_id)s) ON CONFLICT (external_id) DO NOTHING

-- name: devices_register
-- A token registered again (the app reinstalled, another user signed in on the
-- phone) moves to this recipient and is active again.
INSERT INTO devices (recipient_id, token, platform)
SELECT id, %(token)s, %(platform)s FROM recipients WHERE external_id = %(external_id)s
    ON CONFLICT (token) DO UPDATE
   SET recipient_id = excluded.recipient_id, platform = excluded.platform, last_seen_at = now(),
       disabled_at = NULL, disabled_reason = NULL
RETURNING token, platform, created_at, last_seen_at, disabled_at, disabled_reason

-- name: devices_list
SELECT v.token, v.platform, v.created_at, v.last_seen_at, v.disabled_at, v.disabled_reason
  FROM devices AS v
  JOIN recipients AS r ON r.id = v.recipient_id
 WHERE r.external_id = %(external_id)s
 ORDER BY v.id

-- name: devices_delete
DELETE FROM devices AS v
 USING recipients AS r
 WHERE r.id = v.recipient_id AND r.external_id = %(external_id)s AND v.token = %(token)s
