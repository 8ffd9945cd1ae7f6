-- name: categories_list
SELECT key, name, description, default_channels, required, fallback, rate_limits, created_at, updated_at
  FROM categories
 ORDER BY key

-- name: categories_get
SELECT key, name, description, default_channels, required, fallback, rate_limits, created_at, updated_at
  FROM categories
 WHERE key = %(key)s

-- name: categories_put
INSERT INTO categories AS c (key, name, description, default_channels, required, fallback, rate_limits)
VALUES (%(key)s, %(name)s, %(description)s, %(default_channels)s::text[], %(required)s,
        %(fallback)s::jsonb, coalesce(%(rate_limits)s::jsonb, '{}'))
    ON CONFLICT (key) DO UPDATE
   SET name = excluded.name, description = excluded.description,
       default_channels = excluded.default_channels, required = excluded.required,
       fallback = excluded.fallback, rate_limits = excluded.rate_limits, updated_at = now()
RETURNING key, name, description, default_channels, required, fallback, rate_limits, created_at, updated_at
