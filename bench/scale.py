"""Workloads of issue 19 that probe costs at scale: W8 (a backlog after ``ANALYZE`` of
the empty job table), W5b (urgent behind a slow receiver), W10 (inbox at 20,000
items), W11 (webhooks to a slow receiver). Same conventions as ``workloads``: sizes
are arguments, so ``tests/e2e/test_bench_smoke.py`` runs them tiny."""

from __future__ import annotations

import time
from typing import Any

from bench.env import Database, processes, start_worker
from bench.workloads import Tick, _noop, wait


def _fetch_calls(database: Database) -> int:
    value = database.scalar(
        "SELECT calls FROM pg_stat_user_functions WHERE funcname = 'procrastinate_fetch_job_v2'"
    )
    return int(value or 0)


# -- W8: a backlog after ANALYZE of the empty job table ----------------------------------


def w8_analyzed_empty(
    database: Database,
    backlog: int,
    tick: Tick = _noop,
    timeout: float = 600,
    probes: int = 3,
) -> dict[str, Any]:
    """``ANALYZE`` on the empty job table; a worker polls it until its fetch has run
    often enough to cache its plans (and a probe connection fetches as often); then
    ``backlog`` notifications are queued in one statement (``postbell.notify()``,
    IN_APP). Measured: how long one fetch by the probe takes (its job is put back), and
    the seconds until every notification is routed; when ``timeout`` passes first, the
    rate is what was routed by then."""
    import psycopg
    from procrastinate import sql as procrastinate_sql

    fetch = procrastinate_sql.queries["fetch_job"]
    database.execute("ANALYZE procrastinate_jobs")
    database.execute(f"ALTER DATABASE {database.name} SET track_functions = 'all'")
    with processes() as started, database.connect() as probe:
        probe.execute("SET statement_timeout = '120s'")
        worker_id = None  # the probe is no worker (a worker row would be pruned)
        for _ in range(8):
            probe.execute(fetch, {"queues": ["route"], "worker_id": worker_id})
        start_worker(started, database.url, POSTBELL_POLL_INTERVAL="0.1")
        wait(lambda: _fetch_calls(database) >= 48, timeout=120, every=0.2)
        database.execute(
            "SELECT notify(ARRAY['w8-' || i], '{\"message\": \"backlog\"}')"
            " FROM generate_series(1, %s) AS i",
            (backlog,),
        )
        began = time.perf_counter()
        fetch_ms: list[float] = []
        for _ in range(probes):
            t = time.perf_counter()
            try:
                row = probe.execute(fetch, {"queues": ["route"], "worker_id": worker_id}).fetchone()
            except psycopg.errors.QueryCanceled:
                fetch_ms.append(float("inf"))
                break
            fetch_ms.append(round((time.perf_counter() - t) * 1000, 1))
            if row and row[0] is not None:
                probe.execute(
                    "UPDATE procrastinate_jobs SET status = 'todo', worker_id = NULL WHERE id = %s",
                    (row[0],),
                )
        routed_query = "SELECT count(*) FROM notifications WHERE status = 'routed'"

        def drained() -> bool:
            routed = int(database.scalar(routed_query))
            tick(routed / backlog)
            return routed >= backlog

        finished = True
        try:
            wait(drained, timeout=timeout, every=0.1)
        except TimeoutError:
            finished = False
        elapsed = time.perf_counter() - began
        routed = int(database.scalar(routed_query))
    return {
        "backlog": backlog,
        "fetch_ms": fetch_ms,
        "routed": routed,
        "finished": finished,
        "seconds": round(elapsed, 3),
        "routed_per_s": round(routed / elapsed, 1),
    }


# -- W5b: urgent behind a slow receiver ----------------------------------------------------


