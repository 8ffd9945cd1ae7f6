"""The benchmark workloads, tiny: the same code ``make bench`` runs, for correctness
only (every workload finishes and accounts for every delivery; no timing asserted)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest

from bench import scale, workloads
from bench.env import Database

Workload = Callable[[Database], dict[str, Any]]


@pytest.fixture
def bench_database(admin_url: str) -> Iterator[Database]:
    database = Database.create(admin_url, "pbsmoke")
    try:
        database.migrate()
        yield database
    finally:
        database.drop()


def test_baseline_procrastinate(admin_url: str) -> None:
    result = workloads.baseline_procrastinate(admin_url, 20)
    assert result["jobs"] == 20 and result["jobs_per_s"] > 0


def test_baseline_inserts(bench_database: Database) -> None:
    result = workloads.baseline_inserts(bench_database, seconds=0.3, connections=2)
    rows = bench_database.scalar("SELECT count(*) FROM public.bench_inserts")
    assert result["transactions"] == rows > 0  # every counted transaction committed a row


def test_w1_in_app_fanout(bench_database: Database) -> None:
    result = workloads.w1_inapp_fanout(bench_database, 200)
    # Every tenth member opted out of the category, every tenth (another one) muted the
    # topic: both recorded as skipped, not dropped.
    assert result["counts"] == {"sent": 160, "opted_out": 40}
    assert result["peak_rss_mb"]["worker"] > 0


def test_w1t_templated_in_app_fanout(bench_database: Database) -> None:
    result = workloads.w1_inapp_fanout(bench_database, 200, templated=True)
    assert result["counts"] == {"sent": 160, "opted_out": 40}
    titles = bench_database.connect().execute(
        "SELECT DISTINCT postbell.inbox_content(d.content, n.rendered, r.locale) ->> 'title'"
        " FROM postbell.deliveries AS d JOIN postbell.notifications AS n ON n.id = d.notification_id"
        " JOIN postbell.recipients AS r ON r.id = d.recipient_id WHERE d.status = 'sent'"
    )
    assert sorted(t for (t,) in titles) == ["Neu in Chess club", "New in Chess club"]


def test_w2_webhook_fanout(bench_database: Database) -> None:
    assert workloads.w2_webhook_fanout(bench_database, 30)["deliveries"] == 30


def test_w3_email_fanout(bench_database: Database) -> None:
    assert workloads.w3_email_fanout(bench_database, 20)["deliveries"] == 20


def test_w3t_templated_email_fanout(bench_database: Database) -> None:
    assert workloads.w3_email_fanout(bench_database, 20, templated=True)["deliveries"] == 20


def test_w4_api_stream(bench_database: Database) -> None:
    result = workloads.w4_api_stream(bench_database, 1, rate=20)
    assert result["saturation"]["errors"] == 0 and result["saturation"]["accepted"] > 0
    paced = result["fixed_rate"]
    assert paced["errors"] == 0 and paced["accepted"] > 0
    # every accepted notification's IN_APP row was sent and its webhook arrived
    assert paced["in_app_sent"] == paced["webhooks_received"] == paced["accepted"]


def test_w5_priority(bench_database: Database) -> None:
    result = workloads.w5_priority(bench_database, 60, urgent=5)
    assert result["urgent"] == 5
    assert result["urgent_ms"]["p99"] == result["urgent_ms"]["p99"]  # every urgent one sent


def test_w4s_sequential(bench_database: Database) -> None:
    """One client, one POST after another: every POST accepted, every webhook arrives
    and is recorded sent."""
    result = workloads.w4s_sequential(bench_database, 20)
    assert (result["posts"], result["accepted"], result["errors"]) == (20, 20, 0)
    assert (result["received"], result["sent"]) == (20, 20)
    assert result["post_ms"]["p50"] <= result["post_ms"]["p99"]


def test_wn_notify(bench_database: Database) -> None:
    """postbell.notify() one transaction at a time: every call routed."""
    result = workloads.wn_notify(bench_database, 20)
    assert (result["calls"], result["routed"]) == (20, 20)


def test_baseline_celery() -> None:
    """The Celery + Redis baseline: every task's webhook reaches the receiver."""
    pytest.importorskip("celery", reason=workloads.CELERY_MISSING)
    result = workloads.baseline_celery(20)
    if "skipped" in result:
        pytest.skip(result["skipped"])
    assert (result["deliveries"], result["received"]) == (20, 20)


