"""Retention: POSTBELL_RETENTION_DAYS deletes final deliveries older than that, then the
notifications they leave empty; nothing unsent and nothing recent is touched. The
callbacks' provider event ids are kept for the freshness window, then deleted."""

from __future__ import annotations

import asyncio

from postbell.app.core import db
from postbell.app.core.settings import Settings
from postbell.workers import maintenance
from postbell.workers.channels.registry import Channels
from postbell.workers.runtime import Runtime
from tests.conftest import make_settings, query, wait_until

FINAL = [
    "sent",
    "delivered",
    "bounced",
    "complained",
    "undelivered",
    "dead",
    "skipped",
    "cancelled",
]


async def notification(pool: db.Pool, *, age_days: float, routed: bool = True) -> str:
    rows = await query(
        pool,
        """INSERT INTO notifications (status, body, recipients, created_at, routed_at)
           VALUES (%(status)s, 'hello', ARRAY['r'], now() - interval '1 day' * %(age)s,
                   CASE WHEN %(routed)s THEN now() - interval '1 day' * %(age)s END)
           RETURNING id::text""",
        {"status": "routed" if routed else "queued", "age": age_days, "routed": routed},
    )
    return str(rows[0]["id"])


async def delivery(
    pool: db.Pool,
    notification_id: str,
    recipient_id: int,
    status: str,
    *,
    age_days: float,
    changed_days: float | None = None,
    channel: str = "EMAIL",
) -> int:
    rows = await query(
        pool,
        """INSERT INTO deliveries (notification_id, recipient_id, channel, status,
                                   created_at, updated_at)
           VALUES (%(n)s, %(r)s, %(channel)s, %(status)s,
                   now() - interval '1 day' * %(age)s, now() - interval '1 day' * %(changed)s)
           RETURNING id""",
        {
            "n": notification_id,
            "r": recipient_id,
            "channel": channel,
            "status": status,
            "age": age_days,
            "changed": age_days if changed_days is None else changed_days,
        },
    )
    return int(rows[0]["id"])


async def remaining(pool: db.Pool) -> tuple[set[int], set[str]]:
    deliveries = await query(pool, "SELECT id FROM deliveries")
    notifications = await query(pool, "SELECT id::text FROM notifications")
    return {r["id"] for r in deliveries}, {r["id"] for r in notifications}


async def test_only_old_final_deliveries_and_emptied_notifications_go(fresh_pool: db.Pool) -> None:
    old = await notification(fresh_pool, age_days=10)
    old_final = [
        await delivery(fresh_pool, old, recipient_id=i, status=s, age_days=10)
        for i, s in enumerate(FINAL)
    ]
    # an old notification with one delivery still waiting keeps it and itself
    waiting = await notification(fresh_pool, age_days=10)
    waiting_sent = await delivery(fresh_pool, waiting, 1, "sent", age_days=10)
    waiting_pending = await delivery(fresh_pool, waiting, 2, "pending", age_days=10)
    waiting_failed = await delivery(fresh_pool, waiting, 3, "failed", age_days=10)
    # old, but its last change is recent (a requeued dead letter that died again)
    changed = await notification(fresh_pool, age_days=10)
    changed_dead = await delivery(fresh_pool, changed, 1, "dead", age_days=10, changed_days=0.5)
    # recent everything
    recent = await notification(fresh_pool, age_days=0.5)
    recent_sent = await delivery(fresh_pool, recent, 1, "sent", age_days=0.5, channel="IN_APP")
    # old and never routed (its worker was down): kept, with no deliveries yet
    unrouted = await notification(fresh_pool, age_days=10, routed=False)
    # old, routed to nobody (an empty topic): nothing to wait for
    empty = await notification(fresh_pool, age_days=10)

    result = await maintenance.purge_expired(fresh_pool, 7)

    # (no whole month can go: the oldest holds unsent deliveries, the newest recent ones)
    assert result == {
        "deliveries": len(FINAL) + 1,
        "notifications": 2,
        "partitions": 0,
        "more": False,
    }
    deliveries, notifications = await remaining(fresh_pool)
    assert deliveries.isdisjoint(old_final) and waiting_sent not in deliveries
    assert deliveries == {waiting_pending, waiting_failed, changed_dead, recent_sent}
    assert notifications == {waiting, changed, recent, unrouted}
    assert old not in notifications and empty not in notifications
    # a second round finds nothing
    assert await maintenance.purge_expired(fresh_pool, 7) == {
        "deliveries": 0,
        "notifications": 0,
        "partitions": 0,
        "more": False,
    }


