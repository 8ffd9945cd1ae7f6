-- 0018: per-topic mutes ("mute this community"), and the index /metrics counts the
-- workflow runs that are not final with.
--
-- preferences.topics: per topic key, false (every channel muted) or per channel
-- switches ({"EMAIL": false}); true, or no entry, sends. A key need not name a topic
-- that exists yet: a member may mute a community before subscribing to it.
--
-- delivery_skip_reason() gains the topic the notification came through (its topic,
-- or a workflow trigger's topic for the notifications the trigger's runs make): a
-- muted topic, for all channels or this one, is 'opted_out' like a channel or
-- category switch, decided in the same place and order (so a muted member without an
-- address reads opted_out, not no_address), and ignored for required categories.
-- p_topic defaults to NULL so the callers that have no topic (send-time fallbacks of
-- a direct notification) keep their argument list.

-- (the function goes first: Postgres refuses to alter a row type a function uses)
DROP FUNCTION delivery_skip_reason(text, boolean, text, text, timestamptz, recipients,
                                   preferences, text, boolean);
ALTER TABLE preferences ADD COLUMN topics jsonb NOT NULL DEFAULT '{}';
CREATE FUNCTION delivery_skip_reason(
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
            CASE WHEN EXISTS (SELECT 1 FROM devices AS d
                               WHERE d.recipient_id = (p_recipient).id AND d.disabled_at IS NULL)
                 THEN NULL ELSE 'no_device' END
        WHEN to_jsonb(p_recipient) ->> p_address_field IS NULL THEN
            CASE WHEN category_address(p_category, p_address_field) THEN NULL ELSE 'no_address' END
        WHEN to_jsonb(p_recipient) ->> p_inactive_field IS NOT NULL THEN 'address_inactive'
    END;

-- /metrics' gauge of workflow runs waiting and digesting, per workflow: a count over
-- this index reads only the runs that are not final (never every run ever made).
CREATE INDEX workflow_runs_open_idx ON workflow_runs (workflow_key, state)
    WHERE state IN ('waiting', 'digesting');

-- A preferences PUT's topics (p_change) applied to the stored ones: per topic, true
-- or false replaces what was there, a map of channel switches merges into the stored
-- map (replacing a stored true/false), null forgets the topic. p_change NULL: the
-- PUT named no topics.
CREATE FUNCTION preferences_topics_merge(p_stored jsonb, p_change jsonb) RETURNS jsonb
    LANGUAGE sql IMMUTABLE
    RETURN CASE
        WHEN p_change IS NULL THEN p_stored
        ELSE (SELECT coalesce(jsonb_object_agg(m.k, m.v), '{}')
                FROM (SELECT k.k,
                             CASE WHEN NOT p_change ? k.k THEN p_stored -> k.k
                                  WHEN jsonb_typeof(p_change -> k.k) = 'object'
                                      THEN CASE WHEN jsonb_typeof(p_stored -> k.k) = 'object'
                                                THEN p_stored -> k.k ELSE '{}' END
                                           || (p_change -> k.k)
                                  ELSE p_change -> k.k
                             END AS v
                        FROM (SELECT jsonb_object_keys(p_stored)
                              UNION
                              SELECT jsonb_object_keys(p_change)) AS k(k)) AS m
               WHERE jsonb_typeof(m.v) <> 'null')
    END;