def test_server_settings_recorded(admin_url: str) -> None:
    """Every run records the server settings its figures depend on."""
    from bench.env import SERVER_SETTINGS, server_settings

    settings = server_settings(admin_url)
    assert set(SERVER_SETTINGS) <= set(settings)
    assert settings["synchronous_commit"] in {"on", "off", "local", "remote_write", "remote_apply"}


def test_w9_footprint() -> None:
    """The cost model's workload, on its private embedded server: every delivery of
    both fan-outs counted, and its bytes and connections measured."""
    result = workloads.w9_footprint(200)
    assert (result["in_app"]["deliveries"], result["webhook"]["deliveries"]) == (200, 20)
    for kind in ("in_app", "webhook"):
        assert result[kind]["wal_bytes_per_delivery"] > 0
        assert result[kind]["table_bytes_per_delivery"] > 0
    assert {"postbell-api", "postbell-inbox-listen", "postbell-wakeups"} <= set(
        result["connections_busy"]
    )


def test_w8_analyzed_empty(bench_database: Database) -> None:
    result = scale.w8_analyzed_empty(bench_database, 50, probes=1)
    assert result["finished"] and result["routed"] == 50
    assert len(result["fetch_ms"]) == 1


def test_w5b_urgent_behind_slow(bench_database: Database) -> None:
    result = scale.w5b_urgent_behind_slow(bench_database, 100, delay=0.05)
    assert result["backlog"] == 100
    assert 0 <= result["overtaken_by"] <= 100 - result["arrived_before_post"]


def test_w11_slow_receiver(bench_database: Database) -> None:
    result = scale.w11_slow_receiver(bench_database, 200, delay=0.05, max_in_flight=100)
    assert result["received"] == result["sent"] == 200
    assert result["max_in_flight"] == 100


def test_w10_inbox(bench_database: Database) -> None:
    result = scale.w10_inbox(bench_database, 30, fan_out=40, gets=3)
    assert result["items"] == 30 and 0 < result["unread_count"] <= 30
    assert result["notification_ms"] is not None


def test_w12_partitioned(bench_database: Database) -> None:
    """Deliveries grown over two past months: the oldest dropped whole, the next purged
    row by row, and the kept counts agree with a recount after both."""
    result = scale.w12_partitioned(
        bench_database, 400, months=2, members=100, reader_items=20, gets=3, webhooks=20
    )
    # the growth, and the fan-outs before it (IN_APP to the members, WEBHOOK to 20)
    assert result["after"]["deliveries"] == result["before"]["deliveries"] + 400 + 100 + 20
    assert result["before"]["webhooks_per_s"] > 0 and result["after"]["webhooks_per_s"] > 0
    assert result["drop"]["rows"] == result["month_rows"][0] > 0
    assert result["row_purge"]["rows"] == result["month_rows"][1] > 0
    assert result["counts_agree"] is True


def test_w6_unread_email(bench_database: Database) -> None:
    from bench import flows

    result = flows.w6_unread_email(bench_database, 40)
    # every member got the inbox item; exactly the 20 who did not read it got the EMAIL
    assert result["in_app"]["deliveries"] == 40
    assert (result["email"]["deliveries"], result["emails_to_unread"]) == (20, 20)
    assert result["emails_received"] == 20 and result["exact"]


def test_w7_digest_stream(bench_database: Database) -> None:
    from bench import flows

    result = flows.w7_digest_stream(bench_database, 300, 10, 1.0, window=1.0)
    # every event in exactly one digest; one run per digest went on to send
    assert result["events_in_digests"] == 300
    assert result["runs"] == {"done": result["digests"], "digested": 300 - result["digests"]}
    assert result["in_app_sent"] == result["digests"] <= result["digest_bound"]
