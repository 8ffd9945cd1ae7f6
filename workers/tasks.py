"""Every procrastinate task postbell runs, each with an explicit, stable name.

The SQL side defers ``postbell.route`` and ``postbell.deliver`` jobs (route_job() and
deliver_job() in sql/migrations/0002_core.sql); the names here must match them.
Upkeep (stalled jobs, orphaned work) is not a task: workers/maintenance.py runs it
beside the worker, so a full queue cannot hold it back.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from typing import Any

import psycopg
import psycopg_pool
from procrastinate import RetryStrategy

from postbell.app.core.channels import ROUTE_QUEUE
from postbell.workers import delivery, router
from postbell.workers.claims import claim_more, release_shielded
from postbell.workers.procrastinate_app import app
from postbell.workers.runtime import Runtime

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
async def route(context: Any, notification_id: str, ids: list[str] | None = None) -> None:
    """Route this job's notifications, with every other one ready to go.

    A job carries one notification (``notification_id``), or several (``ids``, which
    includes it): ``postbell.notify()`` called many times in one host transaction
    defers one job for them all (``defer_route``, migration 0029).

    One routing batch runs at a time per process. Jobs procrastinate fetched while a
    batch ran wait in ``runtime.waiting_routes``; the next batch adopts them all and
    claims the queued ones too (by priority), so a steady stream routes in large
    batches and an urgent job waits for at most the batch in progress.
    """
    runtime = Runtime.of(context)
    waiter: asyncio.Future[list[router.TopicWork] | None] = (
        asyncio.get_running_loop().create_future()
    )
    own = ids or [notification_id]
    runtime.waiting_routes[context.job.id] = (own, context.job.priority, waiter)
    with runtime.running(context.job) as track:
        async with runtime.routing:
            runtime.waiting_routes.pop(context.job.id, None)
            error: Exception | None = None
            if waiter.done():
                topics = waiter.result()  # a batch took it
                if topics is None:  # that batch failed: route it here, alone
                    topics, error = await _route_batch(runtime, context.job, own, {}, track)
            else:
                adopted, runtime.waiting_routes = runtime.waiting_routes, {}
                topics, error = await _route_batch(runtime, context.job, own, adopted, track)
        # The topic work this run claimed is fanned out even when its own notification
        # failed: those jobs are held by this run and would wait for the stall check.
        await router.route_topics(runtime, topics)
        if error is not None:
            raise error


async def _route_batch(
    runtime: Runtime,
    job: Any,
    own: list[str],
    adopted: dict[int, tuple[list[str], int, asyncio.Future[list[router.TopicWork] | None]]],
    track: Callable[[Sequence[int]], None],
) -> tuple[list[router.TopicWork], Exception | None]:
    """Route this run's notification, the adopted runs' and claimed queued ones, in
    one transaction per priority, highest first (urgent ones do not wait for a batch
    of newsletters); settle the adopted runs' futures with their own topic work, which
    each runs itself, or the error that failed their notification; answer this run's
    topic work (its own and the claimed jobs'), and its notification's error if it
    failed."""
    await asyncio.sleep(ROUTE_GATHER_SECONDS)
    room = max(ROUTE_BATCH - len(own) - sum(len(ids) for ids, _, _ in adopted.values()), 0)
    claimed = await claim_more(runtime.pool, job, limit=room, max_items=room)
    track(claimed.job_ids)
    entries: list[tuple[str, int, int | None]] = [(n, job.priority, None) for n in own]
    entries += [(n, priority, None) for ids, priority, _ in adopted.values() for n in ids]
    entries += [
        (n, p, job_id)
        for job_id, a, p in zip(claimed.job_ids, claimed.args, claimed.priorities, strict=True)
        for n in router.notification_ids(a)
    ]
    topics: list[router.TopicWork] = []
    failed: dict[str, Exception] = {}
    try:
        for priority in sorted({p for _, p, _ in entries}, reverse=True):
            group = [(n, j) for n, p, j in entries if p == priority]
            job_ids = {j for _, j in group if j is not None}
            routed = await router.route(runtime, [n for n, _ in group], claimed.only(job_ids))
            topics += routed.topics
            failed |= routed.failed
    except BaseException:
        # Jobs already finished or failed are no longer 'doing': this frees the rest.
        await release_shielded(runtime.pool, claimed)
        for _, _, future in adopted.values():
            if not future.done():
                future.set_result(None)
        raise
    by_notification = {str(n): (n, c) for n, c in topics}
    for adopted_ids, _, future in adopted.values():
        errors = [failed.pop(n) for n in adopted_ids if n in failed]
        if errors:
            # its run fails with the first error; the topic work of its others is
            # still fanned out, by this run
            future.set_exception(errors[0])
        else:
            future.set_result([w for n in adopted_ids if (w := by_notification.pop(n, None))])
    error = next((failed[n] for n in own if n in failed), None)
    return list(by_notification.values()), error


# The queue is the channel's (deliver_job() sets it); this default is never used.
@app.task(name="postbell.deliver", queue="deliver", pass_context=True, retry=DATABASE_RETRY)
async def deliver(context: Any, channel: str, ids: list[int]) -> None:
    runtime = Runtime.of(context)
    with runtime.running(context.job) as track:
        await delivery.deliver(runtime, context.job, channel, ids, track)