async def test_a_large_purge_goes_in_bounded_rounds(fresh_pool: db.Pool) -> None:
    """The row-by-row purge (what a whole month cannot take; whole months are
    test_partitions.py's) goes in rounds of bounded size."""
    old = await notification(fresh_pool, age_days=3)
    await query(
        fresh_pool,
        """INSERT INTO deliveries (notification_id, recipient_id, channel, status, created_at, updated_at)
           SELECT %(n)s, g, 'IN_APP', 'sent', now() - interval '3 days', now() - interval '3 days'
             FROM generate_series(1, 250) AS g""",
        {"n": old},
    )

    first = await maintenance.purge_expired(
        fresh_pool, 1, batch=50, max_batches=3, whole_months=False
    )
    assert first == {"deliveries": 150, "notifications": 0, "partitions": 0, "more": True}
    second = await maintenance.purge_expired(
        fresh_pool, 1, batch=50, max_batches=3, whole_months=False
    )
    assert second == {"deliveries": 100, "notifications": 0, "partitions": 0, "more": True}
    third = await maintenance.purge_expired(
        fresh_pool, 1, batch=50, max_batches=3, whole_months=False
    )
    assert third == {"deliveries": 0, "notifications": 1, "partitions": 0, "more": False}
    assert await remaining(fresh_pool) == (set(), set())


async def test_the_worker_loop_purges_only_when_retention_is_set(
    fresh_database_url: str, fresh_pool: db.Pool
) -> None:
    old = await notification(fresh_pool, age_days=40)
    await delivery(fresh_pool, old, 1, "sent", age_days=40)

    async def run_loop(**env: str) -> None:
        settings = make_settings(fresh_database_url, **env)
        runtime = Runtime(settings, fresh_pool, Channels.from_settings(settings))
        stop = asyncio.Event()
        jobs = _NoJobs()
        task = asyncio.create_task(
            maintenance.loop(
                runtime, jobs, stop, reap_every=0.05, reconcile_every=0.1, purge_every=0.1
            )
        )

        async def rounds() -> bool:  # several rounds ran, purge rounds included
            return jobs.reaped >= 6

        await wait_until(rounds)
        stop.set()
        await asyncio.wait_for(task, timeout=10)

    await run_loop()
    assert await remaining(fresh_pool) != (set(), set())
    await run_loop(POSTBELL_RETENTION_DAYS="30")
    assert await remaining(fresh_pool) == (set(), set())


async def provider_event(pool: db.Pool, key: str, age_seconds: float) -> None:
    await query(
        pool,
        """INSERT INTO provider_events (provider, event_key, delivery_id, received_at)
           VALUES ('sendgrid', %s, 1, now() - make_interval(secs => %s))""",
        (key, age_seconds),
    )


async def event_keys(pool: db.Pool) -> set[str]:
    return {r["event_key"] for r in await query(pool, "SELECT event_key FROM provider_events")}


async def test_provider_event_ids_outlive_the_window_then_go(fresh_pool: db.Pool) -> None:
    """An event id is kept for the freshness window plus twice the clock skew (3,900 +
    600 s by default: a copy is then either recognised or refused as stale); older
    ones are deleted oldest first, in bounded rounds."""
    keep = Settings.from_env({}).provider_event_keep_seconds
    assert keep == 4500
    for n in range(5):
        await provider_event(fresh_pool, f"old-{n}", keep + 60 + n)
    await provider_event(fresh_pool, "recent", keep - 60)

    first = await maintenance.purge_provider_events(fresh_pool, keep, batch=2, max_batches=2)
    assert first == {"deleted": 4, "more": True}
    assert await event_keys(fresh_pool) == {"old-0", "recent"}  # the oldest went first
    second = await maintenance.purge_provider_events(fresh_pool, keep, batch=2, max_batches=2)
    assert second == {"deleted": 1, "more": False}
    assert await event_keys(fresh_pool) == {"recent"}


async def test_the_worker_loop_purges_provider_events_without_retention(
    fresh_database_url: str, fresh_pool: db.Pool
) -> None:
    """The upkeep keeps the dedupe table bounded whatever POSTBELL_RETENTION_DAYS says
    (unset here), and keeps what is inside the window."""
    settings = make_settings(fresh_database_url, POSTBELL_CALLBACK_MAX_AGE_SECONDS="600")
    await provider_event(fresh_pool, "expired", settings.provider_event_keep_seconds + 5)
    await provider_event(fresh_pool, "kept", settings.provider_event_keep_seconds - 300)
    runtime = Runtime(settings, fresh_pool, Channels.from_settings(settings))
    stop = asyncio.Event()
    task = asyncio.create_task(
        maintenance.loop(runtime, _NoJobs(), stop, reap_every=0.05, reconcile_every=0.1)
    )
    try:

        async def purged() -> bool:
            return await event_keys(fresh_pool) == {"kept"}

        await wait_until(purged)
    finally:
        stop.set()
        await asyncio.wait_for(task, timeout=10)


class _NoJobs:
    """The two job-manager calls the reaper makes, on a database with no workers."""

    reaped = 0

    async def get_stalled_jobs(self, seconds_since_heartbeat: float) -> list[object]:
        self.reaped += 1
        return []

    async def prune_stalled_workers(self, seconds: float) -> None:
        return None
