"""Periodic upkeep that keeps "nothing lost" true when processes die.

It runs as a loop beside each worker (not as queued jobs, which a full queue could
hold back); an advisory lock lets one process at a time do each round.

* ``reap_stalled``: jobs left 'doing' by a worker whose heartbeat stopped (SIGKILL,
  OOM, a lost machine) go back to the queue. Deliveries those jobs had already sent
  are recorded ``sent`` or will be re-sent once (at least once; receivers dedupe by
  delivery id), never lost.
* ``reconcile``: unsent deliveries and unrouted notifications that no live job
  carries (the job failed, was aborted or deleted) get a new job.
* ``requeue_orphans``: jobs this process's live worker holds 'doing' but none of
  its tasks runs (a run lost the database while recording its end), seen so on two
  rounds in a row, go back to the queue. The heartbeat cannot catch these: the
  worker is alive.
* ``ensure_partitions``: the monthly partitions of ``deliveries`` (migration 0030) are
  made through next month, checked every reconcile round.
* ``purge_expired``: with ``POSTBELL_RETENTION_DAYS`` set, hourly, each month whose
  deliveries have all aged out is dropped whole (its partition, in one short
  transaction); then final deliveries older than that left in other months, then
  notifications left with no delivery, are deleted in small batches (each its own
  transaction); a round that has more to do goes on at the next tick.
* ``purge_provider_events``: provider event ids (the callbacks' dedupe) older than
  the freshness window plus clock skew are deleted, in small batches, every
  reconcile round (whatever the retention setting: the table must stay bounded).
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import psycopg
import structlog

from postbell.app.core import db
from postbell.app.core.settings import Settings
from postbell.workers.runtime import Runtime

log = structlog.get_logger("postbell.maintenance")


def stalled_after(settings: Settings) -> float:
    """A worker silent for three heartbeats (30 s by default) is considered dead."""
    return 3 * settings.heartbeat_seconds


#: How long past its due time unsent work must be before the reconciler acts.
RECONCILE_GRACE_SECONDS = 120.0
RECONCILE_LIMIT = 10_000
REAP_EVERY_SECONDS = 15.0
RECONCILE_EVERY_SECONDS = 60.0
PURGE_EVERY_SECONDS = 3600.0
PURGE_BATCH = 5_000
PURGE_BATCHES_PER_ROUND = 20
_LOCK_KEY = 7_415_100_002  # pg_try_advisory_lock key owned by the maintenance loop
#: Months of partitions kept made ahead of now (the catch-all past them takes any
#: row meanwhile; each empty month is one more that queries without a month probe).
PARTITION_MONTHS_AHEAD = 1
#: How long a partition's DDL waits for the table lock before it gives up until the
#: next round: statements behind it wait that long too, and it stays below
#: Postgres's default deadlock_timeout (1 s), so that a deadlock costs this step,
#: never a worker's or a request's transaction.
PARTITION_LOCK_TIMEOUT_MS = 200


async def reap_stalled(job_manager: Any, seconds: float) -> int:
    """Requeue the jobs of workers silent for ``seconds``; answer how many."""
    stalled = list(await job_manager.get_stalled_jobs(seconds_since_heartbeat=seconds))
    for job in stalled:
        await job_manager.retry_job(job)
    await job_manager.prune_stalled_workers(seconds)
    if stalled:
        log.warning(
            "stalled_jobs_requeued",
            jobs=len(stalled),
            queues=sorted({job.queue for job in stalled}),
        )
    return len(stalled)


async def reconcile(
    runtime: Runtime, *, grace_seconds: float = RECONCILE_GRACE_SECONDS
) -> dict[str, int]:
    async with runtime.pool.connection() as conn:
        deliveries = await db.fetch_one(
            conn,
            "maintenance_reconcile_deliveries",
            {
                "grace_seconds": grace_seconds,
                "limit": RECONCILE_LIMIT,
                "batch_sizes": runtime.channels.batch_sizes(),
            },
        )
        notifications = await db.fetch_one(
            conn,
            "maintenance_reconcile_notifications",
            {"grace_seconds": grace_seconds, "limit": RECONCILE_LIMIT},
        )
    assert deliveries is not None and notifications is not None
    result = {
        "deliveries": int(deliveries["deliveries"]),
        "delivery_jobs": int(deliveries["jobs"]),
        "route_jobs": int(notifications["jobs"]),
    }
    if any(result.values()):
        log.warning("orphaned_work_requeued", **result)
    return result


async def _partition_step(pool: db.Pool, query: str, params: dict[str, Any]) -> Any:
    """One partition DDL step in its own transaction under a short lock_timeout;
    answers its one value, or None when the table lock was not free in time (or the
    wait ended in a deadlock): the next round tries again."""
    async with pool.connection() as conn:
        try:
            async with conn.transaction():
                await db.execute(
                    conn, "maintenance_lock_timeout", {"ms": PARTITION_LOCK_TIMEOUT_MS}
                )
                row = await db.fetch_one(conn, query, params)
        except (psycopg.errors.LockNotAvailable, psycopg.errors.DeadlockDetected) as exc:
            reason = "deadlock" if isinstance(exc, psycopg.errors.DeadlockDetected) else "busy"
            log.info("partition_step_postponed", step=query, reason=reason)
            return None
    return next(iter(row.values())) if row else None


async def ensure_partitions(pool: db.Pool, months: int = PARTITION_MONTHS_AHEAD) -> int:
    """Make the deliveries partitions ``months`` ahead; answers how many were made."""
    made = await _partition_step(pool, "maintenance_partitions_ensure", {"months": months})
    if made:
        log.info("partitions_made", partitions=made)
    return int(made or 0)


async def drop_expired_partitions(pool: db.Pool, days: int) -> dict[str, int]:
    """Drop every partition whose deliveries have all aged out past ``days``; answers
    the partitions and rows dropped."""
    async with pool.connection() as conn:
        names = [
            r["name"]
            for r in await db.fetch_all(conn, "maintenance_partitions_expired", {"days": days})
        ]
    dropped = {"partitions": 0, "rows": 0}
    for name in names:
        rows = await _partition_step(
            pool, "maintenance_partition_drop", {"name": name, "days": days}
        )
        if rows is not None:
            dropped["partitions"] += 1
            dropped["rows"] += int(rows)
            log.info("partition_dropped", partition=name, deliveries=int(rows))
    return dropped


async def purge_expired(
    pool: db.Pool,
    days: int,
    *,
    batch: int = PURGE_BATCH,
    max_batches: int = PURGE_BATCHES_PER_ROUND,
    whole_months: bool = True,
) -> dict[str, int | bool]:
    """Drop the months whose deliveries have all aged out past ``days``, then delete
    the final deliveries older than that left elsewhere, then notifications left
    without deliveries; at most ``max_batches`` batches of ``batch`` rows this round.

    Answers the counts (``deliveries`` counts the rows of dropped months too) and
    ``more``: whether the round stopped with work left. ``whole_months=False``: the
    row-by-row purge alone.
    """
    whole = (
        await drop_expired_partitions(pool, days) if whole_months else {"partitions": 0, "rows": 0}
    )
    deleted = {"deliveries": 0, "notifications": 0}
    batches, more = 0, False
    for name, query in (
        ("deliveries", "maintenance_purge_deliveries"),
        ("notifications", "maintenance_purge_notifications"),
    ):
        while not more:
            if batches >= max_batches:
                more = True
                break
            batches += 1
            async with pool.connection() as conn:
                rows = await db.execute(conn, query, {"days": days, "limit": batch})
            deleted[name] += rows
            if rows < batch:
                break
    if any(deleted.values()):
        log.info("retention_purged", days=days, more=more, **deleted)
    deleted["deliveries"] += whole["rows"]
    return {**deleted, "partitions": whole["partitions"], "more": more}


async def compact_metrics(pool: db.Pool) -> dict[str, int]:
    """Fold the metric rollup's deltas into one row per key (GET /metrics sums them:
    this keeps that sum small). Answers the row counts before and after."""
    async with pool.connection() as conn:
        row = await db.fetch_one(conn, "metrics_compact")
    return {"before": int(row["before"]), "after": int(row["after"])} if row else {}


async def purge_provider_events(
    pool: db.Pool,
    keep_seconds: float,
    *,
    batch: int = PURGE_BATCH,
    max_batches: int = PURGE_BATCHES_PER_ROUND,
) -> dict[str, int | bool]:
    """Delete provider event ids older than ``keep_seconds``, oldest first, at most
    ``max_batches`` batches of ``batch``; answers how many and whether more are left."""
    deleted, more = 0, False
    for n in range(max_batches + 1):
        if n == max_batches:
            more = True
            break
        async with pool.connection() as conn:
            rows = await db.execute(
                conn,
                "maintenance_purge_provider_events",
                {"keep_seconds": keep_seconds, "limit": batch},
            )
        deleted += rows
        if rows < batch:
            break
    if deleted:
        log.info("provider_events_purged", deleted=deleted, more=more)
    return {"deleted": deleted, "more": more}


async def requeue_orphans(runtime: Runtime, suspects: set[int]) -> set[int]:
    """Requeue jobs that were orphaned last round and still are; answer this round's."""
    if not runtime.worker_ids:
        return set()
    async with runtime.pool.connection() as conn:
        rows = await db.fetch_all(
            conn, "maintenance_doing_jobs", {"worker_ids": list(runtime.worker_ids)}
        )
        now = {r["id"] for r in rows} - runtime.active_jobs
        orphans = now & suspects
        if orphans:
            await db.execute(conn, "maintenance_requeue_jobs", {"ids": list(orphans)})
            log.warning("orphaned_jobs_requeued", jobs=len(orphans))
    return now - orphans


