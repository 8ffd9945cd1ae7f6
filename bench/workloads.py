"""The baselines and workloads W1-W5, W4s, WN and W9. Each takes its sizes as arguments, so the same
code runs full-size under ``make bench`` and tiny in the test suite (correctness only).
"""

from __future__ import annotations

import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx

from bench.env import (
    ADMIN_KEY,
    Database,
    Process,
    processes,
    start_api,
    start_receiver,
    start_smtp_sink,
    start_worker,
)

HEADERS = {"Authorization": f"Bearer {ADMIN_KEY}"}
Tick = Callable[[float], None]  # progress: fraction done


def _noop(_: float) -> None:
    return None


def percentiles(values: list[float], digits: int = 1) -> dict[str, float]:
    """p50/p95/p99 of durations in seconds, in milliseconds."""
    if not values:
        return {"p50": float("nan"), "p95": float("nan"), "p99": float("nan")}
    ordered = sorted(values)

    def pick(q: float) -> float:
        return round(ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000, digits)

    return {"p50": pick(0.50), "p95": pick(0.95), "p99": pick(0.99)}


def wait(
    condition: Callable[[], bool],
    timeout: float,
    sample: list[Process] | None = None,
    every: float = 0.02,
) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        for process in sample or []:
            process.sample()
        if time.monotonic() > deadline:
            raise TimeoutError("the workload did not finish in time")
        time.sleep(every)


# -- baselines ---------------------------------------------------------------------------


def baseline_procrastinate(admin: str, jobs: int) -> dict[str, Any]:
    """(a) raw procrastinate: one no-op job per delivery, batch-deferred, one worker."""
    import procrastinate

    database = Database.create(admin, "pbbench_raw")
    try:
        app = procrastinate.App(connector=procrastinate.PsycopgConnector(conninfo=database.url))

        @app.task(name="noop")
        async def noop(i: int) -> None:
            return None

        async def run() -> tuple[float, float]:
            async with app.open_async():
                await app.schema_manager.apply_schema_async()
                started = time.perf_counter()
                for start in range(0, jobs, 1000):
                    await noop.batch_defer_async(
                        *({"i": i} for i in range(start, min(jobs, start + 1000)))
                    )
                deferred = time.perf_counter() - started
                started = time.perf_counter()
                await app.run_worker_async(concurrency=1, wait=False, install_signal_handlers=False)
                return deferred, time.perf_counter() - started

        deferred, worked = asyncio.run(run())
    finally:
        database.drop()
    return {
        "jobs": jobs,
        "defer_s": round(deferred, 3),
        "work_s": round(worked, 3),
        "jobs_per_s": round(jobs / worked, 1),
    }


def baseline_inserts(
    database: Database, seconds: float = 5.0, connections: int = 8
) -> dict[str, Any]:
    """(b) pgbench-style: single-row INSERT transactions per second (the WAL ceiling)."""
    import psycopg

    database.execute(
        "CREATE TABLE IF NOT EXISTS public.bench_inserts (id bigserial PRIMARY KEY, payload text)"
    )

    async def lane() -> int:
        done = 0
        async with await psycopg.AsyncConnection.connect(database.url, autocommit=True) as conn:
            deadline = time.monotonic() + seconds
            while time.monotonic() < deadline:
                await conn.execute("INSERT INTO public.bench_inserts (payload) VALUES ('x')")
                done += 1
        return done

    async def run() -> int:
        return sum(await asyncio.gather(*(lane() for _ in range(connections))))

    total = asyncio.run(run())
    return {
        "connections": connections,
        "seconds": seconds,
        "transactions": total,
        "tx_per_s": round(total / seconds, 1),
    }


# -- population ---------------------------------------------------------------------------


