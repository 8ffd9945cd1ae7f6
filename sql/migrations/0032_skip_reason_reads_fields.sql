-- 0032: routing reads a recipient's address by its column, not through to_jsonb().
--
-- delivery_skip_reason() (0027) found the address a channel needs, and whether it
-- was marked inactive, with to_jsonb(recipient) ->> field: the whole row, with its
-- metadata, made into jsonb twice for every delivery of a channel with an address.
-- That was about 4 µs of a webhook delivery's ~37 µs of routing. The columns postbell's
-- channels name are now read directly. Any other field name still goes through
-- to_jsonb(), so the answers are the same for every field (NULL in the row and a JSON
-- null are both "none"). The function stays one RETURN expression with no sub-select,
-- so Postgres still inlines it (tests/integration/test_stable_plans.py).
CREATE OR REPLACE FUNCTION delivery_skip_reason(
    p_channel        text,
    p_configured     boolean,
    p_address_field  text,
    p_inactive_field text,
    p_expires_at     timestamptz,
    p_recipient      recipients,
    p_preferences    preferences,
    p_category       text,
    p_required       boolean,
    p_topic          text DEFAULT NULL
) RETURNS text
    LANGUAGE sql STABLE
    RETURN CASE
        WHEN p_expires_at <= now() THEN 'expired'
        WHEN p_configured IS NOT TRUE THEN 'channel_not_configured'
        WHEN p_required IS NOT TRUE
             AND ((p_preferences).channels ->> p_channel = 'false'
                  OR (p_preferences).categories -> p_category ->> p_channel = 'false'
                  OR (p_preferences).topics -> p_topic = 'false'
                  OR (p_preferences).topics -> p_topic ->> p_channel = 'false')
            THEN 'opted_out'
        WHEN p_address_field IS NULL THEN NULL
        WHEN p_address_field = '@devices' THEN
            CASE WHEN has_active_device((p_recipient).id) THEN NULL ELSE 'no_device' END
        WHEN CASE p_address_field
                 WHEN 'email' THEN (p_recipient).email IS NULL
                 WHEN 'phone' THEN (p_recipient).phone IS NULL
                 WHEN 'webhook_url' THEN (p_recipient).webhook_url IS NULL
                 WHEN 'slack_webhook_url' THEN (p_recipient).slack_webhook_url IS NULL
                 WHEN 'discord_webhook_url' THEN (p_recipient).discord_webhook_url IS NULL
                 WHEN 'teams_webhook_url' THEN (p_recipient).teams_webhook_url IS NULL
                 WHEN 'whatsapp' THEN (p_recipient).whatsapp IS NULL
                 WHEN 'telegram_chat_id' THEN (p_recipient).telegram_chat_id IS NULL
                 ELSE to_jsonb(p_recipient) ->> p_address_field IS NULL
             END THEN
            CASE WHEN category_address(p_category, p_address_field) THEN NULL ELSE 'no_address' END
        WHEN p_inactive_field IS NULL THEN NULL
        WHEN CASE p_inactive_field
                 WHEN 'email_inactive_at' THEN (p_recipient).email_inactive_at IS NOT NULL
                 WHEN 'phone_inactive_at' THEN (p_recipient).phone_inactive_at IS NOT NULL
                 WHEN 'whatsapp_inactive_at' THEN (p_recipient).whatsapp_inactive_at IS NOT NULL
                 WHEN 'telegram_inactive_at' THEN (p_recipient).telegram_inactive_at IS NOT NULL
                 ELSE to_jsonb(p_recipient) ->> p_inactive_field IS NOT NULL
             END THEN 'address_inactive'
    END;