def w5b_urgent_behind_slow(
    database: Database, backlog: int, delay: float = 0.1, tick: Tick = _noop
) -> dict[str, Any]:
    """``backlog`` low-priority webhooks (one notification) drain through a receiver
    that answers in ``delay`` seconds; once a fiftieth of them arrived, one urgent webhook
    is POSTed to the same receiver. Measured: how many backlog webhooks arrived after
    the POST and before the urgent one, and the POST → arrival time."""
    import httpx

    from bench.env import start_api, start_receiver
    from bench.workloads import HEADERS

    with processes() as started:
        receiver = start_receiver(started, delay=delay)
        database.execute(
            "INSERT INTO recipients (external_id, webhook_url)"
            " SELECT 'w5b-' || i, %s FROM generate_series(1, %s) AS i"
            " UNION ALL SELECT 'w5b-urgent', %s",
            (f"{receiver}/hook", backlog, f"{receiver}/hook"),
        )
        api = start_api(started, database.url)
        start_worker(started, database.url)
        time.sleep(1.0)
        database.execute(
            "SELECT notify(ARRAY(SELECT 'w5b-' || i FROM generate_series(1, %s) AS i),"
            " '{\"message\": \"newsletter\"}', ARRAY['WEBHOOK'], 'low')",
            (backlog,),
        )

        def count() -> int:
            return int(httpx.get(f"{receiver}/stats").json()["count"])

        wait(lambda: count() >= max(1, backlog // 50), timeout=600, every=0.02)
        before = count()
        posted = time.time()
        response = httpx.post(
            f"{api}/api/notifications",
            headers=HEADERS,
            timeout=30,
            json={
                "to": ["w5b-urgent"],
                "message": "sign-in code",
                "channels": ["WEBHOOK"],
                "priority": "urgent",
            },
        )
        urgent = response.json()["id"]

        def arrived() -> bool:
            tick(count() / (backlog + 1))
            return urgent in httpx.get(f"{receiver}/arrivals").json()

        wait(arrived, timeout=600, every=0.01)
        arrivals = httpx.get(f"{receiver}/arrivals").json()
        order = httpx.get(f"{receiver}/order").json()
        wait(lambda: count() >= backlog + 1, timeout=600, every=0.1)
    position = order.index(urgent)
    return {
        "backlog": backlog,
        "receiver_ms": round(delay * 1000),
        "arrived_before_post": before,
        "overtaken_by": position - before,
        # of the backlog still unsent at the POST, the share the urgent one overtook
        "ahead_of_backlog_share": round(1 - (position - before) / max(backlog - before, 1), 3),
        "drain_per_s_during_wait": round(
            (position - before) / max(arrivals[urgent] - posted, 1e-3), 1
        ),
        "post_to_arrival_ms": round((arrivals[urgent] - posted) * 1000, 1),
    }


# -- W11: webhooks to a slow receiver ---------------------------------------------------------


def w11_slow_receiver(
    database: Database,
    webhooks: int,
    delay: float = 0.2,
    max_in_flight: int | None = None,
    tick: Tick = _noop,
) -> dict[str, Any]:
    """``webhooks`` webhooks (one notification) from ONE worker process to a receiver
    that answers in ``delay`` seconds; ``max_in_flight`` sets POSTBELL_MAX_IN_FLIGHT
    (64 is the fixed limit before the adaptive gate). Measured: webhooks/s from the
    notify() to the last arrival, the worker's peak RSS."""
    import httpx

    from bench.env import start_receiver
    from bench.workloads import decided

    extra = {} if max_in_flight is None else {"POSTBELL_MAX_IN_FLIGHT": str(max_in_flight)}
    with processes() as started:
        receiver = start_receiver(started, delay=delay)
        database.execute(
            "INSERT INTO recipients (external_id, webhook_url)"
            " SELECT 'w11-' || i, %s FROM generate_series(1, %s) AS i",
            (f"{receiver}/hook", webhooks),
        )
        worker = start_worker(started, database.url, **extra)
        time.sleep(1.0)
        began = time.perf_counter()
        nid = database.scalar(
            "SELECT notify(ARRAY(SELECT 'w11-' || i FROM generate_series(1, %s) AS i),"
            " '{\"message\": \"slow receiver\"}', ARRAY['WEBHOOK'])",
            (webhooks,),
        )

        def received() -> bool:
            count = int(httpx.get(f"{receiver}/stats").json()["count"])
            tick(count / webhooks)
            return count >= webhooks

        wait(received, timeout=600, sample=started, every=0.05)
        elapsed = time.perf_counter() - began
        wait(lambda: decided(database, str(nid)) == webhooks, timeout=120)
        received = int(httpx.get(f"{receiver}/stats").json()["count"])
        sent = database.scalar(
            "SELECT count(*) FROM deliveries WHERE notification_id = %s AND status = 'sent'",
            (nid,),
        )
    return {
        "webhooks": webhooks,
        "received": received,
        "sent": int(sent),
        "receiver_ms": round(delay * 1000),
        "max_in_flight": max_in_flight or "default",
        "seconds": round(elapsed, 3),
        "per_second": round(webhooks / elapsed, 1),
        "worker_peak_rss_mb": worker.peak_rss >> 20,
    }


# -- W10: inbox counts at 20,000 items ------------------------------------------------------


def w10_inbox(
    database: Database, items: int, fan_out: int = 0, gets: int = 500, tick: Tick = _noop
) -> dict[str, Any]:
    """One recipient with ``items`` IN_APP inbox items (one in ten read); ``gets``
    sequential ``GET /api/inbox/{id}`` (a page and both counts), and as many
    ``GET /api/notifications/{id}`` of a notification with ``fan_out`` deliveries:
    latency p50/p95/p99 of each."""
    import httpx

    from bench.env import start_api
    from bench.workloads import HEADERS, percentiles

    database.execute("INSERT INTO recipients (external_id) VALUES ('w10-reader')")
    database.execute(
        "SELECT notify(ARRAY['w10-reader'], jsonb_build_object('message', 'item ' || i))"
        " FROM generate_series(1, %s) AS i",
        (items,),
    )
    with processes() as started:
        api = start_api(started, database.url)
        start_worker(started, database.url)
        wait(
            lambda: (
                database.scalar("SELECT count(*) FROM notifications WHERE status <> 'routed'") == 0
            ),
            timeout=1200,
            every=0.2,
        )
        big = None
        if fan_out:
            from bench.workloads import populate

            populate(database, "w10-", fan_out, topic="w10")
            big = httpx.post(
                f"{api}/api/notifications",
                headers=HEADERS,
                timeout=30,
                json={"topic": "w10", "message": "everyone", "channels": ["IN_APP"]},
            ).json()["id"]
            wait(
                lambda: (
                    database.scalar("SELECT status FROM notifications WHERE id = %s", (big,))
                    == "routed"
                ),
                timeout=1200,
                every=0.2,
            )
        database.execute(
            "UPDATE deliveries SET read_at = now(), seen_at = now()"
            " WHERE recipient_id = (SELECT id FROM recipients WHERE external_id = 'w10-reader')"
            " AND id %% 10 = 0"
        )
        database.execute("ANALYZE")
        inbox: list[float] = []
        detail: list[float] = []
        with httpx.Client(base_url=api, headers=HEADERS, timeout=30) as client:
            counts = client.get("/api/inbox/w10-reader").json()
            for n in range(gets):
                began = time.perf_counter()
                client.get("/api/inbox/w10-reader").raise_for_status()
                inbox.append(time.perf_counter() - began)
                if big:
                    began = time.perf_counter()
                    client.get(f"/api/notifications/{big}").raise_for_status()
                    detail.append(time.perf_counter() - began)
                tick(n / gets)
    return {
        "items": items,
        "unread_count": counts["unread_count"],
        "inbox_ms": percentiles(inbox),
        "fan_out": fan_out,
        "notification_ms": percentiles(detail) if detail else None,
    }


# -- W12: deliveries at 10,000,000 rows, partitioned by month ----------------------------


def _wal(database: Database) -> int:
    return int(database.scalar("SELECT pg_current_wal_lsn() - '0/0'::pg_lsn"))


def _fan_out(database: Database, api: str, topic: str) -> float:
    """Seconds from the POST of a topic notification (IN_APP) to its routed state."""
    import httpx

    from bench.workloads import HEADERS

    began = time.perf_counter()
    nid = httpx.post(
        f"{api}/api/notifications",
        headers=HEADERS,
        timeout=30,
        json={"topic": topic, "message": "everyone", "channels": ["IN_APP"]},
    ).json()["id"]
    wait(
        lambda: (
            database.scalar("SELECT status FROM notifications WHERE id = %s", (nid,)) == "routed"
        ),
        timeout=1200,
        every=0.05,
    )
    return time.perf_counter() - began


def _webhook_fan_out(database: Database, api: str, receiver: str, topic: str, n: int) -> float:
    """Webhooks/s from the POST of a WEBHOOK notification to ``topic``'s ``n`` members
    to the last of them received."""
    import httpx

    from bench.workloads import HEADERS

    def received() -> int:
        return int(httpx.get(f"{receiver}/stats").json()["count"])

    start = received()
    began = time.perf_counter()
    httpx.post(
        f"{api}/api/notifications",
        headers=HEADERS,
        timeout=30,
        json={"topic": topic, "message": "webhooks", "channels": ["WEBHOOK"]},
    ).raise_for_status()
    wait(lambda: received() - start >= n, timeout=1200, every=0.05)
    return n / (time.perf_counter() - began)


def _inbox_gets(api: str, gets: int) -> dict[str, float]:
    import httpx

    from bench.workloads import HEADERS, percentiles

    latencies: list[float] = []
    with httpx.Client(base_url=api, headers=HEADERS, timeout=30) as client:
        client.get("/api/inbox/w12-reader").raise_for_status()
        for _ in range(gets):
            began = time.perf_counter()
            client.get("/api/inbox/w12-reader").raise_for_status()
            latencies.append(time.perf_counter() - began)
    return percentiles(latencies)


def w12_partitioned(
    database: Database,
    rows: int,
    months: int = 10,
    members: int = 100_000,
    reader_items: int = 20_000,
    gets: int = 500,
    webhooks: int = 10_000,
    tick: Tick = _noop,
) -> dict[str, Any]:
    """``deliveries`` grown to ``rows`` over ``months`` past months (migration 0030: one
    partition each), beside a ``members``-member topic and a reader whose
    ``reader_items`` inbox items are spread over those months. Measured before the
    growth and after it, in the same database: the reader's ``GET /api/inbox`` p50/p99,
    the topic's fan-out (POST to routed) into this month, and a WEBHOOK fan-out to
    ``webhooks`` other members through the local receiver (webhooks/s: its sends look
    their deliveries up by id, in every month). Then retention: the
    oldest month dropped whole (seconds, WAL), against the next month purged row by
    row by the batched DELETE retention used before 0030 (seconds, WAL), and the
    kept counts checked against a recount after both."""
    from bench.env import start_api, start_receiver
    from bench.workloads import populate

    per_month = max(rows // months, 1)
    fan_outs = max(per_month // members, 1)
    database.execute("DROP TABLE deliveries_history")  # empty in a new database
    first = database.scalar("SELECT min(lo) FROM delivery_partitions()")
    with database.connect() as conn:
        statements = conn.execute(
            "SELECT format('CREATE TABLE postbell.%%I PARTITION OF postbell.deliveries"
            " FOR VALUES FROM (%%L) TO (%%L) WITH (fillfactor = 90)',"
            " to_char(m AT TIME ZONE 'UTC', '\"deliveries_y\"YYYY\"m\"MM'), m, m + interval '1 month')"
            " FROM generate_series(%s::timestamptz - make_interval(months => %s),"
            "                      %s::timestamptz - interval '1 month', interval '1 month') AS m",
            (first, months, first),
        ).fetchall()
        for (statement,) in statements:
            conn.execute(statement)
        conn.commit()
    populate(database, "w12-", members, topic="w12")
    database.execute("INSERT INTO recipients (external_id) VALUES ('w12-reader')")
    reader = database.scalar("SELECT id FROM recipients WHERE external_id = 'w12-reader'")
    # the reader's items: one notification each, spread over the months
    database.execute(
        "WITH n AS ("
        " INSERT INTO notifications (status, body, recipients, created_at, routed_at)"
        " SELECT 'routed', 'item ' || i, ARRAY['w12-reader'], t, t"
        "   FROM generate_series(1, %s) AS i,"
        "        LATERAL (SELECT %s::timestamptz - make_interval(months => %s)"
        "                        + (i::float8 / %s) * make_interval(months => %s) AS t) AS x"
        " RETURNING id, created_at)"
        " INSERT INTO deliveries (notification_id, created_at, updated_at, recipient_id, channel,"
        "                         status, sent_at, read_at, seen_at)"
        " SELECT id, created_at, created_at, %s, 'IN_APP', 'sent', created_at,"
        "        CASE WHEN random() < 0.1 THEN created_at END,"
        "        CASE WHEN random() < 0.1 THEN created_at END FROM n",
        (reader_items, first, months, reader_items + 1, months, reader),
    )
    database.execute("VACUUM (ANALYZE)")
    result: dict[str, Any] = {"rows": rows, "months": months, "members": members}
    with processes() as started:
        receiver = start_receiver(started)
        populate(database, "w12w-", webhooks, topic="w12w", webhook_url=f"{receiver}/hook")
        api = start_api(started, database.url)
        start_worker(started, database.url)
        result["before"] = {
            "deliveries": int(database.scalar("SELECT count(*) FROM deliveries")),
            "fan_out_s": round(_fan_out(database, api, "w12"), 2),
            "inbox_ms": _inbox_gets(api, gets),
            "webhooks_per_s": round(_webhook_fan_out(database, api, receiver, "w12w", webhooks)),
        }
        tick(0.1)
        # grow: per month, fan_outs notifications to every member, as routing would
        # write them (IN_APP, sent, one in ten read), final, last changed that month
        began = time.perf_counter()
        for m in range(months):
            for _ in range(fan_outs):
                database.execute(
                    "WITH n AS ("
                    " INSERT INTO notifications (status, body, recipients, topic, created_at,"
                    "                            routed_at)"
                    " SELECT 'routed', 'history', NULL, 'w12', t, t"
                    "   FROM (SELECT %s::timestamptz - make_interval(months => %s)"
                    "                + random() * interval '27 days' AS t) AS x"
                    " RETURNING id, created_at)"
                    " INSERT INTO deliveries (notification_id, created_at, updated_at,"
                    "                         recipient_id, channel, status, sent_at, read_at)"
                    " SELECT n.id, n.created_at, n.created_at, s.recipient_id, 'IN_APP', 'sent',"
                    "        n.created_at,"
                    "        CASE WHEN s.recipient_id %% 10 = 0 THEN n.created_at END"
                    "   FROM n, topic_subscribers AS s WHERE s.topic_key = 'w12'",
                    (first, months - m),
                )
            tick(0.1 + 0.5 * (m + 1) / months)
        result["grow_s"] = round(time.perf_counter() - began, 1)
        database.execute("VACUUM (ANALYZE)")
        database.execute("CHECKPOINT")
        result["after"] = {
            "deliveries": int(database.scalar("SELECT count(*) FROM deliveries")),
            "partitions": int(database.scalar("SELECT count(*) FROM delivery_partitions()")),
            "fan_out_s": round(_fan_out(database, api, "w12"), 2),
            "inbox_ms": _inbox_gets(api, gets),
            "webhooks_per_s": round(_webhook_fan_out(database, api, receiver, "w12w", webhooks)),
        }
        tick(0.7)
    oldest, second = (
        database.scalar("SELECT name FROM delivery_partitions() ORDER BY lo NULLS FIRST LIMIT 1"),
        database.scalar(
            "SELECT name FROM delivery_partitions() ORDER BY lo NULLS FIRST OFFSET 1 LIMIT 1"
        ),
    )
    month_rows = int(database.scalar(f"SELECT count(*) FROM {oldest}"))
    database.execute("CHECKPOINT")
    wal, began = _wal(database), time.perf_counter()
    dropped = database.scalar(
        "SELECT delivery_partition_drop(%s, (SELECT hi FROM delivery_partitions() WHERE name = %s))",
        (oldest, oldest),
    )
    result["drop"] = {
        "partition": oldest,
        "rows": int(dropped or 0),
        "s": round(time.perf_counter() - began, 3),
        "wal_bytes": _wal(database) - wal,
    }
    tick(0.8)
    # the same retention row by row (before 0030): batches of 5,000, each a transaction
    second_rows = int(database.scalar(f"SELECT count(*) FROM {second}"))
    database.execute("CHECKPOINT")
    wal, began, deleted = _wal(database), time.perf_counter(), 0
    with database.connect() as conn:
        conn.autocommit = True
        while True:
            n = conn.execute(
                f"WITH old AS (SELECT d.id FROM {second} AS d"
                "               WHERE d.status NOT IN ('pending', 'failed') LIMIT 5000)"
                " DELETE FROM deliveries AS d USING old WHERE d.id = old.id"
            ).rowcount
            deleted += n
            if n < 5000:
                break
    result["row_purge"] = {
        "partition": second,
        "rows": deleted,
        "s": round(time.perf_counter() - began, 2),
        "wal_bytes": _wal(database) - wal,
    }
    result["month_rows"] = [month_rows, second_rows]
    result["counts_agree"] = bool(
        database.scalar(
            "SELECT (SELECT coalesce(sum(unread), 0) FROM inbox_counts)"
            " = (SELECT count(*) FROM deliveries WHERE channel = 'IN_APP' AND status = 'sent'"
            "     AND archived_at IS NULL AND read_at IS NULL)"
            " AND (SELECT coalesce(sum(value), 0) FROM metric_counts WHERE metric = 'deliveries')"
            " = (SELECT count(*) FROM deliveries)"
        )
    )
    tick(1.0)
    return result
