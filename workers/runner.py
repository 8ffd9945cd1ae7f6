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

from app import db
from app.settings import Settings
from workers import maintenance, procrastinate_app
from workers.channels import Channels
from workers.runtime import Runtime

log = structlog.get_logger("postbell.worker")

GRACEFUL_SECONDS = 30.0
RESTART_MAX_DELAY = 30.0


def worker_queues(queues: Sequence[str] | None) -> list[str] | None:
    """The queues to listen to (None: all of them)."""
    chosen = [q.strip().lower() for q in queues or () if q.strip()]
    return chosen or None


async def run(
    settings: Settings,
    stop: asyncio.Event,
    *,
    queues: Sequence[str] | None = None,
    concurrency: int | None = None,
    pool: db.Pool | None = None,
) -> None:
    """Run until ``stop`` is set. Uses ``pool`` when given (``postbell dev`` shares one)."""
    own_pool = pool is None
    if pool is None:
        assert settings.database_url
        pool = db.create_pool(
            settings.database_url, max_size=settings.db_pool_size, name="postbell-worker"
        )
        await pool.open(wait=False)
    channels = Channels.from_settings(settings)
    for name in channels.unconfigured:
        log.warning("channel_not_configured", channel=name, effect="its deliveries are skipped")
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
    delay = 1.0
    try:
        while not stop.is_set():
            started = time.monotonic()
            worker = asyncio.create_task(app.run_worker_async(**options))
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
                error=f"{type(error).__name__}: {error}" if error else "worker stopped",
                in_seconds=delay,
            )
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=delay)
            delay = min(delay * 2, RESTART_MAX_DELAY)
    finally:
        upkeep.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await upkeep
        await channels.close()
        await app.close_async()
        if own_pool:
            await pool.close()
        log.info("worker_stopped")
