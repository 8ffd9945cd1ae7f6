"""Controls under real load, with worker processes: urgent work overtakes a backlog,
provider pacing holds across two workers, a 100,000-member topic fans out in bounded
memory."""

from __future__ import annotations

import time
from collections import Counter

import psutil
import psycopg

from postbell.app.core.db import conninfo
from tests.e2e.procs import background, env
from tests.e2e.test_processes import poll
from tests.peers.webhooks import WebhookReceiver


def scalar(url: str, sql: str, params: tuple[object, ...] = ()) -> object:
    with psycopg.connect(url) as conn:
        row = conn.execute(sql.encode(), params).fetchone()
    return row[0] if row else None


def test_urgent_overtakes_a_backlog_of_thousands(fresh_database_url: str) -> None:
    """3,000 low-priority notifications wait in the route queue; an urgent one sent
    after them is routed (and visible in its inbox) before nearly all of them."""
    with psycopg.connect(fresh_database_url, autocommit=True) as conn:
        conn.execute(
            "SELECT postbell.notify(ARRAY['low-' || i], '{\"message\": \"newsletter\"}', priority => 'low')"
            " FROM generate_series(1, 3000) AS i"
        )
        (urgent,) = conn.execute(
            "SELECT postbell.notify(ARRAY['alice'], '{\"message\": \"reset your password\"}', priority => 'urgent')"
        ).fetchone()
    # one statement, so one transaction: the 3,000 low ones share 15 route jobs of
    # 200 (migration 0029), the urgent one has its own
    assert (
        scalar(
            fresh_database_url,
            "SELECT count(*) FROM postbell.procrastinate_jobs WHERE status = 'todo'",
        )
        == 16
    )
    with background(
        "worker",
        "--concurrency",
        "2",
        environ=env(DATABASE_URL=fresh_database_url, POSTBELL_LOG_LEVEL="warning"),
    ):
        poll(
            lambda: (
                scalar(
                    fresh_database_url,
                    "SELECT count(*) FROM postbell.notifications WHERE status = 'routed'",
                )
                == 3001
            ),
            timeout=120,
        )
    before = scalar(
        fresh_database_url,
        "SELECT count(*) FROM postbell.deliveries AS d, postbell.deliveries AS u"
        " WHERE u.notification_id = %s AND d.notification_id <> u.notification_id AND d.sent_at < u.sent_at",
        (urgent,),
    )
    assert isinstance(before, int) and before < 300, (
        f"{before} of 3,000 low-priority deliveries went first"
    )


def test_provider_pacing_holds_across_two_workers(
    fresh_database_url: str, receiver: WebhookReceiver
) -> None:
    """POSTBELL_PROVIDER_RATE_WEBHOOK=4/s with two worker processes: one bucket in
    Postgres, so together they never go faster; nothing fails, deliveries wait."""
    path = f"/paced/{time.monotonic_ns()}"
    with psycopg.connect(fresh_database_url, autocommit=True) as conn:
        conn.execute(
            "INSERT INTO postbell.recipients (external_id, webhook_url) SELECT 'p' || i, %s"
            " FROM generate_series(1, 24) AS i",
            (receiver.url_for(path),),
        )
        # Four notifications, so that both workers get deliver jobs at once.
        for part in range(4):
            conn.execute(
                "SELECT postbell.notify((SELECT array_agg('p' || i) FROM generate_series(%s::int, %s::int) AS i),"
                " '{\"message\": \"paced\"}', ARRAY['WEBHOOK'])",
                (part * 6 + 1, part * 6 + 6),
            )
    environ = env(
        DATABASE_URL=fresh_database_url,
        POSTBELL_PROVIDER_RATE_WEBHOOK="4/s",
        POSTBELL_WEBHOOK_ALLOW_PRIVATE="1",
        POSTBELL_POLL_INTERVAL="0.1",
        POSTBELL_LOG_FORMAT="json",
    )
    with background("worker", environ=environ) as one, background("worker", environ=environ) as two:
        poll(
            lambda: (
                scalar(
                    fresh_database_url,
                    "SELECT count(*) FROM postbell.deliveries WHERE status = 'sent'",
                )
                == 24
            ),
            timeout=60,
        )
        outputs = [one.output(), two.output()]
    with psycopg.connect(fresh_database_url) as conn:
        stamps = sorted(
            r[0].timestamp()
            for r in conn.execute("SELECT sent_at FROM postbell.deliveries").fetchall()
        )
    # A bucket of 4 tokens refilled at 4/s: at most 4 + 4 in any second, and the 24th
    # no earlier than (24 - 4) / 4 = 5 s after the first.
    busiest = max(sum(1 for t in stamps if start <= t < start + 1.0) for start in stamps)
    assert busiest <= 8, f"{busiest} sends within one second"
    assert stamps[-1] - stamps[0] >= 4.5
    assert all('"delivered"' in out for out in outputs), "both workers took part"
    assert "provider_pacing" not in "".join(  # waiting is never an error
        line for out in outputs for line in out.splitlines() if '"level": "error"' in line
    )


