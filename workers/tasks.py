"""Every procrastinate task postbell runs, each with an explicit, stable name.

The SQL side defers ``postbell.route`` and ``postbell.deliver`` jobs (route_job() and
deliver_job() in sql/migrations/0002_core.sql); the names here must match them.
Upkeep (stalled jobs, orphaned work) is not a task: workers/maintenance.py runs it
beside the worker, so a full queue cannot hold it back.
"""

from __future__ import annotations

import asyncio
from typing import Any

import psycopg
import psycopg_pool
from procrastinate import RetryStrategy

from workers import claims, delivery, router
from workers.claims import claim_more, release_shielded
from workers.procrastinate_app import ROUTE_QUEUE, app
from workers.runtime import Runtime

#: Notifications routed per transaction, at most.
ROUTE_BATCH = 200
#: A routing run waits this long before claiming more, so that a stream of single
#: notifications is routed in batches: a few milliseconds of latency buy far fewer
#: statements and commits per notification.
ROUTE_GATHER_SECONDS = 0.005

#: A job that lost its database connection (a restart, a failover) runs again once it
#: is back. Provider errors never get here: deliver runs classify and record them
#: per delivery, and re-defer only the transient ones. A deliver run cut off between
#: sending and recording resends that batch once: at least once, never lost.
DATABASE_RETRY = RetryStrategy(
    max_attempts=20,
    exponential_wait=1,
    retry_exceptions={psycopg.OperationalError, psycopg_pool.PoolTimeout},
)


@app.task(name="postbell.route", queue=ROUTE_QUEUE, pass_context=True, retry=DATABASE_RETRY)
async def route(context: Any, notification_id: str) -> None:
    runtime = Runtime.of(context)
    with runtime.running(context.job) as track:
        # One routing batch at a time per process: while one runs, arrivals queue up
        # and the next run claims them all, so a steady stream routes in batches.
        async with runtime.routing:
            await asyncio.sleep(ROUTE_GATHER_SECONDS)
            claimed = await claim_more(
                runtime.pool, context.job, limit=ROUTE_BATCH - 1, max_items=ROUTE_BATCH - 1
            )
            track(claimed.job_ids)
            ids = [notification_id, *(a["notification_id"] for a in claimed.args)]
            try:
                topics = await router.route(runtime, ids, claimed)
            except BaseException:
                await release_shielded(runtime.pool, claimed)
                raise
        try:
            await router.route_topics(runtime, topics)
        except BaseException:
            await release_shielded(
                runtime.pool,
                claims.Claimed(claimed.worker_id, [j for _, c in topics for j in c.job_ids], []),
            )
            raise


# The queue is the channel's (deliver_job() sets it); this default is never used.
@app.task(name="postbell.deliver", queue="deliver", pass_context=True, retry=DATABASE_RETRY)
async def deliver(context: Any, channel: str, ids: list[int]) -> None:
    runtime = Runtime.of(context)
    with runtime.running(context.job) as track:
        await delivery.deliver(runtime, context.job, channel, ids, track)
