-- 0011: templates per channel x locale, versioned.
--
-- A template's versions are immutable rows of template_versions; templates holds
-- which one is active (PUT makes a new one active, activate rolls back). A deleted
-- template keeps its versions (deleted_at): notifications already accepted still
-- render with the version they pinned, and a later PUT of the key continues its
-- numbering, so (key, version) never means two things.
--
-- A notification names its template, the pinned version and its data. Its IN_APP
-- content is rendered by the router: once per template locale into
-- notifications.rendered ({"default": "en", "locales": {"de": {...}, ...}}) when it
-- shows nothing of the recipient, else per recipient into deliveries.content.
-- inbox_content() picks what a recipient's inbox shows (the fallback chain in SQL).
--
-- enqueue_notification() takes the template, its version and data; notify() accepts
-- {"template": ..., "data": ...} as its body (same signature as before).

CREATE TABLE templates (
    key            text PRIMARY KEY CHECK (key ~ '^[A-Za-z0-9][A-Za-z0-9._:-]*$' AND length(key) <= 100),
    active_version integer NOT NULL,
    latest_version integer NOT NULL,
    created_at     timestamptz NOT NULL DEFAULT now(),
    updated_at     timestamptz NOT NULL DEFAULT now(),
    deleted_at     timestamptz
);

CREATE TABLE template_versions (
    template_key      text NOT NULL REFERENCES templates (key),
    version           integer NOT NULL,
    category          text,
    description       text,
    default_locale    text NOT NULL,
    example_data      jsonb NOT NULL DEFAULT '{}',
    example_recipient jsonb,
    locales           jsonb NOT NULL,
    required_data     text[] NOT NULL DEFAULT '{}',
    created_at        timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (template_key, version)
);

ALTER TABLE notifications
    ADD COLUMN template_key text,
    ADD COLUMN template_version integer,
    ADD COLUMN template_data jsonb,
    ADD COLUMN rendered jsonb;
-- NOT VALID: the rows before this migration have no template (nothing to check).
ALTER TABLE notifications ADD CONSTRAINT notifications_template_fkey
    FOREIGN KEY (template_key, template_version) REFERENCES template_versions (template_key, version)
    NOT VALID;
-- DELETE /api/templates/{key} asks whether a scheduled notification uses the key.
CREATE INDEX notifications_template_scheduled_idx ON notifications (template_key)
    WHERE status = 'scheduled' AND template_key IS NOT NULL;

ALTER TABLE deliveries ADD COLUMN content jsonb;

