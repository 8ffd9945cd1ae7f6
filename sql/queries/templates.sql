-- name: templates_put
-- A new version of the template, made active. A deleted template's key continues
-- its numbering (its old versions stay: notifications pinned them).
WITH t AS (
    INSERT INTO templates AS t (key, active_version, latest_version)
    VALUES (%(key)s, 1, 1)
    ON CONFLICT (key) DO UPDATE
       SET latest_version = t.latest_version + 1,
           active_version = t.latest_version + 1,
           deleted_at = NULL,
           updated_at = now()
    RETURNING t.key, t.latest_version, t.created_at, t.updated_at
)
INSERT INTO template_versions AS v (template_key, version, category, description, default_locale,
                                    example_data, example_recipient, locales, required_data)
SELECT t.key, t.latest_version, %(category)s, %(description)s, %(default_locale)s,
       %(example_data)s::jsonb, %(example_recipient)s::jsonb, %(locales)s::jsonb,
       %(required_data)s::text[]
  FROM t
RETURNING v.template_key AS key, v.version, v.version AS active_version, v.category,
          v.description, v.default_locale, v.example_data, v.example_recipient, v.locales,
          v.required_data, v.created_at,
          (SELECT created_at FROM t) AS template_created_at,
          (SELECT latest_version FROM t) AS latest_version

-- name: templates_get
-- One version of a live template: the given one, else the active one. FOR SHARE
-- when a notification pins it (a concurrent DELETE waits for the commit).
SELECT v.template_key AS key, v.version, t.active_version, t.latest_version, v.category,
       v.description, v.default_locale, v.example_data, v.example_recipient, v.locales,
       v.required_data, v.created_at, t.created_at AS template_created_at
  FROM templates AS t
  JOIN template_versions AS v
    ON v.template_key = t.key AND v.version = coalesce(%(version)s::integer, t.active_version)
 WHERE t.key = %(key)s
   AND t.deleted_at IS NULL

-- name: templates_list
SELECT t.key, t.active_version AS version, t.latest_version, v.category, v.description,
       v.default_locale, ARRAY(SELECT jsonb_object_keys(v.locales) ORDER BY 1) AS locales,
       v.required_data, t.created_at, t.updated_at
  FROM templates AS t
  JOIN template_versions AS v ON v.template_key = t.key AND v.version = t.active_version
 WHERE t.deleted_at IS NULL
   AND t.key > %(after)s
 ORDER BY t.key
 LIMIT %(limit)s

-- name: templates_versions
SELECT v.version, v.version = t.active_version AS active, v.category, v.default_locale,
       ARRAY(SELECT jsonb_object_keys(v.locales) ORDER BY 1) AS locales, v.required_data,
       v.created_at
  FROM templates AS t
  JOIN template_versions AS v ON v.template_key = t.key
 WHERE t.key = %(key)s
   AND t.deleted_at IS NULL
   AND v.version < %(before)s
 ORDER BY v.version DESC
 LIMIT %(limit)s

-- name: templates_activate
UPDATE templates AS t
   SET active_version = %(version)s, updated_at = now()
 WHERE t.key = %(key)s
   AND t.deleted_at IS NULL
   AND EXISTS (SELECT 1 FROM template_versions AS v
                WHERE v.template_key = t.key AND v.version = %(version)s)
RETURNING t.key

-- name: templates_lock
SELECT key FROM templates WHERE key = %(key)s AND deleted_at IS NULL FOR UPDATE

-- name: templates_scheduled_use
-- A scheduled notification that will render this template (DELETE refuses then).
SELECT id FROM notifications
 WHERE template_key = %(key)s AND status = 'scheduled'
UNION ALL
-- or whose experiment has a variant naming it (0022)
SELECT id FROM notifications
 WHERE experiment IS NOT NULL AND status = 'scheduled'
   AND variants @> jsonb_build_array(jsonb_build_object('template', %(key)s::text))
 LIMIT 1

-- name: templates_workflow_use
-- A workflow whose current version names this template (DELETE refuses then: its
-- next trigger could not pin it). Runs in flight keep their pinned version.
SELECT w.key FROM workflows AS w
  JOIN workflow_versions AS v ON v.workflow_key = w.key AND v.version = w.version
 WHERE v.steps @> jsonb_build_array(jsonb_build_object('template', %(key)s::text))
    OR v.steps @> jsonb_build_array(jsonb_build_object(
           'variants', jsonb_build_array(jsonb_build_object('template', %(key)s::text))))
 LIMIT 1

-- name: templates_delete
UPDATE templates SET deleted_at = now(), updated_at = now()
 WHERE key = %(key)s AND deleted_at IS NULL

-- name: templates_recipient
-- The recipient a preview renders for.
SELECT external_id, name, email, locale, timezone, metadata
  FROM recipients
 WHERE external_id = %(external_id)s

-- name: templates_category_exists
SELECT EXISTS (SELECT 1 FROM categories WHERE key = %(category)s) AS ok
