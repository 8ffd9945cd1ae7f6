"""Workflow workloads of issue 16: W6 (a 3-step workflow to a topic, half the members
reading the in-app item within the delay) and W7 (a host's event stream of triggers
into a digesting workflow). Same conventions as ``workloads``: sizes are arguments,
so ``tests/e2e/test_bench_smoke.py`` runs them tiny."""

from __future__ import annotations

import math
import threading
import time
from typing import Any

import httpx

from bench.env import Database, processes, start_api, start_smtp_sink, start_worker
from bench.workloads import HEADERS, Tick, _noop, percentiles, populate, wait


def _put_workflow(api: str, key: str, body: dict[str, Any]) -> None:
    response = httpx.put(f"{api}/api/workflows/{key}", headers=HEADERS, timeout=30, json=body)
    assert response.status_code == 200, response.text


def _count(database: Database, query: str, params: tuple[Any, ...] = ()) -> int:
    return int(database.scalar(query, params) or 0)


# -- W6: IN_APP, delay, EMAIL if unread ------------------------------------------------------


def w6_unread_email(
    database: Database, members: int, tick: Tick = _noop, *, delay: str = "2s"
) -> dict[str, Any]:
    """One trigger of [IN_APP send, delay, EMAIL ``if unread``] to a ``members``-member
    topic; every even-numbered member reads the item as soon as it is in the inbox
    (one UPDATE every 20 ms, as readers would, well within the delay). Measured: each
    send step's deliveries/s, seconds from each run's due time (its IN_APP
    notification's creation + the delay) to its EMAIL being sent, and the EMAILs
    sent, which must be exactly the odd (unread) members."""
    with processes() as started:
        smtp_port, sink = start_smtp_sink(started)
        populate(database, "w6-", members, topic="w6", email_domain="example.org")
        api = start_api(started, database.url)
        worker = start_worker(
            started,
            database.url,
            SMTP_HOST="127.0.0.1",
            SMTP_PORT=str(smtp_port),
            SMTP_STARTTLS="false",
            EMAIL_FROM="bench@example.org",
        )
        _put_workflow(
            api,
            "w6",
            {
                "steps": [
                    {"type": "send", "channels": ["IN_APP"], "message": "New post"},
                    {"type": "delay", "for": delay},
                    {
                        "type": "send",
                        "channels": ["EMAIL"],
                        "message": "You have an unread post",
                        "if": {"in_app": "unread"},
                    },
                ]
            },
        )
        time.sleep(1.0)
        stop = threading.Event()

        def readers() -> None:
            with database.connect() as conn:
                while not stop.is_set():
                    conn.execute(
                        "UPDATE deliveries AS d SET read_at = now(), seen_at = now()"
                        "  FROM recipients AS r"
                        " WHERE r.id = d.recipient_id AND d.channel = 'IN_APP'"
                        "   AND d.status = 'sent' AND d.read_at IS NULL"
                        "   AND substr(r.external_id, 4)::int % 2 = 0"
                    )
                    conn.commit()
                    time.sleep(0.02)

        reading = threading.Thread(target=readers, daemon=True)
        reading.start()
        response = httpx.post(
            f"{api}/api/workflows/w6/trigger", headers=HEADERS, timeout=120, json={"topic": "w6"}
        )
        assert response.status_code == 202, response.text
        trigger_id = response.json()["id"]
        unread = (members + 1) // 2  # w6-1 .. w6-N: the odd ones

        def finished() -> bool:
            done = _count(
                database,
                "SELECT count(*) FROM workflow_runs WHERE trigger_id = %s AND state = 'done'",
                (trigger_id,),
            )
            tick(done / members)
            return done == members

        wait(finished, timeout=900, sample=started, every=0.1)
        # the EMAILs made must be sent (or recorded) too
        wait(
            lambda: (
                _count(
                    database,
                    "SELECT count(*) FROM deliveries WHERE channel = 'EMAIL'"
                    " AND status IN ('sent', 'skipped', 'dead')",
                )
                == _count(database, "SELECT count(*) FROM deliveries WHERE channel = 'EMAIL'")
            ),
            timeout=600,
            sample=started,
        )
        stop.set()
        reading.join()
        received = int(httpx.get(f"{sink}/stats").json()["count"])
        worker_rss = worker.peak_rss
    with database.connect() as conn:
        in_app = conn.execute(
            "SELECT count(*), extract(epoch FROM max(d.sent_at) - t.created_at)"
            "  FROM deliveries AS d JOIN notifications AS n ON n.id = d.notification_id"
            "  JOIN workflow_triggers AS t ON t.id = %s"
            " WHERE d.channel = 'IN_APP' AND d.status = 'sent'"
            "   AND n.metadata -> 'workflow' ->> 'key' = 'w6' GROUP BY t.created_at",
            (trigger_id,),
        ).fetchone()
        lag = [
            float(v)
            for (v,) in conn.execute(
                "SELECT extract(epoch FROM d.sent_at - (n0.created_at + %s::interval))"
                "  FROM workflow_runs AS w"
                "  JOIN notifications AS n0 ON n0.id = w.notification_ids[1]"
                "  JOIN deliveries AS d ON d.notification_id = w.notification_ids[2]"
                " WHERE w.trigger_id = %s AND d.status = 'sent'",
                (delay, trigger_id),
            ).fetchall()
        ]
        email = conn.execute(
            "SELECT count(*), extract(epoch FROM max(d.sent_at) - min(n.created_at)),"
            "       count(*) FILTER (WHERE substr(r.external_id, 4)::int % 2 = 1)"
            "  FROM deliveries AS d JOIN notifications AS n ON n.id = d.notification_id"
            "  JOIN recipients AS r ON r.id = d.recipient_id"
            " WHERE d.channel = 'EMAIL' AND d.status = 'sent'"
        ).fetchone()
    assert in_app is not None and email is not None
    emails, email_seconds, emails_to_unread = int(email[0]), float(email[1] or 0), int(email[2])
    return {
        "members": members,
        "delay": delay,
        "in_app": {
            "deliveries": int(in_app[0]),
            "seconds": round(float(in_app[1]), 3),
            "per_second": round(int(in_app[0]) / float(in_app[1]), 1),
        },
        "email": {
            "deliveries": emails,
            "seconds": round(email_seconds, 3),
            "per_second": round(emails / email_seconds, 1) if email_seconds else None,
            "due_to_sent_ms": percentiles(lag, 0),
            "due_to_sent_max_s": round(max(lag), 3) if lag else None,
        },
        "unread": unread,
        "emails_to_unread": emails_to_unread,
        "emails_received": received,
        "exact": emails == emails_to_unread == unread == received,
        "peak_rss_mb": {"worker": worker_rss >> 20},
    }