-- What an inbox item shows of a templated notification: the delivery's own content
-- (rendered per recipient), else the notification's render for the recipient's
-- locale through the fallback chain (de-AT -> de -> the template's default).
CREATE FUNCTION inbox_content(p_content jsonb, p_rendered jsonb, p_locale text) RETURNS jsonb
    LANGUAGE sql IMMUTABLE PARALLEL SAFE
    SET search_path = pg_catalog
RETURN coalesce(
    p_content,
    p_rendered -> 'locales' -> lower(replace(p_locale, '_', '-')),
    p_rendered -> 'locales' -> regexp_replace(lower(replace(p_locale, '_', '-')), '-[^-]*$', ''),
    p_rendered -> 'locales' -> split_part(lower(replace(p_locale, '_', '-')), '-', 1),
    p_rendered -> 'locales' -> (p_rendered ->> 'default'));

DROP FUNCTION enqueue_notification(text[], text, text, text, text, jsonb, text[], text, text, jsonb,
                                   timestamptz, timestamptz, text, text, bytea, interval, boolean);

CREATE FUNCTION enqueue_notification(
    p_recipients text[], p_topic text, p_title text, p_body text, p_action_url text,
    p_metadata jsonb, p_channels text[], p_priority text, p_category text, p_fallback jsonb,
    p_send_at timestamptz, p_expires_at timestamptz, p_idempotency_scope text,
    p_idempotency_key text, p_request_hash bytea, p_idempotency_ttl interval,
    p_wakeup boolean DEFAULT true, p_template_key text DEFAULT NULL,
    p_template_version integer DEFAULT NULL, p_template_data jsonb DEFAULT NULL)
    RETURNS TABLE(id uuid, status text, created boolean, request_hash bytea)
    LANGUAGE plpgsql
    SET search_path = pg_catalog, postbell
AS $$
DECLARE
    v_id     uuid;
    v_status text := CASE WHEN p_send_at > now() THEN 'scheduled' ELSE 'queued' END;
BEGIN
    IF p_idempotency_key IS NOT NULL THEN
        -- A key past its time to live is forgotten, so it can start a new notification.
        UPDATE notifications AS n
           SET idempotency_key = NULL, idempotency_scope = NULL
         WHERE n.idempotency_scope = p_idempotency_scope
           AND n.idempotency_key = p_idempotency_key
           AND n.created_at < now() - p_idempotency_ttl;
    END IF;

    INSERT INTO notifications AS n (
        status, priority, category, title, body, action_url, metadata, channels,
        recipients, topic, fallback, send_at, expires_at,
        idempotency_scope, idempotency_key, request_hash,
        template_key, template_version, template_data)
    VALUES (
        v_status, coalesce(p_priority, 'normal'), p_category, p_title, p_body, p_action_url,
        coalesce(p_metadata, '{}'), p_channels, p_recipients, p_topic, p_fallback,
        p_send_at, p_expires_at, p_idempotency_scope, p_idempotency_key, p_request_hash,
        p_template_key, p_template_version,
        CASE WHEN p_template_key IS NOT NULL THEN coalesce(p_template_data, '{}') END)
    ON CONFLICT (idempotency_scope, idempotency_key) WHERE idempotency_key IS NOT NULL
    DO NOTHING
    RETURNING n.id INTO v_id;

    IF v_id IS NULL THEN
        RETURN QUERY
            SELECT n.id, n.status, false, n.request_hash
              FROM notifications n
             WHERE n.idempotency_scope = p_idempotency_scope
               AND n.idempotency_key = p_idempotency_key;
        RETURN;
    END IF;

    IF NOT p_wakeup THEN
        PERFORM set_config('postbell.quiet_defer', 'on', true);
    END IF;
    PERFORM procrastinate_defer_jobs_v1(ARRAY[
        route_job(v_id, coalesce(p_priority, 'normal'), CASE WHEN v_status = 'scheduled' THEN p_send_at END)
    ]);
    IF NOT p_wakeup THEN
        PERFORM set_config('postbell.quiet_defer', 'off', true);
    END IF;
    RETURN QUERY SELECT v_id, v_status, true, p_request_hash;
END;
$$;

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
    v_template text := body ->> 'template';
    v_text     text := coalesce(body ->> 'message', body ->> 'body');
    v_unknown  text;
    v_hash     bytea;
    v_result   record;
    v_expires  timestamptz;
    v_version  record;
    v_pinned   integer;
    v_missing  text;
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
    IF v_template IS NOT NULL THEN
        -- A template: its text comes from the active version, pinned here.
        IF body ?| ARRAY['message', 'body', 'title', 'action_url'] THEN
            RAISE EXCEPTION 'postbell.notify: give either "template" or message fields, not both'
                USING ERRCODE = 'invalid_parameter_value';
        END IF;
        IF body ? 'data' AND jsonb_typeof(body -> 'data') <> 'object' THEN
            RAISE EXCEPTION 'postbell.notify: "data" must be a JSON object'
                USING ERRCODE = 'invalid_parameter_value';
        END IF;
        SELECT v.version, v.required_data, v.category INTO v_version
          FROM templates AS t
          JOIN template_versions AS v ON v.template_key = t.key AND v.version = t.active_version
         WHERE t.key = v_template AND t.deleted_at IS NULL
           FOR SHARE OF t;
        IF NOT FOUND THEN
            RAISE EXCEPTION 'postbell.notify: unknown template %', v_template
                USING ERRCODE = 'invalid_parameter_value';
        END IF;
        SELECT k INTO v_missing FROM unnest(v_version.required_data) AS k
         WHERE NOT coalesce(body -> 'data', '{}') ? k ORDER BY k LIMIT 1;
        IF v_missing IS NOT NULL THEN
            RAISE EXCEPTION 'postbell.notify: data lacks "%", which template % requires', v_missing, v_template
                USING ERRCODE = 'invalid_parameter_value';
        END IF;
        v_text := '';
        v_pinned := v_version.version;
        category := coalesce(category, v_version.category);
    ELSE
        IF v_text IS NULL OR btrim(v_text) = '' THEN
            RAISE EXCEPTION 'postbell.notify: body needs "message" (or "body", or "template")'
                USING ERRCODE = 'invalid_parameter_value';
        END IF;
    END IF;
    IF length(v_text) > 20000 OR length(coalesce(body ->> 'title', '')) > 300 THEN
        RAISE EXCEPTION 'postbell.notify: message over 20000 or title over 300 characters'
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF length(coalesce((body -> 'data')::text, '')) > 65536 THEN
        RAISE EXCEPTION 'postbell.notify: data over 65536 bytes'
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
               CASE WHEN idempotency_key IS NOT NULL THEN v_hash END, interval '24 hours',
               true, v_template, v_pinned,
               CASE WHEN v_template IS NOT NULL THEN coalesce(body -> 'data', '{}') END);
    IF NOT v_result.created AND v_result.request_hash IS DISTINCT FROM v_hash THEN
        RAISE EXCEPTION 'postbell.notify: idempotency key % was used with other arguments', idempotency_key
            USING ERRCODE = 'unique_violation';
    END IF;
    RETURN v_result.id;
END;
$$;
