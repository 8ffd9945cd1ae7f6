"""Routing: notifications -> deliveries, set-based.

A batch of notifications with recipient lists becomes, in one statement and one
transaction, every notification x recipient x channel row of ``deliveries`` — IN_APP
ones already ``sent`` (visible in the inbox at commit, with one NOTIFY for live
inboxes), undeliverable ones ``skipped`` with their reason, the rest ``pending`` —
plus the deliver jobs that carry the pending ids (a templated notification's IN_APP
text is rendered in the same transaction: ``templating.render_in_app``). The same
transaction marks the notifications ``routed`` and removes the routing jobs it
handled: a crash leaves all of it or none, and a rerun is a no-op.

A topic notification fans out in chunks of ``TOPIC_CHUNK`` subscribers, one
transaction each, so a 100,000-member community never sits in Python's memory and
never holds one huge transaction. Its members are first split into ranges of a chunk
(``topic_ranges``, 0028), which ``fanout_parallel`` connections then route side by
side, each range recorded done in its chunk's transaction; the routing job is
removed with the notification marked routed, after the last range, so a crash
mid-way resumes the ranges not done.
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import time
import uuid
from collections.abc import Sequence
from typing import Any

import structlog

from postbell.app.core import db
from postbell.app.core.validation import MAX_ID
from postbell.workers import claims, templating
from postbell.workers.runtime import Runtime

log = structlog.get_logger("postbell.router")

#: Channels for a notification that names none and whose category has no defaults.
DEFAULT_CHANNELS = ["IN_APP"]
#: Subscribers per routing transaction of a topic notification.
TOPIC_CHUNK = 50_000


TopicWork = tuple[uuid.UUID, claims.Claimed]


@dataclasses.dataclass
class Routed:
    """What a routing batch leaves to its callers."""

    #: topic notifications to fan out (``route_topics``)
    topics: list[TopicWork]
    #: notifications held by no claimed job that failed to route, by id: each run
    #: that owns one fails with its error (procrastinate records the job failed)
    failed: dict[str, Exception]


async def route(
    runtime: Runtime, notification_ids: Sequence[str], claimed: claims.Claimed
) -> Routed:
    """Route a batch's direct notifications in one transaction; answer its topic
    notifications, for ``route_topics`` (their fan-out is long: callers run it after
    releasing what they hold while batching).

    ``claimed`` holds the jobs of some of the notifications; the callers' own runs
    hold the others. If the batch fails as a whole, each notification is routed again
    alone, so one bad notification fails only its own job: a claimed job is marked
    failed, an unclaimed one is answered in ``Routed.failed``. A lost connection is
    raised at once (the caller releases what is still claimed).
    """
    ids = [uuid.UUID(i) for i in dict.fromkeys(notification_ids)]
    if len(ids) > 1:
        try:
            return Routed(await _route_batch(runtime, ids, claimed), {})
        except Exception as exc:
            if _is_connection_error(exc):
                raise
            log.warning("route_batch_failed", notifications=len(ids), error=str(exc))
    job_of = _jobs_by_notification(claimed)
    # A job may carry several notifications (0029): it is finished with the last of
    # them routed (in that one's transaction), failed after the loop if any failed.
    left = collections.Counter(job_of[n] for n in ids if n in job_of)
    failed_jobs: set[int] = set()
    routed = Routed([], {})
    for notification_id in ids:
        job_id = job_of.get(notification_id)
        last = False
        if job_id is not None:
            left[job_id] -= 1
            last = left[job_id] == 0 and job_id not in failed_jobs
        own = claimed.only({job_id}) if last and job_id is not None else claims.Claimed.none()
        try:
            routed.topics += await _route_batch(runtime, [notification_id], own)
        except Exception as exc:
            if _is_connection_error(exc):
                raise
            log.error("route_failed", notification_id=str(notification_id), error=str(exc))
            if job_id is None:
                routed.failed[str(notification_id)] = exc
            else:
                failed_jobs.add(job_id)
    if failed_jobs:
        await claims.fail(runtime.pool, claimed.only(failed_jobs))
    return routed


def _jobs_by_notification(claimed: claims.Claimed) -> dict[uuid.UUID, int]:
    return {
        uuid.UUID(n): job_id
        for job_id, a in zip(claimed.job_ids, claimed.args, strict=True)
        for n in notification_ids(a)
    }


def notification_ids(args: dict[str, Any]) -> list[str]:
    """The notifications a route job carries: ``ids`` (several, 0029), else its one
    ``notification_id``."""
    ids = args.get("ids")
    return [str(n) for n in ids] if ids else [str(args["notification_id"])]


def route_params(
    spec: dict[str, Any],
    ids: list[uuid.UUID],
    *,
    topic: str | None = None,
    after: int = 0,
    until: int | None = None,
    chunk: int = 0,
) -> dict[str, Any]:
    """``route_deliveries``' parameters: direct notifications (``ids``), or one chunk
    of a topic notification, its members in (``after``, ``until``], ``chunk`` of them
    at most; ``spec`` is the channels' ``routing_spec()``."""
    return {
        "ids": ids,
        "topic": topic,
        "after": after,
        "until": MAX_ID if until is None else until,
        "chunk": chunk,
        "default_channels": DEFAULT_CHANNELS,
        **spec,
    }


