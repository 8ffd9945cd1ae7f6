-- 0010: four more channels (WHATSAPP, TELEGRAM, TEAMS, APPRISE) and SMS through SNS.
--
-- Recipients gain the new addresses and the times they stopped working; categories
-- gain what an operator sets per kind of notification (the Teams URL of a team's
-- channel, the Apprise URLs of an ops alert, the SMS type, a WhatsApp template).
-- channel_names() learns the new names (kept equal to app/core/channels.py).
--
-- delivery_skip_reason() keeps its rule with one addition: a channel's address is
-- the recipient's column named by the channel's address field, else the category's
-- column of that name (TEAMS: teams_webhook_url on either; APPRISE: apprise_urls on
-- the category only, as recipients have no such column). The category is looked up
-- only when the recipient has no address.

ALTER TABLE recipients
    ADD COLUMN whatsapp text,
    ADD COLUMN telegram_chat_id text,
    ADD COLUMN teams_webhook_url text,
    ADD COLUMN whatsapp_inactive_at timestamptz,
    ADD COLUMN telegram_inactive_at timestamptz;

ALTER TABLE categories
    ADD COLUMN teams_webhook_url text,
    -- Credentials live in these URLs: an admin key sets them, no answer shows them.
    ADD COLUMN apprise_urls text[] NOT NULL DEFAULT '{}',
    ADD COLUMN sms_type text CHECK (sms_type IN ('transactional', 'promotional')),
    ADD COLUMN whatsapp_content_sid text;

CREATE OR REPLACE FUNCTION channel_names() RETURNS text[]
    LANGUAGE sql IMMUTABLE
    SET search_path = pg_catalog
AS $$ SELECT ARRAY['IN_APP', 'EMAIL', 'PUSH', 'SMS', 'WEBHOOK', 'SLACK', 'DISCORD',
                   'WHATSAPP', 'TELEGRAM', 'TEAMS', 'APPRISE'] $$;

-- Whether category p_category holds a value in its column p_field (a non-empty one,
-- for an array): the category is then the address.
CREATE FUNCTION category_address(p_category text, p_field text) RETURNS boolean
    LANGUAGE sql STABLE
    RETURN EXISTS (SELECT 1
                     FROM categories AS k
                    WHERE k.key = p_category
                      AND coalesce(to_jsonb(k) -> p_field, 'null') NOT IN ('null', '[]', '""'));

CREATE OR REPLACE FUNCTION delivery_skip_reason(
    p_channel        text,
    p_configured     boolean,
    p_address_field  text,
    p_inactive_field text,
    p_expires_at     timestamptz,
    p_recipient      recipients,
    p_preferences    preferences,
    p_category       text,
    p_required       boolean
) RETURNS text
    LANGUAGE sql STABLE
    RETURN CASE
        WHEN p_expires_at <= now() THEN 'expired'
        WHEN p_configured IS NOT TRUE THEN 'channel_not_configured'
        WHEN p_required IS NOT TRUE
             AND ((p_preferences).channels ->> p_channel = 'false'
                  OR (p_preferences).categories -> p_category ->> p_channel = 'false')
            THEN 'opted_out'
        WHEN p_address_field IS NULL THEN NULL
        WHEN p_address_field = '@devices' THEN
            CASE WHEN EXISTS (SELECT 1 FROM devices AS d
                               WHERE d.recipient_id = (p_recipient).id AND d.disabled_at IS NULL)
                 THEN NULL ELSE 'no_device' END
        WHEN to_jsonb(p_recipient) ->> p_address_field IS NULL THEN
            CASE WHEN category_address(p_category, p_address_field) THEN NULL ELSE 'no_address' END
        WHEN to_jsonb(p_recipient) ->> p_inactive_field IS NOT NULL THEN 'address_inactive'
    END;
