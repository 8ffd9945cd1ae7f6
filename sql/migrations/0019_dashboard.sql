-- 0019: the notifications list's template and workflow filters, and the dashboard's
-- sign-in sessions.
--
-- The list walks notifications newest first; a template or workflow filter that
-- matches a few rows would read the whole walk (the planner then prefers a sequential
-- scan and a sort). Partial indexes keep those walks short and cost nothing to a
-- notification sent without a template or a workflow (the predicate is false, nothing
-- is written). The workflow key is where the engine records it: metadata.workflow.key
-- (workers/workflows.py).
CREATE INDEX notifications_template_created_idx ON notifications (template_key, created_at, id)
    WHERE template_key IS NOT NULL;
CREATE INDEX notifications_workflow_created_idx
    ON notifications ((metadata -> 'workflow' ->> 'key'), created_at, id)
    WHERE (metadata -> 'workflow' ->> 'key') IS NOT NULL;

-- A dashboard session (docs/dashboard.md): an admin signed in with an API key and got a
-- random cookie. Only hashes are stored: the cookie's SHA-256 (a database dump opens no
-- session) and the SHA-256 of the key that signed in, so revoking that key (or changing
-- POSTBELL_ADMIN_KEY) ends its sessions at once. Sign-out deletes the row.
CREATE TABLE dashboard_sessions (
    id_hash      bytea PRIMARY KEY,
    key_hash     bytea NOT NULL,
    created_at   timestamptz NOT NULL DEFAULT now(),
    last_seen_at timestamptz NOT NULL DEFAULT now(),
    expires_at   timestamptz NOT NULL
);
CREATE INDEX dashboard_sessions_expires_idx ON dashboard_sessions (expires_at);