def populate(
    database: Database,
    prefix: str,
    count: int,
    *,
    topic: str,
    opted_out_every: int = 0,
    muted_every: int = 0,
    webhook_url: str | None = None,
    email_domain: str | None = None,
) -> None:
    """``count`` recipients subscribed to ``topic``, each with a preferences row; every
    ``opted_out_every``-th one opted out of category 'bench'; with ``muted_every``,
    every so many (offset by half) muted ``topic`` (every channel, or IN_APP alone,
    in turn) and every fourth muted another topic."""
    database.execute("INSERT INTO topics (key) VALUES (%s) ON CONFLICT DO NOTHING", (topic,))
    database.execute("INSERT INTO categories (key) VALUES ('bench') ON CONFLICT DO NOTHING")
    database.execute(
        "INSERT INTO recipients (external_id, webhook_url, email)"
        " SELECT %s || i, %s, CASE WHEN %s::text IS NULL THEN NULL ELSE %s || i || '@' || %s END"
        " FROM generate_series(1, %s) AS i",
        (prefix, webhook_url, email_domain, prefix, email_domain, count),
    )
    database.execute(
        "INSERT INTO topic_subscribers (topic_key, recipient_id)"
        " SELECT %s, id FROM recipients WHERE external_id LIKE %s || '%%'",
        (topic, prefix),
    )
    database.execute(
        "INSERT INTO preferences (recipient_id, categories)"
        " SELECT id, CASE WHEN %s > 0 AND id %% %s = 0 THEN '{\"bench\": {\"IN_APP\": false}}' ELSE '{}' END::jsonb"
        " FROM recipients WHERE external_id LIKE %s || '%%'",
        (opted_out_every, max(opted_out_every, 1), prefix),
    )
    if muted_every:
        database.execute(
            "UPDATE preferences AS p"
            " SET topics = CASE WHEN p.recipient_id %% 4 = 1"
            "                   THEN jsonb_build_object(%s::text || '-other', false) ELSE '{}' END"
            "           || CASE WHEN p.recipient_id %% %s = %s"
            "                   THEN jsonb_build_object(%s::text, CASE WHEN p.recipient_id %% (2 * %s) < %s"
            "                                                    THEN 'false'::jsonb"
            "                                                    ELSE '{\"IN_APP\": false}' END)"
            "                   ELSE '{}' END"
            "  FROM recipients AS r WHERE r.id = p.recipient_id AND r.external_id LIKE %s || '%%'",
            (topic, muted_every, muted_every // 2, topic, muted_every, muted_every, prefix),
        )
    database.execute("ANALYZE")


def decided(database: Database, notification_id: str) -> int:
    return int(
        database.scalar(
            "SELECT count(*) FROM deliveries WHERE notification_id = %s AND status IN ('sent', 'skipped', 'dead')",
            (notification_id,),
        )
    )


# -- W1: in-app topic fan-out ---------------------------------------------------------------------


#: W1t's template: IN_APP text that names the community, in two locales (rendered
#: once per locale: it shows nothing of the recipient).
W1T_TEMPLATE = {
    "default_locale": "en",
    "example_data": {"community": "Chess club"},
    "locales": {
        "en": {"IN_APP": {"title": "New in {{ community }}", "body": "Meet-up on Friday"}},
        "de": {"IN_APP": {"title": "Neu in {{ community }}", "body": "Treffen am Freitag"}},
    },
}
#: W3t's template: an email that greets each recipient by name (rendered per recipient).
W3T_TEMPLATE = {
    "default_locale": "en",
    "example_data": {"community": "Chess club"},
    "locales": {
        "en": {
            "EMAIL": {
                "subject": "Hello {{ recipient.name }}",
                "html": "<p>Hi {{ recipient.name }},</p><p>{{ community }} meets on Friday.</p>",
            }
        }
    },
}


def put_template(api: str, key: str, body: dict[str, Any]) -> None:
    response = httpx.put(f"{api}/api/templates/{key}", headers=HEADERS, timeout=30, json=body)
    assert response.status_code == 200, response.text


def w1_inapp_fanout(
    database: Database, members: int, tick: Tick = _noop, *, templated: bool = False
) -> dict[str, Any]:
    """W1; ``templated`` (W1t): the same fan-out with a template naming the community,
    half the members with locale de."""
    populate(database, "w1-", members, topic="w1", opted_out_every=10, muted_every=10)
    if templated:
        database.execute("UPDATE recipients SET locale = 'de' WHERE id %% 2 = 0")
    with processes() as started:
        api = start_api(started, database.url)
        worker = start_worker(started, database.url)
        time.sleep(1.0)
        for p in started:
            p.sample()
        content: dict[str, Any] = {"message": "Meet-up on Friday"}
        if templated:
            put_template(api, "w1t", W1T_TEMPLATE)
            content = {"template": "w1t", "data": {"community": "Chess club"}}
        began = time.perf_counter()
        response = httpx.post(
            f"{api}/api/notifications",
            headers=HEADERS,
            timeout=30,
            json={"topic": "w1", **content, "channels": ["IN_APP"], "category": "bench"},
        )
        nid = response.json()["id"]
        wait(
            lambda: (
                database.scalar("SELECT status FROM notifications WHERE id = %s", (nid,))
                == "routed"
            ),
            timeout=600,
            sample=started,
        )
        elapsed = time.perf_counter() - began
        tick(1.0)
        api_rss, worker_rss = started[0].peak_rss, worker.peak_rss
    counts = dict(
        database.connect()
        .execute(
            "SELECT coalesce(reason, status), count(*) FROM deliveries WHERE notification_id = %s GROUP BY 1",
            (nid,),
        )
        .fetchall()
    )
    assert sum(counts.values()) == members, counts
    return {
        "deliveries": members,
        "seconds": round(elapsed, 3),
        "per_second": round(members / elapsed, 1),
        "counts": counts,
        "peak_rss_mb": {"api": api_rss >> 20, "worker": worker_rss >> 20},
    }


# -- W2: webhook fan-out -----------------------------------------------------------------------------


def w2_webhook_fanout(database: Database, recipients: int, tick: Tick = _noop) -> dict[str, Any]:
    with processes() as started:
        receiver = start_receiver(started)
        populate(database, "w2-", recipients, topic="w2", webhook_url=f"{receiver}/hook")
        api = start_api(started, database.url)
        worker = start_worker(started, database.url)
        time.sleep(1.0)
        began = time.perf_counter()
        nid = httpx.post(
            f"{api}/api/notifications",
            headers=HEADERS,
            timeout=30,
            json={"topic": "w2", "message": "webhook fan-out", "channels": ["WEBHOOK"]},
        ).json()["id"]

        def received() -> bool:
            count = int(httpx.get(f"{receiver}/stats").json()["count"])
            tick(count / recipients)
            return count >= recipients

        wait(received, timeout=600, sample=started, every=0.05)
        elapsed = time.perf_counter() - began
        wait(lambda: decided(database, nid) == recipients, timeout=60)
        api_rss, worker_rss = started[1].peak_rss, worker.peak_rss
    return {
        "deliveries": recipients,
        "seconds": round(elapsed, 3),
        "per_second": round(recipients / elapsed, 1),
        "peak_rss_mb": {"api": api_rss >> 20, "worker": worker_rss >> 20},
    }


# -- W3: email fan-out -----------------------------------------------------------------------------------


def w3_email_fanout(
    database: Database, recipients: int, tick: Tick = _noop, *, templated: bool = False
) -> dict[str, Any]:
    """W3; ``templated`` (W3t): each email rendered from a template with
    ``{{ recipient.name }}`` (so once per recipient)."""
    with processes() as started:
        smtp_port, sink = start_smtp_sink(started)
        populate(database, "w3-", recipients, topic="w3", email_domain="example.org")
        database.execute("UPDATE recipients SET name = 'Member ' || id")
        smtp = {
            "SMTP_HOST": "127.0.0.1",
            "SMTP_PORT": str(smtp_port),
            "SMTP_STARTTLS": "false",
            "EMAIL_FROM": "bench@example.org",
        }
        api = start_api(started, database.url)
        start_worker(started, database.url, **smtp)
        time.sleep(1.0)
        content: dict[str, Any] = {"title": "Hello", "message": "email fan-out"}
        if templated:
            put_template(api, "w3t", W3T_TEMPLATE)
            content = {"template": "w3t", "data": {"community": "Chess club"}}
        began = time.perf_counter()
        nid = httpx.post(
            f"{api}/api/notifications",
            headers=HEADERS,
            timeout=30,
            json={"topic": "w3", **content, "channels": ["EMAIL"]},
        ).json()["id"]

        def received() -> bool:
            count = int(httpx.get(f"{sink}/stats").json()["count"])
            tick(count / recipients)
            return count >= recipients

        wait(received, timeout=600, every=0.05)
        elapsed = time.perf_counter() - began
        wait(lambda: decided(database, nid) == recipients, timeout=60)
    return {
        "deliveries": recipients,
        "seconds": round(elapsed, 3),
        "per_second": round(recipients / elapsed, 1),
    }


# -- W4: API stream ---------------------------------------------------------------------------------------


def _loadgen(
    api: str,
    seconds: float,
    *,
    rate: float = 0,
    concurrency: int = 32,
    channels: str = "IN_APP",
    recipients: int = 1000,
    prefix: str = "w4-",
    count: int = 0,
) -> list[dict[str, Any]]:
    with tempfile.NamedTemporaryFile(suffix=".jsonl", delete=False) as out:
        path = out.name
    args = [
        sys.executable,
        "-m",
        "bench.loadgen",
        "--url",
        api,
        "--key",
        ADMIN_KEY,
        "--out",
        path,
        "--seconds",
        str(seconds),
        "--rate",
        str(rate),
        "--concurrency",
        str(concurrency),
        "--channels",
        channels,
        "--recipients",
        str(recipients),
        "--prefix",
        prefix,
        "--count",
        str(count),
    ]
    subprocess.run(args, check=True, timeout=seconds + 120)
    return [json.loads(line) for line in Path(path).read_text().splitlines()]


def w4_api_stream(
    database: Database, seconds: float, rate: float | None = None, tick: Tick = _noop
) -> dict[str, Any]:
    with processes() as started:
        receiver = start_receiver(started)
        database.execute(
            "INSERT INTO recipients (external_id, webhook_url) SELECT 'w4-' || i, %s FROM generate_series(0, 999) AS i",
            (f"{receiver}/hook",),
        )
        api = start_api(started, database.url)
        start_worker(started, database.url)
        time.sleep(1.0)
        saturated = _loadgen(api, seconds, concurrency=32)
        accepted = [r for r in saturated if r["status"] == 202]
        accepted_per_s = len(accepted) / seconds
        tick(0.4)
        # Let the saturation run's backlog drain before measuring latency.
        wait(
            lambda: (
                database.scalar(
                    "SELECT count(*) FROM procrastinate_jobs WHERE status IN ('todo', 'doing')"
                )
                == 0
            ),
            timeout=600,
            every=0.2,
        )
        httpx.post(f"{receiver}/reset")
        target = rate or max(10.0, min(1000.0, accepted_per_s / 2))
        paced = _loadgen(api, seconds, rate=target, channels="IN_APP,WEBHOOK")
        ok = [r for r in paced if r["status"] == 202]
        ids = [r["id"] for r in ok]

        def done() -> bool:
            sent = database.scalar(
                "SELECT count(*) FROM deliveries WHERE notification_id = ANY(%s::uuid[]) AND status = 'sent'",
                (ids,),
            )
            return int(sent) >= 2 * len(ids)

        wait(done, timeout=600, every=0.2)
        tick(0.9)
        arrivals = httpx.get(f"{receiver}/arrivals").json()
        with database.connect() as conn:
            sent_at = dict(
                conn.execute(
                    "SELECT notification_id::text, extract(epoch FROM sent_at) FROM deliveries"
                    " WHERE notification_id = ANY(%s::uuid[]) AND channel = 'IN_APP'",
                    (ids,),
                ).fetchall()
            )
        start = {r["id"]: r["start"] for r in ok}
        in_app = [float(sent_at[i]) - start[i] for i in ids if i in sent_at]
        webhook = [arrivals[i] - start[i] for i in ids if i in arrivals]
        post = [r["end"] - r["start"] for r in ok]
    return {
        "saturation": {
            "accepted": len(accepted),
            "errors": len(saturated) - len(accepted),
            "accepted_per_s": round(accepted_per_s, 1),
        },
        "fixed_rate": {
            "rate": round(target, 1),
            "accepted": len(ok),
            "errors": len(paced) - len(ok),
            "post_ms": percentiles(post),
            "post_to_in_app_ms": percentiles(in_app),
            "post_to_webhook_ms": percentiles(webhook),
            "in_app_sent": len(in_app),
            "webhooks_received": len(webhook),
        },
    }


# -- W5: priority lanes ---------------------------------------------------------------------------------------


def w5_priority(
    database: Database, backlog: int, urgent: int = 100, tick: Tick = _noop
) -> dict[str, Any]:
    database.execute(
        "SELECT notify(ARRAY['w5-low-' || i], '{\"message\": \"newsletter\"}', priority => 'low')"
        " FROM generate_series(1, %s) AS i",
        (backlog,),
    )
    with processes() as started:
        api = start_api(started, database.url)
        start_worker(started, database.url)
        # Urgent ones arrive while the backlog drains, not while the worker starts.
        routed = "SELECT count(*) FROM notifications WHERE status = 'routed'"
        wait(lambda: database.scalar(routed) >= backlog // 20, timeout=120)
        backlog_left_before = backlog - int(database.scalar(routed))
        posted: dict[str, float] = {}
        with httpx.Client(base_url=api, headers=HEADERS, timeout=30) as client:
            for n in range(urgent):
                began = time.time()
                nid = client.post(
                    "/api/notifications",
                    json={
                        "to": [f"w5-urgent-{n}"],
                        "message": "reset your password",
                        "priority": "urgent",
                    },
                ).json()["id"]
                posted[nid] = began
                tick(n / urgent)
                time.sleep(0.02)
        backlog_left = database.scalar(
            "SELECT count(*) FROM notifications WHERE priority = 'low' AND status <> 'routed'"
        )
        wait(
            lambda: (
                database.scalar("SELECT count(*) FROM notifications WHERE status <> 'routed'") == 0
            ),
            timeout=600,
        )
    with database.connect() as conn:
        sent_at = dict(
            conn.execute(
                "SELECT notification_id::text, extract(epoch FROM sent_at) FROM deliveries WHERE notification_id = ANY(%s::uuid[])",
                (list(posted),),
            ).fetchall()
        )
    latencies = [float(sent_at[i]) - t for i, t in posted.items()]
    return {
        "backlog": backlog,
        "urgent": urgent,
        "backlog_left_before_urgent": backlog_left_before,
        "backlog_left_after_urgent": int(backlog_left),
        "urgent_ms": percentiles(latencies),
        "urgent_mean_ms": round(statistics.mean(latencies) * 1000, 1),
    }


# -- W4s: one client, one POST after another ------------------------------------------------------


def w4s_sequential(database: Database, posts: int, tick: Tick = _noop) -> dict[str, Any]:
    """``posts`` single-recipient WEBHOOK notifications POSTed one after another by one
    keep-alive client: accepted/s and POST latency, then delivered/s from the first
    POST to the last webhook's arrival (the one-by-one figure set against Celery)."""
    warmup = 50
    with processes() as started:
        receiver = start_receiver(started)
        database.execute(
            "INSERT INTO recipients (external_id, webhook_url) SELECT 'w4s-' || i, %s FROM generate_series(0, 999) AS i",
            (f"{receiver}/hook",),
        )
        api = start_api(started, database.url)
        start_worker(started, database.url)
        time.sleep(1.0)
        # Warm the API's pool and prepared statements, then count from zero.
        _loadgen(api, 60, concurrency=1, count=warmup, channels="WEBHOOK", prefix="w4s-")
        wait(lambda: _received(receiver) >= warmup, timeout=60)
        httpx.post(f"{receiver}/reset")
        tick(0.1)
        records = _loadgen(api, 600, concurrency=1, count=posts, channels="WEBHOOK", prefix="w4s-")
        ok = [r for r in records if r["status"] == 202]
        tick(0.8)
        wait(lambda: _received(receiver) >= len(ok), timeout=600, every=0.05)
        arrivals = httpx.get(f"{receiver}/arrivals").json()
        ids = [r["id"] for r in ok]
        wait(lambda: _sent(database, ids) == len(ids), timeout=60)
    began = min(r["start"] for r in records)
    posted = max(r["end"] for r in records) - began
    delivered = max(arrivals[i] for i in ids) - began
    return {
        "posts": len(records),
        "accepted": len(ok),
        "errors": len(records) - len(ok),
        "received": len([i for i in ids if i in arrivals]),
        "sent": _sent(database, ids),
        "seconds": round(posted, 3),
        "accepted_per_s": round(len(ok) / posted, 1),
        "post_ms": percentiles([r["end"] - r["start"] for r in ok], digits=2),
        "delivered_seconds": round(delivered, 3),
        "delivered_per_s": round(len(ok) / delivered, 1),
    }


def _received(receiver: str) -> int:
    return int(httpx.get(f"{receiver}/stats").json()["count"])


def _sent(database: Database, ids: list[str]) -> int:
    return int(
        database.scalar(
            "SELECT count(*) FROM deliveries WHERE notification_id = ANY(%s::uuid[]) AND status = 'sent'",
            (ids,),
        )
    )


# -- WN: postbell.notify() from a host app ------------------------------------------------------------


def wn_notify(database: Database, calls: int, tick: Tick = _noop) -> dict[str, Any]:
    """``calls`` ``postbell.notify()`` calls from one connection, one transaction each
    (a host app notifying as it commits its own writes), a worker routing meanwhile:
    calls/s and call latency, then how long until every one was routed."""
    warmup = 50
    body = '{"message": "someone replied to your post"}'
    statement = b"SELECT postbell.notify(ARRAY[%s], %s::jsonb)"
    with processes() as started:
        start_worker(started, database.url)
        with database.connect() as conn:  # autocommit: each call is its own transaction
            for i in range(warmup):
                conn.execute(statement, (f"wn-{i}", body))
            times = []
            began = time.perf_counter()
            for i in range(calls):
                t = time.perf_counter()
                conn.execute(statement, (f"wn-{i % 1000}", body))
                times.append(time.perf_counter() - t)
                if i % 500 == 0:
                    tick(0.8 * i / calls)
            elapsed = time.perf_counter() - began
        routed = "SELECT count(*) FROM notifications WHERE status = 'routed'"
        wait(lambda: int(database.scalar(routed)) == warmup + calls, timeout=600, every=0.05)
        routed_after = time.perf_counter() - began
    return {
        "calls": calls,
        "routed": int(database.scalar(routed)) - warmup,
        "seconds": round(elapsed, 3),
        "calls_per_s": round(calls / elapsed, 1),
        "call_ms": percentiles(times, digits=2),
        "all_routed_seconds": round(routed_after, 3),
    }


# -- baseline (c): Celery + Redis, one task per webhook delivery -------------------------------------


CELERY_MISSING = (
    "celery is not installed (a bench-only dependency): .venv/bin/pip install -e '.[bench]'"
)


def baseline_celery(deliveries: int, concurrency: int = 2, tick: Tick = _noop) -> dict[str, Any]:
    """(c) Celery + Redis: one producer enqueues one task per webhook delivery; a
    prefork worker (``concurrency`` processes, on the same 2 cores) POSTs each to the
    same local receiver as W2. Answers ``{"skipped": reason}`` without celery or Redis."""
    try:
        import redis

        from bench import celery_tasks
    except ImportError:
        return {"skipped": CELERY_MISSING}
    broker = celery_tasks.BROKER
    try:
        redis.Redis.from_url(broker, socket_connect_timeout=2).ping()
    except redis.RedisError as error:
        return {"skipped": f"no Redis at {broker} ({error})"}
    queue = f"pbbench-{uuid.uuid4().hex[:10]}"
    environ = dict(os.environ, POSTBELL_BENCH_CELERY_QUEUE=queue, POSTBELL_BENCH_REDIS_URL=broker)
    args = [sys.executable, "-m", "celery", "-A", "bench.celery_tasks", "worker", "-P", "prefork"]
    args += ["-c", str(concurrency), "-Q", queue, "--loglevel", "WARNING"]
    args += ["--without-gossip", "--without-mingle", "--without-heartbeat"]
    deliver = celery_tasks.deliver
    try:
        with processes() as started:
            receiver = start_receiver(started)
            started.append(Process(args, environ, "celery"))

            def send(n: int, path: str) -> None:
                delivery = {
                    "id": str(n),
                    "notification_id": str(uuid.uuid4()),
                    "recipient": f"celery-{n}",
                    "title": None,
                    "body": "webhook fan-out",
                    "action_url": None,
                    "category": None,
                    "priority": "normal",
                    "metadata": {},
                }
                deliver.apply_async((f"{receiver}{path}", delivery), queue=queue)

            # The worker is up (and every child warm) once these came through.
            for n in range(4 * concurrency):
                send(n, "/warmup")
            wait(lambda: _received(receiver) >= 4 * concurrency, timeout=120, every=0.05)
            httpx.post(f"{receiver}/reset")
            began = time.perf_counter()
            for n in range(deliveries):
                send(n, "/hook")
            enqueued = time.perf_counter() - began
            tick(0.3)

            def received() -> bool:
                count = _received(receiver)
                tick(0.3 + 0.7 * count / deliveries)
                return count >= deliveries

            wait(received, timeout=600, every=0.05)
            elapsed = time.perf_counter() - began
            count = _received(receiver)
    finally:
        client = redis.Redis.from_url(broker)
        client.delete(queue, f"_kombu.binding.{queue}")
    return {
        "deliveries": deliveries,
        "received": count,
        "concurrency": concurrency,
        "enqueue_s": round(enqueued, 3),
        "seconds": round(elapsed, 3),
        "per_second": round(deliveries / elapsed, 1),
    }


# -- W9: what a delivery costs the database (the model of docs/scaling.md) -------------------------


def _postgres_cpu(postmaster: int) -> float:
    """CPU seconds used so far by a Postgres server: its postmaster and every child
    (backends, WAL writer, checkpointer)."""
    import psutil

    total = 0.0
    try:
        root = psutil.Process(postmaster)
        for process in [root, *root.children(recursive=True)]:
            try:
                times = process.cpu_times()
            except psutil.Error:
                continue
            total += times.user + times.system + times.children_user + times.children_system
    except psutil.Error:
        pass
    return total


def _footprint(database: Database, postmaster: int) -> dict[str, float]:
    with database.connect() as conn:
        row = conn.execute(
            # deliveries is partitioned (0030): the sum of its partitions
            "SELECT pg_current_wal_lsn()::text,"
            " (SELECT sum(pg_total_relation_size(relid)) FROM pg_partition_tree('deliveries')),"
            " pg_total_relation_size('notifications'),"
            " (SELECT count(*) FROM deliveries)"
        ).fetchone()
    assert row is not None
    return {
        "lsn": row[0],
        "deliveries_bytes": float(row[1]),
        "notifications_bytes": float(row[2]),
        "deliveries": float(row[3]),
        "cpu": _postgres_cpu(postmaster),
    }


def _cost(database: Database, before: dict[str, Any], after: dict[str, Any]) -> dict[str, Any]:
    n = after["deliveries"] - before["deliveries"]
    wal = database.scalar("SELECT pg_wal_lsn_diff(%s, %s)", (after["lsn"], before["lsn"]))
    cpu = after["cpu"] - before["cpu"]
    return {
        "deliveries": int(n),
        "wal_bytes_per_delivery": round(float(wal) / n, 1),
        "table_bytes_per_delivery": round(
            (after["deliveries_bytes"] - before["deliveries_bytes"]) / n, 1
        ),
        "postgres_cpu_s": round(cpu, 3),
        "deliveries_per_postgres_core_s": round(n / cpu, 1) if cpu > 0 else None,
    }


def _connections(database: Database) -> dict[str, int]:
    with database.connect() as conn:
        rows = conn.execute(
            "SELECT coalesce(nullif(application_name, ''), '?'), count(*) FROM pg_stat_activity"
            " WHERE datname = current_database() AND pid <> pg_backend_pid() GROUP BY 1"
        ).fetchall()
    return {str(name): int(count) for name, count in rows}


def w9_footprint(
    members: int, tick: Tick = _noop, fanout_parallel: int | None = None
) -> dict[str, Any]:
    """What a delivery costs Postgres, on a private embedded server (so the WAL and
    CPU counted are this workload's alone, not other databases' on a shared server):
    an IN_APP topic fan-out to ``members`` (every tenth opted out) and a WEBHOOK
    fan-out to a tenth of them (at most 10,000); for each, WAL bytes (``pg_current_wal_lsn``), table +
    index bytes of ``deliveries`` (``pg_total_relation_size`` of its partitions) and Postgres CPU
    seconds per delivery; and the connections each process holds. ``fanout_parallel``:
    the worker's POSTBELL_FANOUT_PARALLEL (unset: postbell's default)."""
    import shutil

    from postbell.app.core import embedded

    folder = Path(tempfile.mkdtemp(prefix="postbell-bench-w9-"))
    pgdata = folder / "pg"
    try:
        url = embedded.start(pgdata)
        postmaster = int((pgdata / "postmaster.pid").read_text().split()[0])
        admin = url.replace(f"/{embedded.DATABASE}?", "/postgres?")
        from bench.env import server_settings

        database = Database.create(admin, "pbbench_w9")
        database.migrate()
        webhooks = max(1, min(members // 10, 10_000))
        with processes() as started:
            receiver = start_receiver(started)
            populate(database, "w9-", members, topic="w9", opted_out_every=10)
            populate(database, "w9h-", webhooks, topic="w9h", webhook_url=f"{receiver}/hook")
            database.execute("CHECKPOINT")
            api = start_api(started, database.url)
            lanes = (
                {}
                if fanout_parallel is None
                else {"POSTBELL_FANOUT_PARALLEL": str(fanout_parallel)}
            )
            start_worker(started, database.url, **lanes)
            time.sleep(1.0)
            connections = _connections(database)
            tick(0.2)
            before = _footprint(database, postmaster)
            began = time.perf_counter()
            nid = httpx.post(
                f"{api}/api/notifications",
                headers=HEADERS,
                timeout=30,
                json={
                    "topic": "w9",
                    "message": "Meet-up",
                    "channels": ["IN_APP"],
                    "category": "bench",
                },
            ).json()["id"]
            wait(
                lambda: (
                    database.scalar("SELECT status FROM notifications WHERE id = %s", (nid,))
                    == "routed"
                ),
                timeout=600,
                sample=started,
            )
            in_app_s = time.perf_counter() - began
            after_in_app = _footprint(database, postmaster)
            # The million rows just written are what autovacuum (on in this server)
            # vacuums next: done here, outside both counts, so that the WEBHOOK
            # fan-out's WAL is its own (it measured ~11 KB per delivery with that
            # vacuum inside it, ~1.3 KB without on the machine's server).
            database.execute("VACUUM (ANALYZE) deliveries")
            database.execute("CHECKPOINT")
            middle = _footprint(database, postmaster)
            tick(0.6)
            began = time.perf_counter()
            hook = httpx.post(
                f"{api}/api/notifications",
                headers=HEADERS,
                timeout=30,
                json={"topic": "w9h", "message": "webhook", "channels": ["WEBHOOK"]},
            ).json()["id"]
            wait(lambda: decided(database, hook) == webhooks, timeout=600, sample=started)
            webhook_s = time.perf_counter() - began
            after = _footprint(database, postmaster)
            connections_busy = _connections(database)
            worker_rss = started[-1].peak_rss
        in_app = _cost(database, before, after_in_app)
        in_app["seconds"] = round(in_app_s, 3)
        webhook = _cost(database, middle, after)
        webhook["seconds"] = round(webhook_s, 3)
        settings = server_settings(admin)
        database.drop()
    finally:
        embedded.stop(pgdata)
        shutil.rmtree(folder, ignore_errors=True)
    return {
        "members": members,
        "in_app": in_app,
        "webhook": webhook,
        "connections_idle": connections,
        "connections_busy": connections_busy,
        "worker_peak_rss_mb": worker_rss >> 20,
        "fanout_parallel": fanout_parallel,
        "server_settings": settings,
    }
