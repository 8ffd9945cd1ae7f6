"""A limit on things in flight that lets waiters in by priority, not by arrival.

An ``asyncio.Semaphore`` is first come, first served: an urgent webhook queued behind
the 2,000 low-priority requests of the runs already waiting would wait for all of
them. ``PriorityGate`` serves its waiters highest priority first (then in arrival
order), so urgent work waits only for what is already in flight.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import itertools
from collections.abc import AsyncIterator

#: procrastinate priority of each notification priority (job_priority() in SQL)
RANKS = {"urgent": 30, "high": 20, "normal": 10, "low": 0}


def rank(priority: str | None) -> int:
    """The job priority of a notification priority (unknown: normal)."""
    return RANKS.get(priority or "normal", RANKS["normal"])


class PriorityGate:
    """At most ``limit`` holders at once; waiters enter highest priority first."""

    def __init__(self, limit: int) -> None:
        self.limit = max(1, limit)
        self.held = 0
        self._waiters: list[tuple[int, int, asyncio.Future[None]]] = []
        self._order = itertools.count()

    def free(self) -> bool:
        """True when an ``acquire`` would not wait."""
        return self.held < self.limit

    async def acquire(self, priority: int = 0) -> None:
        # Below the limit nobody waits: a release hands its place to a live waiter
        # before it frees one, so waiters exist only while every place is held.
        if self.held < self.limit:
            self.held += 1
            return
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        heapq.heappush(self._waiters, (-priority, next(self._order), future))
        try:
            await future
        except asyncio.CancelledError:
            if future.done() and not future.cancelled():
                self.release()  # the place was handed over just as the waiter gave up
            else:
                future.cancel()  # release() skips it
            raise

    def release(self) -> None:
        """Hand the place to the best waiter, else free it."""
        while self._waiters:
            _, _, future = heapq.heappop(self._waiters)
            if not future.done():
                future.set_result(None)  # the place passes on: ``held`` stays
                return
        self.held -= 1

    @contextlib.asynccontextmanager
    async def slot(self, priority: int = 0) -> AsyncIterator[None]:
        await self.acquire(priority)
        try:
            yield
        finally:
            self.release()