# -- W7: a stream of triggers into a digest ----------------------------------------------------


def w7_digest_stream(
    database: Database,
    triggers: int,
    recipients: int,
    seconds: float,
    tick: Tick = _noop,
    *,
    window: float = 2.0,
    connections: int = 4,
) -> dict[str, Any]:
    """``triggers`` calls of ``postbell.trigger()`` (the host's event stream: each
    transaction of a host connection commits the events of 50 ms, one call per event,
    one recipient each, round robin over ``recipients``), spread evenly over
    ``seconds``, into [digest ``window``, IN_APP send ``{{count}} new``]. Measured: the
    accept rate (calls committed per second of the stream), digests made against the
    bound recipients x windows (the windows of the span in which the engine opened
    digests: it may run behind the stream), every event in exactly one digest, and the
    worker's CPU from the first trigger until the last digest is sent."""
    import psycopg

    database.execute("INSERT INTO topics (key) VALUES ('w7') ON CONFLICT DO NOTHING")
    with processes() as started:
        api = start_api(started, database.url)
        worker = start_worker(started, database.url)
        _put_workflow(
            api,
            "w7",
            {
                "steps": [
                    {"type": "digest", "window": f"{window:g}s"},
                    {"type": "send", "channels": ["IN_APP"], "message": "{{count}} new"},
                ]
            },
        )
        time.sleep(1.0)
        cpu_before = worker.ps.cpu_times()
        tick_s = 0.05
        ticks = max(1, round(seconds / tick_s))
        per_tick = math.ceil(triggers / ticks)
        lock = threading.Lock()
        accepted = [0]

        def host(lane: int) -> None:
            with psycopg.connect(database.url, autocommit=False) as conn:
                start = began
                for t in range(lane, ticks, connections):
                    lo = t * per_tick
                    hi = min(triggers, lo + per_tick)
                    if lo >= hi:
                        break
                    pause = start + t * tick_s - time.perf_counter()
                    if pause > 0:
                        time.sleep(pause)
                    conn.execute(
                        "SELECT postbell.trigger('w7', ARRAY['w7-' || (i %% %s)],"
                        " jsonb_build_object('event', i)) FROM generate_series(%s, %s - 1) AS i",
                        (recipients, lo, hi),
                    )
                    conn.commit()
                    with lock:
                        accepted[0] += hi - lo

        began = time.perf_counter()
        lanes = [threading.Thread(target=host, args=(i,)) for i in range(connections)]
        for lane in lanes:
            lane.start()
        for lane in lanes:
            lane.join()
        stream_s = time.perf_counter() - began

        def finished() -> bool:
            left = _count(
                database,
                "SELECT count(*) FROM workflow_runs WHERE state IN ('waiting', 'digesting')",
            )
            tick(1 - left / triggers)
            return left == 0

        wait(finished, timeout=900, sample=started, every=0.2)
        total_s = time.perf_counter() - began
        cpu_after = worker.ps.cpu_times()
        worker_cpu = (cpu_after.user + cpu_after.system) - (cpu_before.user + cpu_before.system)
        worker_rss = worker.peak_rss
    with database.connect() as conn:
        row = conn.execute(
            "SELECT count(*), coalesce(sum(cardinality(run_ids)), 0),"
            "       count(DISTINCT recipient), max(cardinality(run_ids)),"
            "       extract(epoch FROM max(opened_at) - min(opened_at))"
            "  FROM workflow_digests WHERE state = 'fired'"
        ).fetchone()
        runs = dict(
            conn.execute(
                "SELECT coalesce(reason, state), count(*) FROM workflow_runs GROUP BY 1"
            ).fetchall()
        )
        sends = int(
            conn.execute(
                "SELECT count(*) FROM deliveries WHERE channel = 'IN_APP' AND status = 'sent'"
            ).fetchone()[0]  # type: ignore[index]
        )
    assert row is not None
    digests, events = int(row[0]), int(row[1])
    # Windows are counted from when the engine joins runs to digests: while it is
    # behind the stream, that span is longer than the stream itself.
    joining_s = float(row[4] or 0)
    windows = math.ceil(joining_s / window) + 1
    return {
        "triggers": triggers,
        "recipients": recipients,
        "stream_seconds": round(stream_s, 3),
        "accepted_per_s": round(accepted[0] / stream_s, 1),
        "window_s": window,
        "digests": digests,
        "digest_bound": recipients * windows,
        "joining_seconds": round(joining_s, 3),
        "stream_windows_bound": recipients * (math.ceil(stream_s / window) + 1),
        "events_in_digests": events,
        "largest_digest": int(row[3] or 0),
        "runs": runs,
        "in_app_sent": sends,
        "seconds_to_last_digest": round(total_s, 3),
        "worker_cpu_s": round(worker_cpu, 2),
        "worker_cpu_share": round(worker_cpu / total_s, 3),
        "worker_cpu_ms_per_trigger": round(1000 * worker_cpu / triggers, 3),
        "peak_rss_mb": {"worker": worker_rss >> 20},
    }
