"""Routing: notifications -> deliveries, set-based, in one transaction per batch.

A batch of queued notifications becomes, in one statement, every notification x
recipient x channel row of ``deliveries`` — IN_APP ones already ``sent`` (visible
in the inbox at commit, with one NOTIFY for live inboxes), undeliverable ones
``skipped`` with their reason, the rest ``pending`` — plus the deliver jobs that
carry the pending ids, in batches per channel and priority. The same transaction
marks the notifications ``routed`` and removes the routing jobs it handled, so a
crash anywhere leaves either all of it or none, and a rerun is a no-op.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Sequence

import structlog

from app import db
from workers import claims
from workers.runtime import Runtime

log = structlog.get_logger("postbell.router")

#: Channels for a notification that names none and has no category defaults.
DEFAULT_CHANNELS = ["IN_APP"]


async def route(runtime: Runtime, notification_ids: Sequence[str], claimed: claims.Claimed) -> int:
    """Route a batch; answer how many notifications it routed.

    ``notification_ids[0]`` belongs to the job procrastinate started; the others to
    ``claimed``. If the batch fails as a whole, the claimed jobs go back to the queue
    and only the first notification is routed again, alone: one bad notification
    fails its own job and cannot hold the others back.
    """
    ids = [uuid.UUID(i) for i in dict.fromkeys(notification_ids)]
    try:
        return await _route_batch(runtime, ids, claimed)
    except Exception as exc:
        if len(ids) == 1 or _is_connection_error(exc):
            raise
        log.warning("route_batch_failed", notifications=len(ids), error=str(exc))
    await claims.release(runtime.pool, claimed)
    return await _route_batch(runtime, ids[:1], claims.Claimed.none())


async def _route_batch(runtime: Runtime, ids: list[uuid.UUID], claimed: claims.Claimed) -> int:
    started = time.perf_counter()
    async with runtime.pool.connection() as conn, conn.transaction():
        rows = await db.fetch_all(conn, "route_lock_notifications", {"ids": ids})
        direct = [r["id"] for r in rows if not r["is_topic"]]
        counts = {"deliveries": 0, "pending": 0, "jobs": 0}
        if direct:
            await db.execute(conn, "route_ensure_recipients", {"ids": direct})
            result = await db.fetch_one(
                conn,
                "route_direct",
                {
                    "ids": direct,
                    "default_channels": DEFAULT_CHANNELS,
                    **runtime.channels.routing_spec(),
                },
            )
            assert result is not None
            counts = {k: int(result[k]) for k in counts}
            await db.execute(conn, "route_mark_routed", {"ids": direct})
        await claims.finish(conn, claimed)
    if rows:
        log.info(
            "routed",
            notifications=len(rows),
            **counts,
            ms=round((time.perf_counter() - started) * 1000, 1),
        )
    return len(rows)


def _is_connection_error(exc: BaseException) -> bool:
    import psycopg

    return isinstance(exc, psycopg.OperationalError)
