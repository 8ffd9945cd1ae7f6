"""A worker process: procrastinate's worker, restarted when the database goes away.

procrastinate's worker stops (or raises) when its database connection is lost; a
notification service must not exit because Postgres restarted. ``run`` restarts it
with a growing delay, logged, until ``stop`` is set; then it stops gracefully: jobs
in flight finish and record their outcomes (up to ``GRACEFUL_SECONDS``).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Sequence
from typing import Any

import structlog
from procrastinate import PsycopgConnector

from postbell.app.core import db, migrations
from postbell.app.core.channels import QUEUES, ROUTE_QUEUE
from postbell.app.core.settings import Settings
from postbell.workers import maintenance, procrastinate_app, workflows
from postbell.workers.channels.registry import Channels
from postbell.workers.runtime import Runtime

log = structlog.get_logger("postbell.worker")

GRACEFUL_SECONDS = 30.0
RESTART_MAX_DELAY = 30.0


#: procrastinate sub-workers for the route queue when a worker also runs channels.
ROUTE_LANE_CONCURRENCY = 2


def worker_queues(queues: Sequence[str] | None) -> list[str] | None:
    """The queues to listen to (None: all of them)."""
    chosen = [q.strip().lower() for q in queues or () if q.strip()]
    return chosen or None


def lanes(listen: list[str] | None, concurrency: int) -> list[tuple[list[str] | None, int]]:
    """The procrastinate workers of one process: (queues, concurrency) each.

    procrastinate fetches one job per round trip; a routing run claims the queued
    route jobs in bulk itself (``claims.claim_more``), so route jobs need only two
    sub-workers: one routing a batch, one waiting to adopt what arrives meanwhile.
    Left to the shared pool, idle sub-workers would each fetch (and then finish) a
    route job per notification: that per-job work was most of the database's CPU at
    API saturation. The channels get the rest of the concurrency.
    """
    queues = listen or list(QUEUES)
    if ROUTE_QUEUE not in queues or len(queues) == 1:
        return [(listen, concurrency)]
    if concurrency <= ROUTE_LANE_CONCURRENCY:
        return [(listen, concurrency)]
    others = [q for q in queues if q != ROUTE_QUEUE]
    return [([ROUTE_QUEUE], ROUTE_LANE_CONCURRENCY), (others, concurrency - ROUTE_LANE_CONCURRENCY)]


async def run(
    settings: Settings,
    stop: asyncio.Event,
    *,
    queues: Sequence[str] | None = None,
    concurrency: int | None = None,
    pool: db.Pool | None = None,
) -> None:
    """Run until ``stop`` is set. Uses ``pool`` when given (``postbell dev`` shares one).

    It starts (and restarts) procrastinate only once the database answers and is
    migrated; until then it logs ``waiting_for_database`` once per attempt.
    """
    assert settings.database_url
    channels = Channels.from_settings(settings)
    for name in channels.unconfigured:
        log.warning("channel_not_configured", channel=name, effect="its deliveries are skipped")
    if not await wait_for_database(settings.database_url, stop):
        await channels.close()
        log.info("worker_stopped")
        return
    own_pool = pool is None
    if pool is None:
        pool = db.create_pool(
            settings.database_url, max_size=settings.db_pool_size, name="postbell-worker"
        )
        await pool.open(wait=False)
    runtime = Runtime(
        settings=settings,
        pool=pool,
        channels=channels,
        concurrency=concurrency or settings.worker_concurrency,
    )
    # A copy of the App with its own connector on this pool: tasks and periodic
    # schedules are shared, so several workers can run in one process (tests, dev).
    app = procrastinate_app.app.with_connector(PsycopgConnector())
    await app.open_async(pool=pool)
    listen = worker_queues(queues)
    options: dict[str, Any] = {
        "queues": listen,
        "concurrency": runtime.concurrency,
        "name": "postbell",
        "fetch_job_polling_interval": settings.poll_interval,
        "delete_jobs": "successful",
        "install_signal_handlers": False,
        "shutdown_graceful_timeout": GRACEFUL_SECONDS,
        "additional_context": {"runtime": runtime},
        "update_heartbeat_interval": settings.heartbeat_seconds,
        "stalled_worker_timeout": maintenance.stalled_after(settings),
    }
    upkeep = asyncio.create_task(maintenance.loop(runtime, app.job_manager, stop))
    # Workflow runs advance beside the routing work they make (docs/workflows.md).
    engine = (
        asyncio.create_task(
            workflows.loop(
                pool, stop, interval=settings.poll_interval, database_url=settings.database_url
            )
        )
        if listen is None or ROUTE_QUEUE in listen
        else None
    )
    delay = 1.0
    try:
        while not stop.is_set():
            started = time.monotonic()
            worker = asyncio.create_task(_run_lanes(app, options))
            log.info("worker_started", queues=listen or "all", concurrency=options["concurrency"])
            stopping = asyncio.create_task(stop.wait())
            done, _ = await asyncio.wait({worker, stopping}, return_when=asyncio.FIRST_COMPLETED)
            if stopping in done:
                worker.cancel()  # procrastinate turns this into a graceful stop
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await worker
                break
            stopping.cancel()
            error = worker.exception()
            if time.monotonic() - started > 60:
                delay = 1.0
            log.warning(
                "worker_restarting",
                error=db.describe_error(error, settings.database_url)
                if error
                else "worker stopped",
                in_seconds=delay,
            )
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=delay)
            delay = min(delay * 2, RESTART_MAX_DELAY)
            if not await wait_for_database(settings.database_url, stop):
                break
    finally:
        for task in (upkeep, engine):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        await channels.close()
        await app.close_async()
        if own_pool:
            await pool.close()
        log.info("worker_stopped")


async def wait_for_database(database_url: str, stop: asyncio.Event) -> bool:
    """Return once ``database_url`` answers and is migrated (True), or once ``stop`` is
    set (False). Each failed attempt is one ``waiting_for_database`` line saying why;
    the delay between attempts doubles up to ``RESTART_MAX_DELAY``."""
    delay, attempt = 1.0, 0
    while not stop.is_set():
        attempt += 1
        check = asyncio.create_task(migrations.database_problem(database_url))
        stopping = asyncio.create_task(stop.wait())
        await asyncio.wait({check, stopping}, return_when=asyncio.FIRST_COMPLETED)
        stopping.cancel()
        if not check.done():
            check.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await check
            return False
        problem = check.result()
        if problem is None:
            if attempt > 1:
                log.info("database_ready", attempts=attempt)
            return True
        log.warning("waiting_for_database", error=problem, attempt=attempt, retry_in=delay)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), timeout=delay)
        delay = min(delay * 2, RESTART_MAX_DELAY)
    return False


async def _run_lanes(app: Any, options: dict[str, Any]) -> None:
    """procrastinate's worker(s) for ``options``; when one stops, all stop (and the
    caller restarts them together)."""
    runs = [
        asyncio.create_task(
            app.run_worker_async(**{**options, "queues": queues, "concurrency": concurrency})
        )
        for queues, concurrency in lanes(options["queues"], options["concurrency"])
    ]
    try:
        await asyncio.wait(runs, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for run in runs:
            run.cancel()  # a graceful stop, for the ones still running
        results = await asyncio.gather(*runs, return_exceptions=True)
    for result in results:
        if isinstance(result, BaseException) and not isinstance(result, asyncio.CancelledError):
            raise result
