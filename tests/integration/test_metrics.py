"""GET /metrics: Prometheus text parsed with prometheus_client's own parser, its numbers
checked against the database after a known workload; who may read it; the rollup's
compaction; a worker's own metrics; the Grafana dashboard in docs/ names real metrics."""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import re
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from postbell.app.api.main import create_app
from postbell.app.core import db, keys
from postbell.app.core.settings import Settings
from postbell.workers import maintenance
from postbell.workers import metrics as worker_metrics
from tests.conftest import ADMIN, api_client, query, unique, wait_until
from tests.integration.test_dead_letters import make_dead
from tests.integration.test_delivery_flow import send, settled
from tests.peers.net import free_port
from tests.peers.smtp import SmtpPeer
from tests.peers.webhooks import WebhookReceiver

TOKEN = "metrics-token-0123456789"
SCRAPER = {"Authorization": f"Bearer {TOKEN}"}
DASHBOARD = Path(__file__).resolve().parents[2] / "docs" / "grafana-dashboard.json"

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


@pytest.fixture(scope="module")
async def metrics_api(settings: Settings, pool: db.Pool) -> AsyncIterator[httpx.AsyncClient]:
    configured = dataclasses.replace(settings, metrics_token=TOKEN)
    async with api_client(create_app(configured, pool=pool)) as client:
        yield client


