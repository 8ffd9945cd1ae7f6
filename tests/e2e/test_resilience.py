"""Nothing lost: a worker killed with SIGKILL mid-batch, a Postgres restart, an SMTP
outage. Each may delay deliveries; none may drop one."""

from __future__ import annotations

import os
import signal
from collections import Counter
from pathlib import Path

import httpx
import psycopg

from postbell.app.core import embedded
from tests.conftest import ADMIN_KEY
from tests.e2e.procs import background, env, wait_http
from tests.e2e.test_processes import poll
from tests.peers.net import free_port
from tests.peers.smtp import SmtpPeer
from tests.peers.webhooks import WebhookReceiver

HEADERS = {"Authorization": f"Bearer {ADMIN_KEY}"}


def counts(url: str) -> dict[str, int]:
    with psycopg.connect(url) as conn:
        rows = conn.execute(
            "SELECT status, count(*) FROM postbell.deliveries GROUP BY status"
        ).fetchall()
    return dict(rows)


def test_sigkill_mid_batch_loses_nothing(fresh_database_url: str, smtp: SmtpPeer) -> None:
    """A worker killed while a batch is at the relay: its jobs are reaped once its
    heartbeat stops, another worker finishes them; a resent email keeps its Message-ID."""
    environ = env(
        DATABASE_URL=fresh_database_url,
        POSTBELL_HEARTBEAT_SECONDS="0.5",  # stalled after 1.5 s
        POSTBELL_POLL_INTERVAL="0.2",
        POSTBELL_LOG_FORMAT="json",
        **smtp.env(),
    )
    domain = f"kill{os.getpid()}.example.org"
    with psycopg.connect(fresh_database_url, autocommit=True) as conn:
        conn.execute(
            "INSERT INTO postbell.recipients (external_id, email)"
            " SELECT 'k' || i, 'k' || i || %s FROM generate_series(1, 40) AS i",
            ("@" + domain,),
        )
        conn.execute(
            "SELECT postbell.notify((SELECT array_agg('k' || i) FROM generate_series(1, 40) AS i),"
            " '{\"message\": \"survive\"}', ARRAY['EMAIL'])"
        )
    smtp.delay = 0.5
    try:
        with background("worker", environ=environ) as victim:
            poll(
                lambda: any(r.rcpt_tos[0].endswith(domain) for r in list(smtp.received)), timeout=20
            )
            os.kill(victim.pid, signal.SIGKILL)
            victim.wait(10)
        assert counts(fresh_database_url).get("pending", 0) > 0  # it died mid-batch
        smtp.delay = 0.0
        with background("worker", environ=environ):
            poll(lambda: counts(fresh_database_url) == {"sent": 40}, timeout=60)
    finally:
        smtp.delay = 0.0
    received = [r for r in smtp.received if r.rcpt_tos[0].endswith(domain)]
    per_address = Counter(r.rcpt_tos[0] for r in received)
    assert len(per_address) == 40  # everyone got it (some twice: at least once)
    ids_per_address: dict[str, set[str]] = {}
    for r in received:
        ids_per_address.setdefault(r.rcpt_tos[0], set()).add(str(r.message["Message-ID"]))
    assert all(len(ids) == 1 for ids in ids_per_address.values())  # duplicates share the id


