-- 0027: routing decides a delivery inline, not by a function call per row.
--
-- delivery_skip_reason() (0018) is a one-expression SQL function, which Postgres
-- inlines into the query that calls it, except that its body held a sub-select (the
-- active-device check of a push delivery): a function with one is never inlined, so
-- it ran through the SQL function executor once per target x channel. In a topic
-- chunk of 50,000 IN_APP deliveries that call was the largest single cost: ~0.9 s of
-- the chunk's ~1.9 s (EXPLAIN ANALYZE of route_deliveries on 200,000 members), for
-- a handful of jsonb lookups.
--
-- The device check moves into has_active_device(), which is reached only for a
-- channel whose address is '@devices'. delivery_skip_reason() keeps its arguments
-- and its answers, and is inlined again (tests/integration/test_stable_plans.py
-- checks that no plan calls it). It must stay a single RETURN expression with no
-- sub-select, no SET clause and no volatile call, or it stops being inlined.

CREATE FUNCTION has_active_device(p_recipient_id bigint) RETURNS boolean
    LANGUAGE sql STABLE
    SET search_path = pg_catalog, postbell
    RETURN EXISTS (SELECT 1 FROM devices AS d
                    WHERE d.recipient_id = p_recipient_id AND d.disabled_at IS NULL);

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
        WHEN to_jsonb(p_recipient) ->> p_address_field IS NULL THEN
            CASE WHEN category_address(p_category, p_address_field) THEN NULL ELSE 'no_address' END
        WHEN to_jsonb(p_recipient) ->> p_inactive_field IS NOT NULL THEN 'address_inactive'
    END;