async def _route_batch(
    runtime: Runtime, ids: list[uuid.UUID], claimed: claims.Claimed
) -> list[TopicWork]:
    started = time.perf_counter()
    job_of = _jobs_by_notification(claimed)
    async with runtime.pool.connection() as conn, conn.transaction():
        await _index_plans_only(conn)
        rows = await db.fetch_all(conn, "route_lock_notifications", {"ids": ids})
        direct = [r["id"] for r in rows if r["topic"] is None]
        topics = [r["id"] for r in rows if r["topic"] is not None]
        counts: dict[str, int] = {}
        if direct:
            await db.execute(conn, "route_ensure_recipients", {"ids": direct})
            result = await db.fetch_one(
                conn, "route_deliveries", route_params(runtime.channels.routing_spec(), direct)
            )
            assert result is not None
            counts = {k: int(result[k]) for k in ("deliveries", "pending", "jobs")}
            await templating.render_in_app(conn, direct)
            await db.execute(conn, "route_mark_routed", {"ids": direct})
        # Jobs of topic notifications stay until their last chunk is routed.
        topic_jobs = {job_of[n] for n in topics if n in job_of}
        done = [j for j in dict.fromkeys(job_of.values()) if j not in topic_jobs]
        await claims.finish(conn, claims.Claimed(claimed.worker_id, done, []))
    if direct:
        log.info(
            "routed",
            notifications=len(direct),
            **counts,
            ms=round((time.perf_counter() - started) * 1000, 1),
        )
    return [
        (n, claims.Claimed(claimed.worker_id, [job_of[n]] if n in job_of else [], []))
        for n in topics
    ]


async def route_topics(runtime: Runtime, work: Sequence[TopicWork]) -> None:
    for notification_id, claimed in work:
        await _route_topic(runtime, notification_id, claimed)