def test_smtp_outage_delays_only_email(
    fresh_database_url: str, smtp: SmtpPeer, receiver: WebhookReceiver
) -> None:
    """The relay is down: IN_APP and WEBHOOK are delivered at once, email after the
    relay returns; nothing is lost."""
    environ = env(
        DATABASE_URL=fresh_database_url,
        POSTBELL_POLL_INTERVAL="0.2",
        POSTBELL_RETRY_BASE_SECONDS="0.3",
        POSTBELL_RETRY_MAX_SECONDS="1",
        POSTBELL_RETRY_MAX_ATTEMPTS="30",
        POSTBELL_WEBHOOK_ALLOW_PRIVATE="1",
        **smtp.env(),
    )
    path = f"/outage/{os.getpid()}"
    with psycopg.connect(fresh_database_url, autocommit=True) as conn:
        conn.execute(
            "INSERT INTO postbell.recipients (external_id, email, webhook_url)"
            " VALUES ('o1', 'o1@outage.example.org', %s)",
            (receiver.url_for(path),),
        )
        conn.execute(
            "SELECT postbell.notify(ARRAY['o1'], '{\"message\": \"outage\"}', ARRAY['IN_APP', 'EMAIL', 'WEBHOOK'])"
        )
    smtp.stop()
    try:
        with background("worker", environ=environ):
            poll(lambda: counts(fresh_database_url) == {"sent": 2, "failed": 1}, timeout=20)
            assert len(receiver.at(path)) == 1
            with psycopg.connect(fresh_database_url) as conn:
                (error,) = conn.execute(
                    "SELECT last_error FROM postbell.deliveries WHERE channel = 'EMAIL'"
                ).fetchone()
            assert "SMTP connection" in error
            smtp.start()
            poll(lambda: counts(fresh_database_url) == {"sent": 3}, timeout=30)
    finally:
        if smtp._controller is None:
            smtp.start()
    assert len(smtp.to("o1@outage.example.org")) == 1


def test_postgres_restart_loses_nothing(pg_dir: Path) -> None:
    """The database restarts under a running API and worker: requests fail with 503
    meanwhile, every accepted notification is delivered, the worker carries on."""
    pgdata = pg_dir / "pg"
    url = embedded.start(pgdata)
    port = free_port()
    environ = env(
        DATABASE_URL=url,
        PORT=str(port),
        POSTBELL_HOST="127.0.0.1",
        POSTBELL_ADMIN_KEY=ADMIN_KEY,
        POSTBELL_POLL_INTERVAL="0.2",
        POSTBELL_LOG_FORMAT="json",
    )
    base = f"http://127.0.0.1:{port}"
    from tests.e2e.procs import run

    assert run("migrate", environ=environ).returncode == 0
    accepted: list[str] = []
    try:
        with background("serve", environ=environ), background("worker", environ=environ) as worker:
            wait_http(f"{base}/health")
            with httpx.Client(base_url=base, headers=HEADERS, timeout=10) as client:
                for n in range(5):
                    accepted.append(
                        client.post(
                            "/api/notifications", json={"to": [f"r{n}"], "message": "before"}
                        ).json()["id"]
                    )
                embedded.stop(pgdata)
                down = client.post("/api/notifications", json={"to": ["r"], "message": "during"})
                assert (down.status_code, down.json()["error"]) == (503, "database_unavailable")
                assert client.get("/ready").status_code == 503
                embedded.start(pgdata)
                poll(lambda: client.get("/ready").status_code == 200, timeout=30)
                for n in range(5):
                    response = poll(lambda n=n: _post(client, n), timeout=30)
                    accepted.append(response)

                def all_sent() -> bool:
                    states = [
                        client.get(f"/api/notifications/{i}").json()["delivery_counts"]
                        for i in accepted
                    ]
                    return all(s == {"sent": 1} for s in states)

                try:
                    poll(all_sent, timeout=60)
                except AssertionError:
                    states = [client.get(f"/api/notifications/{i}").json() for i in accepted]
                    print("STATES", [(st["status"], st["delivery_counts"]) for st in states])
                    print("WORKER", worker.output()[-6000:])
                    raise
            assert worker.poll() is None  # still running
    finally:
        embedded.stop(pgdata)


def _post(client: httpx.Client, n: int) -> str | None:
    response = client.post("/api/notifications", json={"to": [f"after{n}"], "message": "after"})
    return str(response.json()["id"]) if response.status_code == 202 else None


