"""Claiming many queued jobs in one round trip, on top of procrastinate's one-at-a-time fetch.

A task that procrastinate started for one job tops its run up with more due jobs of
the same task and queue (``claim_more``), records their work in its own transaction
and removes them there (``finish``). If the run fails before recording, they go back
to the queue (``release``); if the process dies, they are 'doing' under a worker
whose heartbeat stopped, and the reaper retries them like any stalled job.
"""

from __future__ import annotations

import asyncio
import dataclasses
from typing import Any

import structlog

from postbell.app.core import db

log = structlog.get_logger("postbell.claims")


@dataclasses.dataclass(frozen=True, slots=True)
class Claimed:
    worker_id: int | None
    job_ids: list[int]
    args: list[dict[str, Any]]
    priorities: list[int] = dataclasses.field(default_factory=list)

    @classmethod
    def none(cls) -> Claimed:
        return cls(worker_id=None, job_ids=[], args=[])

    def only(self, job_ids: set[int]) -> Claimed:
        """The part of this claim holding ``job_ids``."""
        keep = [i for i, job_id in enumerate(self.job_ids) if job_id in job_ids]
        return Claimed(
            self.worker_id,
            [self.job_ids[i] for i in keep],
            [self.args[i] for i in keep],
            [self.priorities[i] for i in keep] if self.priorities else [],
        )


async def claim_more(pool: db.Pool, job: Any, *, limit: int, max_items: int) -> Claimed:
    """Claim up to ``limit`` more due jobs like ``job`` holding at most ``max_items`` items."""
    if job.worker_id is None or limit <= 0 or max_items <= 0:
        return Claimed.none()
    async with pool.connection() as conn:
        rows = await db.fetch_all(
            conn,
            "jobs_claim_more",
            {
                "worker_id": job.worker_id,
                "queue": job.queue,
                "task_name": job.task_name,
                "limit": limit,
                "max_items": max_items,
            },
        )
    return Claimed(
        worker_id=job.worker_id,
        job_ids=[r["id"] for r in rows],
        args=[r["args"] for r in rows],
        priorities=[r["priority"] for r in rows],
    )


async def finish(conn: db.Conn, claimed: Claimed) -> None:
    """Remove the claimed jobs, inside the transaction that records their work."""
    if claimed.job_ids:
        await db.execute(
            conn, "jobs_finish_claimed", {"ids": claimed.job_ids, "worker_id": claimed.worker_id}
        )


async def release(pool: db.Pool, claimed: Claimed) -> None:
    """Best effort: put claimed jobs back after a failed run (the reaper covers the rest)."""
    if not claimed.job_ids:
        return
    try:
        async with pool.connection() as conn:
            await db.execute(
                conn,
                "jobs_release_claimed",
                {"ids": claimed.job_ids, "worker_id": claimed.worker_id},
            )
    except Exception as exc:  # the database may be the reason the run failed
        log.warning("claimed_jobs_not_released", jobs=len(claimed.job_ids), error=str(exc))


async def fail(pool: db.Pool, claimed: Claimed) -> None:
    """Mark claimed jobs failed: their work failed for a reason of its own."""
    if claimed.job_ids:
        async with pool.connection() as conn:
            await db.execute(
                conn,
                "jobs_fail_claimed",
                {"ids": claimed.job_ids, "worker_id": claimed.worker_id},
            )


async def release_shielded(pool: db.Pool, claimed: Claimed) -> None:
    """``release`` that still runs when the caller is being cancelled (shutdown)."""
    await asyncio.shield(release(pool, claimed))
