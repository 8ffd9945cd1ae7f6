"""Limits on things in flight that let waiters in by priority, not by arrival.

An ``asyncio.Semaphore`` is first come, first served: an urgent webhook queued behind
the 2,000 low-priority requests of the runs already waiting would wait for all of
them. ``PriorityGate`` serves its waiters highest priority first (then in arrival
order), so urgent work waits only for what is already in flight.

``AdaptiveGate`` also sizes its limit to the latency it sees (Little's law: the
requests in flight a rate needs are rate x latency). A receiver that answers in 200 ms
needs 600 requests in flight for 3,000/s, one that answers in 2 ms needs 6; a fixed
limit is wrong for one of them. The gate grows while answers come back as fast as
they did with fewer in flight (the receiver is not the bottleneck: more in flight is
more throughput) and shrinks when they slow down as it adds more (requests queue at
the receiver or in this process: more in flight is only more latency), between a
floor and the configured ceiling, which bounds memory and connections.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import itertools
import math
import statistics
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
        """Hand the place to the best waiter, else free it (and over a lowered limit,
        free it without handing it on)."""
        if self.held > self.limit:
            self.held -= 1
            return
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


class AdaptiveGate(PriorityGate):
    """A ``PriorityGate`` whose limit follows the latency of what it lets through.

    Every window of answers (a quarter of the limit, at least 16) it compares their
    median latency with the least median seen lately (the receivers' answer time
    without queueing). As fast as that, with requests waiting at the gate: the limit
    doubles until it first meets a slowdown, then grows by its square root. Slower
    than ``TOLERANCE`` times that: it gives back a tenth. The window after a change
    is not judged (its answers left under the old limit). The least latency drifts
    up slowly, so receivers that became slower for good are learnt again.
    """

    #: latency up to this many times the least seen counts as "as fast"
    TOLERANCE = 1.5
    #: the least latency seen is raised by this factor per window (forgetting)
    DRIFT = 1.02
    #: a slowdown takes this share of the limit away per window: gently, since the
    #: latency seen lags the limit (answers of requests let in under the old one)
    BACK_OFF = 0.9

    def __init__(self, ceiling: int, *, start: int = 64, floor: int = 32) -> None:
        self.ceiling = max(1, ceiling)
        self.floor = min(max(1, floor), self.ceiling)
        super().__init__(min(max(start, self.floor), self.ceiling))
        self.least: float | None = None
        self.slow_start = True
        self._window: list[float] = []
        self._queued = False
        self._settling = False

    async def acquire(self, priority: int = 0) -> None:
        if self.held >= self.limit:
            self._queued = True  # demand exceeds the limit in this window
        await super().acquire(priority)

    def observe(self, seconds: float) -> None:
        """A request let through by the gate was answered in ``seconds``. Only answers
        count: a host that hangs until the timeout says nothing about the others, and
        the median keeps a few slow hosts among many from steering the limit."""
        self._window.append(seconds)
        if len(self._window) >= max(16, self.limit // 4):
            self._adjust(statistics.median(self._window))
            self._window, self._queued = [], False

    def _adjust(self, median: float) -> None:
        queued = self._queued or bool(self._waiters)
        if self._settling:  # this window's answers mostly left under the old limit
            self._settling = False
            return
        least = median if self.least is None else min(self.least * self.DRIFT, median)
        self.least = least
        if median <= least * self.TOLERANCE:
            if queued:
                grown = self.limit * 2 if self.slow_start else self.limit + math.isqrt(self.limit)
                self._set(grown)
        else:
            self.slow_start = False
            self._set(int(self.limit * self.BACK_OFF))

    def _set(self, limit: int) -> None:
        limit = min(max(limit, self.floor), self.ceiling)
        self._settling = limit != self.limit
        self.limit = limit
        # a raised limit lets waiters in at once, best first
        while self.held < self.limit and self._waiters:
            _, _, future = heapq.heappop(self._waiters)
            if not future.done():
                self.held += 1
                future.set_result(None)
