-- name: recipients_get
SELECT external_id, email, phone, name, locale, timezone, webhook_url, slack_webhook_url,
       discord_webhook_url, whatsapp, telegram_chat_id, teams_webhook_url, metadata,
       email_inactive_at, phone_inactive_at, whatsapp_inactive_at, telegram_inactive_at,
       created_at, updated_at
  FROM recipients
 WHERE external_id = %(external_id)s

-- name: recipients_upsert
-- A PUT changes only the fields it names (the *_set flags); a field set to null is
-- cleared. A changed email, phone, WhatsApp number or Telegram chat forgets that the
-- old address stopped working.
INSERT INTO recipients AS r (external_id, email, phone, name, locale, timezone, webhook_url,
                             webhook_secret, slack_webhook_url, discord_webhook_url, whatsapp,
                             telegram_chat_id, teams_webhook_url, metadata)
VALUES (%(external_id)s, %(email)s, %(phone)s, %(name)s, %(locale)s, %(timezone)s,
        %(webhook_url)s, %(webhook_secret)s, %(slack_webhook_url)s, %(discord_webhook_url)s,
        %(whatsapp)s, %(telegram_chat_id)s, %(teams_webhook_url)s,
        coalesce(%(metadata)s::jsonb, '{}'))
ON CONFLICT (external_id) DO UPDATE SET
    email = CASE WHEN %(email_set)s THEN excluded.email ELSE r.email END,
    phone = CASE WHEN %(phone_set)s THEN excluded.phone ELSE r.phone END,
    name = CASE WHEN %(name_set)s THEN excluded.name ELSE r.name END,
    locale = CASE WHEN %(locale_set)s THEN excluded.locale ELSE r.locale END,
    timezone = CASE WHEN %(timezone_set)s THEN excluded.timezone ELSE r.timezone END,
    webhook_url = CASE WHEN %(webhook_url_set)s THEN excluded.webhook_url ELSE r.webhook_url END,
    webhook_secret = CASE WHEN %(webhook_secret_set)s THEN excluded.webhook_secret ELSE r.webhook_secret END,
    slack_webhook_url = CASE WHEN %(slack_webhook_url_set)s THEN excluded.slack_webhook_url ELSE r.slack_webhook_url END,
    discord_webhook_url = CASE WHEN %(discord_webhook_url_set)s THEN excluded.discord_webhook_url ELSE r.discord_webhook_url END,
    whatsapp = CASE WHEN %(whatsapp_set)s THEN excluded.whatsapp ELSE r.whatsapp END,
    telegram_chat_id = CASE WHEN %(telegram_chat_id_set)s THEN excluded.telegram_chat_id ELSE r.telegram_chat_id END,
    teams_webhook_url = CASE WHEN %(teams_webhook_url_set)s THEN excluded.teams_webhook_url ELSE r.teams_webhook_url END,
    metadata = CASE WHEN %(metadata_set)s THEN excluded.metadata ELSE r.metadata END,
    email_inactive_at = CASE WHEN %(email_set)s AND excluded.email IS DISTINCT FROM r.email
                             THEN NULL ELSE r.email_inactive_at END,
    phone_inactive_at = CASE WHEN %(phone_set)s AND excluded.phone IS DISTINCT FROM r.phone
                             THEN NULL ELSE r.phone_inactive_at END,
    whatsapp_inactive_at = CASE WHEN %(whatsapp_set)s AND excluded.whatsapp IS DISTINCT FROM r.whatsapp
                                THEN NULL ELSE r.whatsapp_inactive_at END,
    telegram_inactive_at = CASE WHEN %(telegram_chat_id_set)s
                                     AND excluded.telegram_chat_id IS DISTINCT FROM r.telegram_chat_id
                                THEN NULL ELSE r.telegram_inactive_at END,
    updated_at = now()
RETURNING external_id, email, phone, name, locale, timezone, webhook_url, slack_webhook_url,
          discord_webhook_url, whatsapp, telegram_chat_id, teams_webhook_url, metadata,
          email_inactive_at, phone_inactive_at, whatsapp_inactive_at, telegram_inactive_at,
          created_at, updated_at

-- name: recipients_delete
-- A recipient's deliveries go with it (deliveries carry no foreign keys; see 0002).
WITH r AS (DELETE FROM recipients WHERE external_id = %(external_id)s RETURNING id),
     d AS (DELETE FROM deliveries WHERE recipient_id IN (SELECT id FROM r) RETURNING 1)
SELECT (SELECT count(*) FROM r) AS recipients, (SELECT count(*) FROM d) AS deliveries