def test_postgres_restart_mid_send_and_mid_route_loses_nothing(pg_dir: Path) -> None:
    """The database stops while work is provably in flight: a webhook batch is inside a
    receiver that holds it (sent, not yet answered, so not yet recorded) and a 60,000-member
    topic is half routed (its first chunk committed, the rest not). After the restart
    every delivery ends sent, each webhook reached the receiver at least once under
    its stable X-Postbell-Delivery id, and the topic has exactly one delivery per
    member (the resumed routing made no duplicates)."""
    pgdata = pg_dir / "pg"
    url = embedded.start(pgdata)
    slow = WebhookReceiver().start()
    port = free_port()
    environ = env(
        DATABASE_URL=url,
        PORT=str(port),
        POSTBELL_HOST="127.0.0.1",
        POSTBELL_ADMIN_KEY=ADMIN_KEY,
        POSTBELL_POLL_INTERVAL="0.2",
        POSTBELL_RETRY_BASE_SECONDS="0.3",
        POSTBELL_RETRY_MAX_SECONDS="1",
        POSTBELL_WEBHOOK_ALLOW_ADDRESSES=slow.allow_entry,
        POSTBELL_LOG_FORMAT="json",
    )
    base = f"http://127.0.0.1:{port}"
    from tests.e2e.procs import run

    assert run("migrate", environ=environ).returncode == 0
    members = 60_000
    hooks = 20
    gate = slow.hold(*(f"/slow/h{n}" for n in range(hooks)))
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(
            "INSERT INTO postbell.recipients (external_id) SELECT 'm' || i FROM generate_series(1, %s) i",
            (members,),
        )
        conn.execute("INSERT INTO postbell.topics (key) VALUES ('big')")
        conn.execute(
            "INSERT INTO postbell.topic_subscribers (topic_key, recipient_id)"
            " SELECT 'big', id FROM postbell.recipients WHERE external_id LIKE 'm%'"
        )
        for n in range(hooks):
            conn.execute(
                "INSERT INTO postbell.recipients (external_id, webhook_url) VALUES (%s, %s)",
                (f"h{n}", slow.url_for(f"/slow/h{n}")),
            )
    try:
        with background("serve", environ=environ), background("worker", environ=environ) as worker:
            wait_http(f"{base}/health")
            with httpx.Client(base_url=base, headers=HEADERS, timeout=10) as client:
                hook_id = client.post(
                    "/api/notifications",
                    json={
                        "to": [f"h{n}" for n in range(hooks)],
                        "message": "hook",
                        "channels": ["WEBHOOK"],
                    },
                ).json()["id"]
                poll(lambda: len(slow.received) >= hooks, timeout=30)  # inside the receiver
                topic_id = client.post(
                    "/api/notifications", json={"topic": "big", "message": "fan-out"}
                ).json()["id"]

                def half_routed() -> bool:
                    with psycopg.connect(url) as conn:
                        row = conn.execute(
                            "SELECT EXISTS (SELECT FROM postbell.deliveries WHERE notification_id = n.id),"
                            " routed_at FROM postbell.notifications AS n WHERE id = %s",
                            (topic_id,),
                        ).fetchone()
                    return bool(row and row[0] and row[1] is None)

                poll(half_routed, timeout=60, interval=0.01)
                in_flight = len(slow.received) - len(slow.accepted)
                embedded.stop(pgdata)
                assert in_flight == hooks  # every webhook sent and not yet answered
                gate.set()  # the receiver answers now, while the database is down
                embedded.start(pgdata)
                poll(lambda: client.get("/ready").status_code == 200, timeout=30)

                def settled() -> bool:
                    hooks_done = client.get(f"/api/notifications/{hook_id}").json()
                    topic_done = client.get(f"/api/notifications/{topic_id}").json()
                    return hooks_done["delivery_counts"] == {"sent": hooks} and topic_done[
                        "delivery_counts"
                    ] == {"sent": members}

                try:
                    poll(settled, timeout=120)
                except AssertionError:
                    print("WORKER", worker.output()[-6000:])
                    raise
            assert worker.poll() is None
        with psycopg.connect(url) as conn:
            (dupes,) = conn.execute(
                "SELECT count(*) FROM (SELECT recipient_id FROM postbell.deliveries"
                " WHERE notification_id = %s GROUP BY recipient_id HAVING count(*) > 1) d",
                (topic_id,),
            ).fetchone()
            hook_ids = {
                str(r[0])
                for r in conn.execute(
                    "SELECT id FROM postbell.deliveries WHERE notification_id = %s", (hook_id,)
                )
            }
        assert dupes == 0
        received_ids = {r.headers.get("X-Postbell-Delivery") for r in slow.received}
        assert hook_ids <= received_ids  # every webhook arrived (at least once)
    finally:
        slow.stop()
        embedded.stop(pgdata)