def parse(text: str) -> Samples:
    samples: Samples = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            samples[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return samples


async def scrape(api: httpx.AsyncClient) -> Samples:
    response = await api.get("/metrics", headers=SCRAPER)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/plain; version=0.0.4")
    return parse(response.text)


def pick(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def series(samples: Samples, name: str) -> dict[tuple[tuple[str, str], ...], float]:
    return {labels: v for (n, labels), v in samples.items() if n == name}


async def test_who_may_read_metrics(metrics_api: httpx.AsyncClient, pool: db.Pool) -> None:
    """The metrics token and admin keys read it; no credential is 401, a send key 403;
    the metrics token opens nothing else."""
    assert (await metrics_api.get("/metrics")).status_code == 401
    assert (await metrics_api.get("/metrics", headers=ADMIN)).status_code == 200
    assert (await metrics_api.get("/metrics", headers=SCRAPER)).status_code == 200
    async with pool.connection() as conn:
        _, key = await keys.create_key(conn, "send", "metrics-test")
    sender = {"Authorization": f"Bearer {key}"}
    assert (await metrics_api.get("/metrics", headers=sender)).status_code == 403
    assert (await metrics_api.get("/api/notifications", headers=SCRAPER)).status_code == 401


async def test_numbers_match_the_database_after_a_workload(
    metrics_api: httpx.AsyncClient,
    pool: db.Pool,
    worker: None,
    receiver: WebhookReceiver,
    smtp: SmtpPeer,
) -> None:
    """Three webhooks, four inbox items and one dead email later: deliveries by
    channel and status equal the table's counts, the dead letters equal the table's
    by reason, and the counters and the time-to-send histogram moved by exactly the
    workload."""
    before = await scrape(metrics_api)
    hooks = []
    for _ in range(3):
        rid = unique("mx")
        path = f"/metrics/{rid}"
        await metrics_api.put(
            f"/api/recipients/{rid}", headers=ADMIN, json={"webhook_url": receiver.url_for(path)}
        )
        hooks.append(rid)
    webhooks = await send(metrics_api, to=hooks, message="m", channels=["WEBHOOK"])
    inbox = await send(metrics_api, to=[unique("mx") for _ in range(4)], message="i")
    await settled(metrics_api, webhooks, {"sent": 3})
    await settled(metrics_api, inbox, {"sent": 4})
    await make_dead(metrics_api, smtp)

    async def agreeing() -> Samples | None:
        samples = await scrape(metrics_api)
        rows = await query(
            pool, "SELECT channel, status, count(*) AS n FROM deliveries GROUP BY 1, 2"
        )
        table = {(("channel", r["channel"]), ("status", r["status"])): float(r["n"]) for r in rows}
        gauges = {k: v for k, v in series(samples, "postbell_deliveries").items() if v}
        dead_rows = await query(
            pool,
            "SELECT channel, coalesce(reason, '') AS reason, count(*) AS n FROM deliveries"
            " WHERE status = 'dead' GROUP BY 1, 2",
        )
        dead = {
            (("channel", r["channel"]), ("reason", r["reason"])): float(r["n"]) for r in dead_rows
        }
        dead_now = {k: v for k, v in series(samples, "postbell_dead_letters").items() if v}
        same = gauges == table and dead_now == dead
        return samples if same else None

    after = await wait_until(agreeing)

    def moved(name: str, **labels: str) -> float:
        return pick(after, name, **labels) - pick(before, name, **labels)

    assert moved("postbell_delivery_status_changes_total", channel="WEBHOOK", status="sent") >= 3
    assert moved("postbell_time_to_send_seconds_count", channel="WEBHOOK") >= 3
    assert moved("postbell_time_to_send_seconds_count", channel="IN_APP") >= 4
    assert (
        moved("postbell_provider_errors_total", channel="EMAIL", **{"class": "invalid_address"})
        >= 1
    )
    for channel in ("WEBHOOK", "IN_APP"):
        buckets = sorted(
            (float(dict(labels)["le"]), v)
            for labels, v in series(after, "postbell_time_to_send_seconds_bucket").items()
            if dict(labels)["channel"] == channel
        )
        counts = [v for _, v in buckets]
        assert counts == sorted(counts), "buckets are cumulative"
        assert counts[-1] == pick(after, "postbell_time_to_send_seconds_count", channel=channel)
    # This app's own requests: the POSTs above, by route template and status.
    assert (
        pick(
            after,
            "postbell_http_requests_total",
            method="POST",
            route="/api/notifications",
            status="202",
        )
        >= 3
    )


async def test_queue_figures_match_procrastinate(
    metrics_api: httpx.AsyncClient, pool: db.Pool
) -> None:
    """A scheduled send is a route job waiting for later: the queue gauges equal
    procrastinate's table per queue, priority and state."""
    soon = (dt.datetime.now(dt.UTC) + dt.timedelta(days=2)).isoformat()
    nid = await send(metrics_api, to=[unique("q")], message="later", priority="high", send_at=soon)
    samples = await scrape(metrics_api)
    rows = await query(
        pool,
        "SELECT count(*) AS n FROM procrastinate_jobs WHERE queue_name = 'route'"
        " AND priority = 20 AND status = 'todo' AND scheduled_at > now()",
    )
    assert pick(samples, "postbell_queue_scheduled_jobs", queue="route", priority="high") == float(
        rows[0]["n"]
    )
    assert pick(samples, "postbell_queue_scheduled_jobs", queue="route", priority="high") >= 1
    assert (
        await metrics_api.post(f"/api/notifications/{nid}/cancel", headers=ADMIN)
    ).status_code == 200


async def test_compaction_folds_the_rollup_without_changing_a_figure(
    metrics_api: httpx.AsyncClient, pool: db.Pool
) -> None:
    """The upkeep's compaction leaves one row per key; every fleet figure is the same."""

    def fleet(samples: Samples) -> Samples:
        return {
            k: v
            for k, v in samples.items()
            if not k[0].startswith(
                ("postbell_http", "postbell_queue", "postbell_workers", "postbell_workflow")
            )
        }

    async with pool.connection() as conn:
        await conn.execute(
            "INSERT INTO metric_counts (metric, channel, label, value)"
            " VALUES ('provider_errors', 'SMS', 'timeout', 2), ('provider_errors', 'SMS', 'timeout', 3)"
        )
    before = fleet(await scrape(metrics_api))
    folded = await maintenance.compact_metrics(pool)
    assert folded["after"] <= folded["before"]
    rows = await query(
        pool,
        "SELECT count(*) AS n FROM (SELECT 1 FROM metric_counts"
        " GROUP BY metric, channel, label HAVING count(*) > 1) AS dup",
    )
    # Writers may add a delta meanwhile; none was added in this quiet moment.
    assert rows[0]["n"] == 0
    after = fleet(await scrape(metrics_api))
    assert after == before
    assert pick(after, "postbell_provider_errors_total", channel="SMS", **{"class": "timeout"}) >= 5


async def test_workflow_runs_waiting_by_workflow_and_state(fresh_database_url: str) -> None:
    """postbell_workflow_runs_waiting counts the runs not final per workflow and state
    (0 for a workflow with none), and reads them through the index of open runs: with
    20,000 finished runs in the table the plan touches no run that is final."""
    from postbell.workers import workflows
    from tests.integration.test_workflows_engine import workflow_env

    async with workflow_env(fresh_database_url) as env:
        await env.put(
            "wf-delay", [{"type": "delay", "for": "1h"}, {"type": "send", "message": "later"}]
        )
        await env.put(
            "wf-digest",
            [{"type": "digest", "window": "1h"}, {"type": "send", "message": "{{count}} new"}],
        )
        await env.put("wf-idle", [{"type": "send", "message": "hi"}])
        await env.trigger("wf-delay", to=["a", "b", "c"])
        await env.trigger("wf-digest", to=["a", "b"])
        await env.trigger("wf-digest", to=["a"])
        await workflows.run_due(env.pool)
        # 20,000 final runs: what a scrape must not read
        await query(
            env.pool,
            "INSERT INTO workflow_runs (trigger_id, workflow_key, version, recipient, state,"
            " finished_at) SELECT trigger_id, workflow_key, version, 'old-' || i, 'done', now()"
            " FROM (SELECT trigger_id, workflow_key, version FROM workflow_runs LIMIT 1) AS t,"
            " generate_series(1, 20000) AS i",
        )
        await query(env.pool, "ANALYZE workflow_runs")
        response = await env.api.get("/metrics", headers=ADMIN)
        assert response.status_code == 200, response.text
        got = series(parse(response.text), "postbell_workflow_runs_waiting")
        assert got == {
            (("state", "digesting"), ("workflow", "wf-delay")): 0.0,
            (("state", "waiting"), ("workflow", "wf-delay")): 3.0,
            (("state", "digesting"), ("workflow", "wf-digest")): 3.0,
            (("state", "waiting"), ("workflow", "wf-digest")): 0.0,
            (("state", "digesting"), ("workflow", "wf-idle")): 0.0,
            (("state", "waiting"), ("workflow", "wf-idle")): 0.0,
        }
        async with env.pool.connection() as conn:
            cursor = await conn.execute(b"EXPLAIN " + db.queries["metrics_workflow_runs"])
            plan = "\n".join(str(next(iter(row.values()))) for row in await cursor.fetchall())
        assert "workflow_runs_open_idx" in plan, plan
        assert "Seq Scan on workflow_runs" not in plan, plan


async def test_worker_serves_its_own_metrics(
    metrics_api: httpx.AsyncClient, worker: None, receiver: WebhookReceiver
) -> None:
    """What `postbell worker --metrics-port N` serves: this process's worker ran
    deliver jobs, so batch sizes, claimed jobs, send latency and outcomes are there."""
    rid = unique("wm")
    await metrics_api.put(
        f"/api/recipients/{rid}",
        headers=ADMIN,
        json={"webhook_url": receiver.url_for(f"/wm/{rid}")},
    )
    await settled(
        metrics_api,
        await send(metrics_api, to=[rid], message="w", channels=["WEBHOOK"]),
        {"sent": 1},
    )
    port = free_port()
    worker_metrics.serve(port, "127.0.0.1")
    async with httpx.AsyncClient() as client:
        text = (await client.get(f"http://127.0.0.1:{port}/metrics")).text
    samples = parse(text)
    assert pick(samples, "postbell_worker_batch_size_count", channel="WEBHOOK") >= 1
    assert pick(samples, "postbell_worker_claimed_jobs_total", channel="WEBHOOK") >= 1
    assert pick(samples, "postbell_worker_outcomes_total", channel="WEBHOOK", status="sent") >= 1
    assert (
        pick(samples, "postbell_worker_send_seconds_count", channel="WEBHOOK", provider="webhook")
        >= 1
    )


async def test_grafana_dashboard_names_real_metrics(metrics_api: httpx.AsyncClient) -> None:
    """docs/grafana-dashboard.json parses, and every metric its queries name is one
    /metrics serves (or a worker's)."""
    dashboard: dict[str, Any] = json.loads(DASHBOARD.read_text())
    exprs = [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]
    assert exprs
    text = (await metrics_api.get("/metrics", headers=SCRAPER)).text
    known = {s.name for f in text_string_to_metric_families(text) for s in f.samples}
    known |= {f.name for f in text_string_to_metric_families(text)}
    worker_text = generate_latest(worker_metrics.REGISTRY).decode()
    known |= {s.name for f in text_string_to_metric_families(worker_text) for s in f.samples}
    named = {m for e in exprs for m in re.findall(r"\bpostbell_[a-z_]+", e)}
    assert named and named <= known, sorted(named - known)


async def test_options_needs_no_credential(metrics_api: httpx.AsyncClient) -> None:
    """OPTIONS /metrics answers its Allow header, as every route does, without a credential."""
    response = await metrics_api.options("/metrics")
    assert response.status_code == 204, response.text