async def loop(
    runtime: Runtime,
    job_manager: Any,
    stop: asyncio.Event,
    *,
    reap_every: float | None = None,
    reconcile_every: float = RECONCILE_EVERY_SECONDS,
    purge_every: float = PURGE_EVERY_SECONDS,
) -> None:
    """Reap, reconcile and purge until ``stop``; errors are logged and the loop goes on."""
    if reap_every is None:
        reap_every = min(REAP_EVERY_SECONDS, stalled_after(runtime.settings) / 2)
    clock = asyncio.get_running_loop().time
    next_reconcile = clock() + reconcile_every
    retention_days = runtime.settings.retention_days
    next_purge = clock() + min(reconcile_every, purge_every)
    suspects: set[int] = set()
    while not stop.is_set():
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), timeout=reap_every)
        if stop.is_set():
            return
        try:
            suspects = await requeue_orphans(runtime, suspects)
        except Exception as exc:
            log.warning("maintenance_failed", error=db.describe_error(exc))
        try:
            async with runtime.pool.connection() as conn:
                cursor = await conn.execute("SELECT pg_try_advisory_lock(%s) AS got", (_LOCK_KEY,))
                row = await cursor.fetchone()
                if not row or not row["got"]:
                    continue
                try:
                    await reap_stalled(job_manager, stalled_after(runtime.settings))
                    if clock() >= next_reconcile:
                        next_reconcile = clock() + reconcile_every
                        await reconcile(runtime)
                        await ensure_partitions(runtime.pool)
                        await compact_metrics(runtime.pool)
                        dedupe = await purge_provider_events(
                            runtime.pool, runtime.settings.provider_event_keep_seconds
                        )
                        if dedupe["more"]:
                            next_reconcile = clock()  # go on at the next tick
                    if retention_days is not None and clock() >= next_purge:
                        next_purge = clock() + purge_every
                        purged = await purge_expired(runtime.pool, retention_days)
                        if purged["more"]:
                            next_purge = clock()  # go on at the next tick
                finally:
                    await conn.execute("SELECT pg_advisory_unlock(%s)", (_LOCK_KEY,))
        except Exception as exc:
            log.warning("maintenance_failed", error=db.describe_error(exc))
