"""The upkeep that keeps "nothing lost" true, driven directly: the reaper retries the
jobs of a worker whose heartbeat stopped (route and deliver jobs alike), and the
reconciler re-defers orphaned unsent work exactly once."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest
from procrastinate import PsycopgConnector

from postbell.app.api.main import create_app
from postbell.app.core import db
from postbell.app.core.settings import Settings
from postbell.workers import maintenance, procrastinate_app
from postbell.workers.channels.registry import Channels
from postbell.workers.runtime import Runtime
from tests.conftest import ADMIN, api_client, make_settings, query, running_worker, wait_until
from tests.peers.webhooks import WebhookReceiver


@pytest.fixture
async def setup(
    fresh_database_url: str, receiver: WebhookReceiver
) -> AsyncIterator[tuple[Settings, db.Pool, Any]]:
    settings = make_settings(
        fresh_database_url, POSTBELL_WEBHOOK_ALLOW_ADDRESSES=receiver.allow_entry
    )
    pool = db.create_pool(fresh_database_url, max_size=4, name="postbell-test-upkeep")
    await pool.open(wait=True)
    app = procrastinate_app.app.with_connector(PsycopgConnector())
    await app.open_async(pool=pool)
    try:
        yield settings, pool, app.job_manager
    finally:
        await app.close_async()
        await pool.close()


async def _one(pool: db.Pool, sql: str, params: Any = None) -> Any:
    rows = await query(pool, sql, params)
    return next(iter(rows[0].values()))


async def test_the_reaper_retries_the_jobs_of_a_dead_worker(
    setup: tuple[Settings, db.Pool, Any], receiver: WebhookReceiver
) -> None:
    """A worker died holding a route job and a deliver job ('doing', its heartbeat two
    minutes old): the reaper puts both back, and a live worker then routes and sends."""
    settings, pool, job_manager = setup
    path = "/reaped/hook"
    await query(
        pool,
        "INSERT INTO recipients (external_id, webhook_url) VALUES ('reaped', %s)",
        (receiver.url_for(path),),
    )
    # a routed notification whose webhook delivery is held by the dead worker's job
    routed = await _one(
        pool,
        "SELECT id FROM enqueue_notification(ARRAY['reaped'], NULL, NULL, 'held', NULL, NULL,"
        " ARRAY['WEBHOOK'], 'normal', NULL, NULL, NULL, NULL, NULL, NULL, NULL,"
        " interval '1 day', false)",
    )
    await query(pool, "DELETE FROM procrastinate_jobs")  # route it by hand below
    delivery = await _one(
        pool,
        "INSERT INTO deliveries (notification_id, recipient_id, channel, status, next_attempt_at)"
        " SELECT %s, id, 'WEBHOOK', 'pending', now() FROM recipients WHERE external_id = 'reaped'"
        " RETURNING id",
        (routed,),
    )
    await query(
        pool,
        "UPDATE notifications SET status = 'routed', routed_at = now() WHERE id = %s",
        (routed,),
    )
    await query(
        pool,
        "SELECT procrastinate_defer_jobs_v1(ARRAY[deliver_job('WEBHOOK', %s::jsonb, 10, NULL)])",
        (f"[{delivery}]",),
    )
    # an unrouted notification whose route job is held too
    unrouted = await _one(
        pool,
        "SELECT id FROM enqueue_notification(ARRAY['reaped'], NULL, NULL, 'routed later', NULL,"
        " NULL, ARRAY['IN_APP'], 'normal', NULL, NULL, NULL, NULL, NULL, NULL, NULL,"
        " interval '1 day', false)",
    )
    dead_worker = await _one(
        pool,
        "INSERT INTO procrastinate_workers (last_heartbeat) VALUES (now() - interval '2 minutes')"
        " RETURNING id",
    )
    held = await query(
        pool,
        "UPDATE procrastinate_jobs SET status = 'doing', worker_id = %s RETURNING id, task_name",
        (dead_worker,),
    )
    assert sorted(j["task_name"] for j in held) == ["postbell.deliver", "postbell.route"]
    assert await maintenance.reap_stalled(job_manager, 30) == 2
    statuses = await query(pool, "SELECT status::text AS s FROM procrastinate_jobs ORDER BY id")
    assert [r["s"] for r in statuses] == ["todo", "todo"]
    async with running_worker(settings, pool), api_client(create_app(settings, pool=pool)) as api:

        async def done() -> bool:
            a = (await api.get(f"/api/notifications/{routed}", headers=ADMIN)).json()
            b = (await api.get(f"/api/notifications/{unrouted}", headers=ADMIN)).json()
            return a["delivery_counts"] == {"sent": 1} and b["delivery_counts"] == {"sent": 1}

        await wait_until(done)
    assert receiver.delivery_ids(path) == [str(delivery)]


async def test_the_reconciler_redefers_orphaned_work_exactly_once(
    setup: tuple[Settings, db.Pool, Any], receiver: WebhookReceiver
) -> None:
    """A pending delivery that no job carries (its job was deleted), long past due: one
    reconcile round defers exactly one job for it, a second round none, and it is sent."""
    settings, pool, _ = setup
    path = "/orphan/hook"
    await query(
        pool,
        "INSERT INTO recipients (external_id, webhook_url) VALUES ('orphan', %s)",
        (receiver.url_for(path),),
    )
    nid = await _one(
        pool,
        "SELECT id FROM enqueue_notification(ARRAY['orphan'], NULL, NULL, 'orphaned', NULL, NULL,"
        " ARRAY['WEBHOOK'], 'normal', NULL, NULL, NULL, NULL, NULL, NULL, NULL,"
        " interval '1 day', false)",
    )
    await query(pool, "DELETE FROM procrastinate_jobs")
    await query(
        pool, "UPDATE notifications SET status = 'routed', routed_at = now() WHERE id = %s", (nid,)
    )
    delivery = await _one(
        pool,
        "INSERT INTO deliveries (notification_id, recipient_id, channel, status, next_attempt_at)"
        " SELECT %s, id, 'WEBHOOK', 'pending', now() - interval '1 hour' FROM recipients"
        " WHERE external_id = 'orphan' RETURNING id",
        (nid,),
    )
    runtime = Runtime(settings=settings, pool=pool, channels=Channels.from_settings(settings))
    try:
        first = await maintenance.reconcile(runtime, grace_seconds=60)
        second = await maintenance.reconcile(runtime, grace_seconds=60)
    finally:
        await runtime.channels.close()
    assert (first["deliveries"], first["delivery_jobs"]) == (1, 1)
    assert (second["deliveries"], second["delivery_jobs"], second["route_jobs"]) == (0, 0, 0)
    jobs = await query(
        pool, "SELECT args FROM procrastinate_jobs WHERE task_name = 'postbell.deliver'"
    )
    assert [j["args"]["ids"] for j in jobs] == [[delivery]]
    async with running_worker(settings, pool):

        async def sent() -> bool:
            status = await _one(pool, "SELECT status FROM deliveries WHERE id = %s", (delivery,))
            return bool(status == "sent")

        await wait_until(sent)
    assert receiver.delivery_ids(path) == [str(delivery)]