def test_topic_of_100k_members_fans_out_in_bounded_memory(fresh_database_url: str) -> None:
    """One notification to a 100,000-member topic (10% opted out): every member gets a
    recorded delivery, and the worker's memory stays bounded (members never sit in
    Python: the fan-out is INSERT ... SELECT in chunks)."""
    with psycopg.connect(fresh_database_url, autocommit=True) as conn:
        conn.execute("INSERT INTO postbell.topics (key) VALUES ('community-42')")
        conn.execute(
            "INSERT INTO postbell.recipients (external_id) SELECT 'm' || i FROM generate_series(1, 100000) AS i"
        )
        conn.execute(
            "INSERT INTO postbell.topic_subscribers (topic_key, recipient_id) SELECT 'community-42', id FROM postbell.recipients"
        )
        conn.execute(
            "INSERT INTO postbell.preferences (recipient_id, categories)"
            " SELECT id, CASE WHEN id % 10 = 0 THEN '{\"events\": {\"IN_APP\": false}}' ELSE '{}' END::jsonb"
            " FROM postbell.recipients"
        )
        conn.execute("INSERT INTO postbell.categories (key) VALUES ('events')")
    with background(
        "worker", environ=env(DATABASE_URL=fresh_database_url, POSTBELL_LOG_FORMAT="json")
    ) as worker:
        poll(lambda: "worker_started" in worker.output(), timeout=30)
        process = psutil.Process(worker.pid)
        idle_rss = process.memory_info().rss
        with psycopg.connect(conninfo(fresh_database_url), autocommit=True) as conn:
            (nid,) = conn.execute(
                "INSERT INTO postbell.notifications (status, body, topic, category, channels)"
                " VALUES ('queued', 'Meet-up on Friday', 'community-42', 'events', ARRAY['IN_APP'])"
                " RETURNING id"
            ).fetchone()
            conn.execute(
                "SELECT procrastinate_defer_jobs_v1(ARRAY[postbell.route_job(%s, 'normal', NULL)])",
                (nid,),
            )
        peak = idle_rss
        deadline = time.monotonic() + 120
        while (
            scalar(
                fresh_database_url,
                "SELECT status FROM postbell.notifications WHERE id = %s",
                (nid,),
            )
            != "routed"
        ):
            peak = max(peak, process.memory_info().rss)
            assert time.monotonic() < deadline, "fan-out did not finish"
            time.sleep(0.05)
    with psycopg.connect(fresh_database_url) as conn:
        counts = dict(
            conn.execute(
                "SELECT coalesce(reason, status), count(*) FROM postbell.deliveries WHERE notification_id = %s GROUP BY 1",
                (nid,),
            ).fetchall()
        )
    assert counts == {"sent": 90_000, "opted_out": 10_000}
    assert peak - idle_rss < 60 * 1024 * 1024, f"worker grew by {(peak - idle_rss) >> 20} MB"
    assert Counter(counts).total() == 100_000
