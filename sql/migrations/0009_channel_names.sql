-- 0009: the channel names SQL knows, in one function.
--
-- postbell.notify() checks channel names in SQL; the list lives in channel_names(),
-- kept equal to app/core/channels.py CHANNELS (a test holds them together). A new
-- channel's migration redefines this function and nothing else.

CREATE FUNCTION channel_names() RETURNS text[]
    LANGUAGE sql IMMUTABLE
    SET search_path = pg_catalog
AS $$ SELECT ARRAY['IN_APP', 'EMAIL', 'PUSH', 'SMS', 'WEBHOOK', 'SLACK', 'DISCORD'] $$;

CREATE OR REPLACE FUNCTION notify(
    recipients      text[],
    body            jsonb,
    channels        text[] DEFAULT NULL,
    priority        text DEFAULT 'normal',
    category        text DEFAULT NULL,
    send_at         timestamptz DEFAULT NULL,
    idempotency_key text DEFAULT NULL
) RETURNS uuid
    LANGUAGE plpgsql
    SET search_path = pg_catalog, postbell
AS $$
DECLARE
    v_text     text := coalesce(body ->> 'message', body ->> 'body');
    v_unknown  text;
    v_hash     bytea;
    v_result   record;
    v_expires  timestamptz;
BEGIN
    IF recipients IS NULL OR cardinality(recipients) = 0 THEN
        RAISE EXCEPTION 'postbell.notify: recipients must name at least one recipient'
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF cardinality(recipients) > 10000 THEN
        RAISE EXCEPTION 'postbell.notify: at most 10000 recipients per call'
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF EXISTS (SELECT 1 FROM unnest(recipients) AS r WHERE r IS NULL OR r = '' OR length(r) > 255) THEN
        RAISE EXCEPTION 'postbell.notify: recipient ids must be 1 to 255 characters'
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF EXISTS (SELECT 1 FROM unnest(recipients) AS r WHERE r ~ '[[:cntrl:]]') THEN
        RAISE EXCEPTION 'postbell.notify: recipient ids may not hold control characters'
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF body IS NULL OR jsonb_typeof(body) <> 'object' THEN
        RAISE EXCEPTION 'postbell.notify: body must be a JSON object'
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF v_text IS NULL OR btrim(v_text) = '' THEN
        RAISE EXCEPTION 'postbell.notify: body needs "message" (or "body")'
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF length(v_text) > 20000 OR length(coalesce(body ->> 'title', '')) > 300 THEN
        RAISE EXCEPTION 'postbell.notify: message over 20000 or title over 300 characters'
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    -- One-line fields: a line break in a title would reach an email header.
    IF coalesce(body ->> 'title', '') ~ '[[:cntrl:]]' OR coalesce(body ->> 'action_url', '') ~ '[[:cntrl:]]' THEN
        RAISE EXCEPTION 'postbell.notify: title and action_url may not hold control characters'
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    BEGIN
        v_expires := (body ->> 'expires_at')::timestamptz;
    EXCEPTION WHEN others THEN
        RAISE EXCEPTION 'postbell.notify: expires_at is not a time (give RFC 3339 with an offset)'
            USING ERRCODE = 'invalid_parameter_value';
    END;
    IF send_at > now() + interval '3650 days' OR v_expires > now() + interval '3650 days' THEN
        RAISE EXCEPTION 'postbell.notify: send_at and expires_at must be within ten years'
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF v_expires IS NOT NULL AND v_expires <= coalesce(send_at, now()) THEN
        RAISE EXCEPTION 'postbell.notify: expires_at must be after the send time'
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    SELECT c INTO v_unknown FROM unnest(channels) AS c
     WHERE c <> ALL (channel_names()) LIMIT 1;
    IF v_unknown IS NOT NULL OR cardinality(channels) = 0 THEN
        RAISE EXCEPTION 'postbell.notify: unknown channel %', coalesce(v_unknown, '(empty list)')
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF coalesce(priority, 'normal') NOT IN ('low', 'normal', 'high', 'urgent') THEN
        RAISE EXCEPTION 'postbell.notify: priority must be low, normal, high or urgent'
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF category IS NOT NULL AND NOT EXISTS (SELECT 1 FROM categories AS k WHERE k.key = category) THEN
        RAISE EXCEPTION 'postbell.notify: unknown category %', category
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF send_at IS NOT NULL AND send_at <= now() THEN
        RAISE EXCEPTION 'postbell.notify: send_at is in the past'
            USING ERRCODE = 'invalid_parameter_value';
    END IF;

    v_hash := sha256(convert_to(jsonb_build_array(recipients, body, channels, priority, category,
                                                  send_at)::text, 'UTF8'));
    SELECT * INTO v_result
      FROM enqueue_notification(
               (SELECT array_agg(DISTINCT r) FROM unnest(recipients) AS r), NULL,
               body ->> 'title', v_text, body ->> 'action_url', body -> 'metadata',
               (SELECT array_agg(DISTINCT c) FROM unnest(channels) AS c), coalesce(priority, 'normal'),
               category, body -> 'fallback', send_at, v_expires,
               CASE WHEN idempotency_key IS NOT NULL THEN 'sql' END, idempotency_key,
               CASE WHEN idempotency_key IS NOT NULL THEN v_hash END, interval '24 hours');
    IF NOT v_result.created AND v_result.request_hash IS DISTINCT FROM v_hash THEN
        RAISE EXCEPTION 'postbell.notify: idempotency key % was used with other arguments', idempotency_key
            USING ERRCODE = 'unique_violation';
    END IF;
    RETURN v_result.id;
END;
$$;
