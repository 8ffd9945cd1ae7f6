-- name: categories_list
SELECT key, name, description, default_channels, required, fallback, rate_limits, teams_webhook_url,
       apprise_urls, sms_type, whatsapp_content_sid, created_at, updated_at
  FROM categories
 ORDER BY key

-- name: categories_get
SELECT key, name, description, default_channels, required, fallback, rate_limits, teams_webhook_url,
       apprise_urls, sms_type, whatsapp_content_sid, created_at, updated_at
  FROM categories
 WHERE key = %(key)s

-- name: categories_put
-- Create or replace a category. Its Apprise URLs are write-only (no answer shows
-- them): a PUT that leaves them out (%(apprise_urls_set)s false) keeps them.
INSERT INTO categories AS c (key, name, description, default_channels, required, fallback, rate_limits,
                             teams_webhook_url, apprise_urls, sms_type, whatsapp_content_sid)
VALUES (%(key)s, %(name)s, %(description)s, %(default_channels)s::text[], %(required)s,
        %(fallback)s::jsonb, coalesce(%(rate_limits)s::jsonb, '{}'), %(teams_webhook_url)s,
        coalesce(%(apprise_urls)s::text[], '{}'), %(sms_type)s, %(whatsapp_content_sid)s)
    ON CONFLICT (key) DO UPDATE
   SET name = excluded.name, description = excluded.description,
       default_channels = excluded.default_channels, required = excluded.required,
       fallback = excluded.fallback, rate_limits = excluded.rate_limits,
       teams_webhook_url = excluded.teams_webhook_url,
       apprise_urls = CASE WHEN %(apprise_urls_set)s THEN excluded.apprise_urls ELSE c.apprise_urls END,
       sms_type = excluded.sms_type, whatsapp_content_sid = excluded.whatsapp_content_sid,
       updated_at = now()
RETURNING key, name, description, default_channels, required, fallback, rate_limits, teams_webhook_url,
          apprise_urls, sms_type, whatsapp_content_sid, created_at, updated_at