-- name: recipients_mark_inactive
-- A hard bounce, complaint, carrier opt-out or blocked bot: later deliveries to this
-- address are skipped (address_inactive) until the address changes. %(field)s is
-- the channel's inactive_field (registry.py); a name that is none of these columns
-- changes nothing. Only the address each delivery was sent to is marked: when the
-- recipient's %(address_field)s changed meanwhile, the new one stays active.
UPDATE recipients AS r
   SET email_inactive_at = CASE WHEN %(field)s = 'email_inactive_at'
                                THEN coalesce(r.email_inactive_at, now()) ELSE r.email_inactive_at END,
       phone_inactive_at = CASE WHEN %(field)s = 'phone_inactive_at'
                                THEN coalesce(r.phone_inactive_at, now()) ELSE r.phone_inactive_at END,
       whatsapp_inactive_at = CASE WHEN %(field)s = 'whatsapp_inactive_at'
                                   THEN coalesce(r.whatsapp_inactive_at, now()) ELSE r.whatsapp_inactive_at END,
       telegram_inactive_at = CASE WHEN %(field)s = 'telegram_inactive_at'
                                   THEN coalesce(r.telegram_inactive_at, now()) ELSE r.telegram_inactive_at END
  FROM deliveries AS d,
       unnest(%(delivery_ids)s::bigint[], %(addresses)s::text[]) AS u(id, address)
 WHERE d.id = u.id
   AND r.id = d.recipient_id
   AND (u.address IS NULL OR to_jsonb(r) ->> %(address_field)s::text = u.address)

-- name: recipients_bulk_create
-- The first half of a bulk upsert: the ids that do not exist yet, created bare, in
-- sorted order (concurrent bulk calls take the unique-index locks in one order, and
-- one naming an id another is creating waits for it instead of losing its fields).
INSERT INTO recipients (external_id)
SELECT x ->> 'external_id'
  FROM jsonb_array_elements(%(rows)s::jsonb) AS x
 ORDER BY 1
    ON CONFLICT (external_id) DO NOTHING
RETURNING external_id

-- name: recipients_bulk_update
-- The second half, in the same transaction: every row gets PUT's rule (a field named
-- in a row is set, null clears it, a field left out keeps its value). Rows are locked
-- in external_id order first, so two bulk calls on the same ids never deadlock.
WITH src AS (
    SELECT x AS doc, x ->> 'external_id' AS external_id
      FROM jsonb_array_elements(%(rows)s::jsonb) AS x
),
locked AS (
    SELECT r.id
      FROM recipients AS r
      JOIN src AS s ON s.external_id = r.external_id
     ORDER BY r.external_id
       FOR UPDATE OF r
)
UPDATE recipients AS r
   SET email = CASE WHEN s.doc ? 'email' THEN s.doc ->> 'email' ELSE r.email END,
       phone = CASE WHEN s.doc ? 'phone' THEN s.doc ->> 'phone' ELSE r.phone END,
       name = CASE WHEN s.doc ? 'name' THEN s.doc ->> 'name' ELSE r.name END,
       locale = CASE WHEN s.doc ? 'locale' THEN s.doc ->> 'locale' ELSE r.locale END,
       timezone = CASE WHEN s.doc ? 'timezone' THEN s.doc ->> 'timezone' ELSE r.timezone END,
       webhook_url = CASE WHEN s.doc ? 'webhook_url' THEN s.doc ->> 'webhook_url' ELSE r.webhook_url END,
       webhook_secret = CASE WHEN s.doc ? 'webhook_secret' THEN s.doc ->> 'webhook_secret'
                             ELSE r.webhook_secret END,
       slack_webhook_url = CASE WHEN s.doc ? 'slack_webhook_url' THEN s.doc ->> 'slack_webhook_url'
                                ELSE r.slack_webhook_url END,
       discord_webhook_url = CASE WHEN s.doc ? 'discord_webhook_url' THEN s.doc ->> 'discord_webhook_url'
                                  ELSE r.discord_webhook_url END,
       whatsapp = CASE WHEN s.doc ? 'whatsapp' THEN s.doc ->> 'whatsapp' ELSE r.whatsapp END,
       telegram_chat_id = CASE WHEN s.doc ? 'telegram_chat_id' THEN s.doc ->> 'telegram_chat_id'
                               ELSE r.telegram_chat_id END,
       teams_webhook_url = CASE WHEN s.doc ? 'teams_webhook_url' THEN s.doc ->> 'teams_webhook_url'
                                ELSE r.teams_webhook_url END,
       metadata = CASE WHEN s.doc ? 'metadata' THEN coalesce(nullif(s.doc -> 'metadata', 'null'), '{}')
                       ELSE r.metadata END,
       email_inactive_at = CASE WHEN s.doc ? 'email' AND s.doc ->> 'email' IS DISTINCT FROM r.email
                                THEN NULL ELSE r.email_inactive_at END,
       phone_inactive_at = CASE WHEN s.doc ? 'phone' AND s.doc ->> 'phone' IS DISTINCT FROM r.phone
                                THEN NULL ELSE r.phone_inactive_at END,
       whatsapp_inactive_at = CASE WHEN s.doc ? 'whatsapp' AND s.doc ->> 'whatsapp' IS DISTINCT FROM r.whatsapp
                                   THEN NULL ELSE r.whatsapp_inactive_at END,
       telegram_inactive_at = CASE WHEN s.doc ? 'telegram_chat_id'
                                        AND s.doc ->> 'telegram_chat_id' IS DISTINCT FROM r.telegram_chat_id
                                   THEN NULL ELSE r.telegram_inactive_at END,
       updated_at = now()
  FROM src AS s, locked AS l
 WHERE r.id = l.id AND r.external_id = s.external_id
