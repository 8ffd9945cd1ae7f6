-- 0029: one routing job per host transaction, not one per call (issue 19).
--
-- A host app that calls postbell.notify() for 100 people in its own transaction
-- deferred 100 routing jobs: 100 job rows and their indexes written, 100 NOTIFYs,
-- 100 fetches, though the worker routes them in one batch anyway. Now the first
-- call of a transaction (per priority, so urgent ones never wait in a low job)
-- defers the job, and the calls after it only add their notification's id to a
-- transaction-local setting of that priority: memory, no WAL (the second call marks
-- the job once). At commit a deferred constraint trigger on the marked job writes
-- the ids into its args, once:
-- {"notification_id": <first>, "ids": [<all>]}, which the worker's postbell.route
-- task takes (workers/tasks.py) and its claims count as one item per notification.
-- A job carries at most 200 (a routing batch, workers/tasks.py ROUTE_BATCH); the
-- next call starts a new job.
--
-- (Appending each id to the job's args with an UPDATE per call was tried first: it
-- wrote the growing args again every call, 5,101 B of WAL per call against 1,274 B
-- with a job per call.)
--
-- Not joined: a scheduled notification (its job runs at send_at, and a cancel makes
-- it run at once: one job of its own each), and a topic notification (its fan-out
-- keeps its job until the last range is routed). A savepoint rolled back takes its
-- notifications out with it: the settings and the trigger's pending event are undone
-- together. `SET CONSTRAINTS ALL IMMEDIATE` writes the ids at that point and closes
-- the job, so later calls start a new one. The settings live and die with the
-- transaction: a job of an earlier transaction is never touched.
--
-- A worker of an earlier release (during a rolling deploy, after this migration and
-- before its own restart) does not take a job of several notifications: the job
-- fails, and the reconciler defers those notifications again, one job each.
--
-- enqueue_notification() (0011) is written out again whole, with defer_route() in
-- place of its procrastinate_defer_jobs_v1() call; notify(), the SQL console's
-- calls and the workflow engine's steps go through it. The API's group commit
-- (enqueue_notifications, 0025) keeps a job per notification: sharing jobs there too
-- was measured (bench W4, three alternating pairs) and accepted 10-20 % fewer
-- notifications per second, so it was not kept.

-- No SET clause, on purpose: it is called only by enqueue_notification(), whose
-- search_path (pg_catalog, postbell) it runs under, and a SET clause saves and
-- restores the configuration on every call (WN, one call per transaction, measured
-- ~12 % slower with one).
CREATE FUNCTION defer_route(p_id uuid, p_priority text, p_run_at timestamptz, p_join boolean)
    RETURNS void
    LANGUAGE plpgsql
AS $$
DECLARE
    -- Two settings per priority, whatever the number of jobs: a setting's name made
    -- per job would add a configuration variable to the session per call, and
    -- Postgres 15 keeps them in a sorted array it walks at every transaction's end
    -- (single-call transactions went from 1,189 to 562 calls/s and kept slowing).
    v_open  text := 'postbell.route_open_' || coalesce(p_priority, 'normal');
    v_list  text := 'postbell.route_ids_' || coalesce(p_priority, 'normal');
    v_job   bigint;
    v_ids   text;
    v_new   procrastinate_job_to_defer_v1 := route_job(p_id, p_priority, p_run_at);
BEGIN
    IF p_run_at IS NOT NULL OR NOT p_join THEN
        PERFORM procrastinate_defer_jobs_v1(ARRAY[v_new]);
        RETURN;
    END IF;
    v_job := nullif(current_setting(v_open, true), '')::bigint;
    IF v_job IS NOT NULL THEN
        v_ids := current_setting(v_list, true);
        -- ids are 36 characters and a comma: fewer than 200 so far
        IF length(v_ids) < 200 * 37 - 1 THEN
            IF strpos(v_ids, ',') = 0 THEN
                -- the job's first companion: mark the job, which queues the trigger
                -- that writes its ids at commit (a transaction of one call marks
                -- nothing and pays for no trigger)
                UPDATE procrastinate_jobs AS j SET args = j.args || '{"joining": true}'
                 WHERE j.id = v_job;
            END IF;
            PERFORM set_config(v_list, v_ids || ',' || p_id, true);
            RETURN;
        END IF;
        -- that job is full: its ids are written now, and a new job starts
        PERFORM route_job_ids_store(v_job, v_ids);
    END IF;
    v_job := (procrastinate_defer_jobs_v1(ARRAY[v_new]))[1];
    PERFORM set_config(v_open, v_job::text, true);
    PERFORM set_config(v_list, p_id::text, true);
END;
$$;

-- A joined job's args: its first notification and, when it has several, all of them.
CREATE FUNCTION route_job_ids_store(p_job bigint, p_ids text) RETURNS void
    LANGUAGE sql
    SET search_path = pg_catalog, postbell
BEGIN ATOMIC
    UPDATE procrastinate_jobs AS j
       SET args = CASE WHEN strpos(p_ids, ',') > 0
                       THEN jsonb_build_object('notification_id', j.args -> 'notification_id',
                                               'ids', to_jsonb(string_to_array(p_ids, ',')))
                       ELSE jsonb_build_object('notification_id', j.args -> 'notification_id') END
     WHERE j.id = p_job;
END;

-- At commit: the open job of each priority gets its ids, and is closed. A job that
-- filled up was written when it did (defer_route) and is no longer open here.
CREATE FUNCTION route_job_ids_write() RETURNS trigger
    LANGUAGE plpgsql
    SET search_path = pg_catalog, postbell
AS $$
DECLARE
    v_priority text;
BEGIN
    FOREACH v_priority IN ARRAY ARRAY['low', 'normal', 'high', 'urgent'] LOOP
        IF current_setting('postbell.route_open_' || v_priority, true) = NEW.id::text THEN
            PERFORM route_job_ids_store(
                NEW.id, current_setting('postbell.route_ids_' || v_priority, true));
            PERFORM set_config('postbell.route_open_' || v_priority, '', true);
            PERFORM set_config('postbell.route_ids_' || v_priority, '', true);
        END IF;
    END LOOP;
    RETURN NULL;
END;
$$;

CREATE CONSTRAINT TRIGGER route_job_ids AFTER UPDATE OF args ON procrastinate_jobs
    DEFERRABLE INITIALLY DEFERRED
    FOR EACH ROW WHEN (NEW.args ? 'joining' AND NOT OLD.args ? 'joining')
    EXECUTE FUNCTION route_job_ids_write();

CREATE OR REPLACE FUNCTION enqueue_notification(
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
    PERFORM defer_route(v_id, coalesce(p_priority, 'normal'),
                        CASE WHEN v_status = 'scheduled' THEN p_send_at END, p_topic IS NULL);
    IF NOT p_wakeup THEN
        PERFORM set_config('postbell.quiet_defer', 'off', true);
    END IF;
    RETURN QUERY SELECT v_id, v_status, true, p_request_hash;
END;
$$;