async def _route_topic(
    runtime: Runtime, notification_id: uuid.UUID, claimed: claims.Claimed
) -> None:
    """Split the topic's members into ranges of a chunk (once: a rerun resumes the
    ranges a crash left), route the ranges from ``fanout_parallel`` connections at
    once, one transaction per chunk, then mark the notification routed."""
    started = time.perf_counter()
    async with runtime.pool.connection() as conn, conn.transaction():
        locked = await db.fetch_all(conn, "route_lock_notifications", {"ids": [notification_id]})
        if not locked:  # routed meanwhile by another run, or cancelled
            await claims.finish(conn, claimed)
            return
        topic = locked[0]["topic"]
        await db.execute(
            conn,
            "route_plan_ranges",
            {
                "id": notification_id,
                "topic": topic,
                "after": int(locked[0]["routed_through"]),
                "chunk": TOPIC_CHUNK,
            },
        )
        # Before the chunks: a text shared by every member is rendered and stored on
        # the notification here, so no chunk writes the row the others share-lock.
        await templating.render_in_app(conn, [notification_id], templating.SHARED_ONLY)
    totals = {"deliveries": 0, "pending": 0, "jobs": 0, "chunks": 0}
    lanes = runtime.fanout_parallel
    running = [
        asyncio.create_task(_route_ranges(runtime, notification_id, topic, totals))
        for _ in range(lanes)
    ]
    try:
        await asyncio.gather(*running)
    except BaseException:
        # one lane failed (a lost connection): the others stop too, their chunks
        # rolled back; the rerun resumes every range not done
        for lane in running:
            lane.cancel()
        await asyncio.gather(*running, return_exceptions=True)
        raise
    async with runtime.pool.connection() as conn, conn.transaction():
        locked = await db.fetch_all(conn, "route_lock_notifications", {"ids": [notification_id]})
        if locked:  # every lane returned: every range is done
            await db.execute(conn, "route_mark_routed", {"ids": [notification_id]})
            await db.execute(conn, "route_forget_ranges", {"id": notification_id})
        await claims.finish(conn, claimed)
    log.info(
        "routed_topic",
        notification_id=str(notification_id),
        **totals,
        lanes=lanes,
        ms=round((time.perf_counter() - started) * 1000, 1),
    )


async def _route_ranges(
    runtime: Runtime, notification_id: uuid.UUID, topic: str, totals: dict[str, int]
) -> None:
    """One lane of a fan-out: route ranges no other lane holds, a chunk per
    transaction, until every range is done (waiting for the ones other lanes, or
    another run, hold)."""
    while True:
        async with runtime.pool.connection() as conn, conn.transaction():
            if not await db.fetch_one(conn, "route_share_notification", {"id": notification_id}):
                return  # routed meanwhile by another run
            taken = await db.fetch_one(conn, "route_take_range", {"id": notification_id})
            if taken is None:
                if not await db.fetch_one(conn, "route_wait_range", {"id": notification_id}):
                    return  # every range is done
                continue  # one was done, or is free again: take it next time round
            through = int(taken["routed_through"])
            result = await db.fetch_one(
                conn,
                "route_deliveries",
                route_params(
                    runtime.channels.routing_spec(),
                    [notification_id],
                    topic=topic,
                    after=through,
                    until=taken["hi"],
                    chunk=TOPIC_CHUNK,
                ),
            )
            assert result is not None
            for key in ("deliveries", "pending", "jobs"):
                totals[key] += int(result[key])
            totals["chunks"] += 1
            members = int(result["members"])
            last = int(result["last_recipient"]) if members else through
            await templating.render_in_app(conn, [notification_id], (through, last))
            done = members < TOPIC_CHUNK or (taken["hi"] is not None and last >= taken["hi"])
            await db.execute(
                conn,
                "route_range_progress",
                {"id": notification_id, "lo": taken["lo"], "through": last, "done": done},
            )


async def _index_plans_only(conn: db.Conn) -> None:
    """Sequential scans off for a batch of direct notifications' routing transaction.
    Each table it reads has an index for the rows a batch needs, and the planner's
    estimates of its members (unnested recipient arrays) are poor (a row or two):
    with `recipients` never analyzed it joined 200 members to a sequential scan of it
    per member, every batch reading the table 200 times over as routing grew it
    (5,000 notifications queued to new recipients: 13,064,800 rows read). With them
    off the only plans left look rows up by index, whatever the statistics say. A
    topic chunk keeps the planner's choice: its 50,000 members are estimated well
    (the LIMIT), and a hash join over a scan can be the better plan there (W1 was
    ~8 % slower with scans off)."""
    await conn.execute("SET LOCAL enable_seqscan = off")


def _is_connection_error(exc: BaseException) -> bool:
    import psycopg

    return isinstance(exc, psycopg.OperationalError)
