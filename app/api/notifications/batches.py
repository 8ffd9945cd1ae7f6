"""Group commit: concurrent accepted notifications written in one transaction.

Every ``POST /api/notifications`` used to be its own transaction: a function call, a
notification row, a route job row and a durable commit each. Under concurrent load
those commits are most of Postgres's work. ``GroupCommit`` writes the requests that
arrive while a write is in flight with the next one, as one statement
(``enqueue_notifications()``, migration 0025): a lone request is written at once
(nothing waits for a timer), a burst shares a commit. Each request is answered only
after the transaction holding its row has committed.

One request never fails another: each item is checked on its own in the statement
(an unknown category or topic is that request's 422), and when the batch statement
itself fails, each of its requests is written again on its own, so only the one at
fault gets an error. Requests with an idempotency key, a template or an experiment
keep the one-by-one path (a key may wait on another request's row lock, which must
not hold a batch up).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import structlog
from psycopg.types.json import Jsonb

from postbell.app.core import db

log = structlog.get_logger("postbell.batches")

#: at most this many requests in one statement
MAX_BATCH = 256
#: batches in flight at once (each on a pooled connection of its own): a second one
#: starts while the first commits, so a lone request never waits behind a commit
MAX_IN_FLIGHT = 2

#: one item's outcome: the row (id, status, error) the statement answered for it
Row = Mapping[str, Any]
#: writes one item on its own (the one-by-one path), for a batch that failed
Single = Callable[[], Awaitable[Row]]


@dataclasses.dataclass(slots=True)
class _Pending:
    item: dict[str, Any]
    single: Single
    future: asyncio.Future[Row]


class GroupCommit:
    def __init__(self, pool: db.Pool) -> None:
        self._pool = pool
        self._queue: list[_Pending] = []
        self._running: set[asyncio.Task[None]] = set()
        #: statements run and requests they carried (GET /metrics, tests)
        self.batches = 0
        self.items = 0

    async def write(self, item: dict[str, Any], single: Single) -> Row:
        """Write ``item`` with whatever else is waiting; answer its row once the
        transaction holding it has committed. ``single`` writes it alone, if the
        batch cannot be written."""
        future: asyncio.Future[Row] = asyncio.get_running_loop().create_future()
        self._queue.append(_Pending(item, single, future))
        self._start()
        # A request that goes away (client disconnect) does not take its batch with it.
        return await asyncio.shield(future)

    def _start(self) -> None:
        while self._queue and len(self._running) < MAX_IN_FLIGHT:
            batch, self._queue = self._queue[:MAX_BATCH], self._queue[MAX_BATCH:]
            task = asyncio.create_task(self._write(batch), name="group-commit")
            self._running.add(task)
            task.add_done_callback(self._done)

    def _done(self, task: asyncio.Task[None]) -> None:
        self._running.discard(task)
        self._start()

    async def _write(self, batch: list[_Pending]) -> None:
        try:
            async with self._pool.connection() as conn:
                rows = await db.fetch_all(
                    conn, "notifications_enqueue_batch", {"items": Jsonb([p.item for p in batch])}
                )
        except Exception as exc:
            if len(batch) > 1:
                log.warning("group_commit_split", requests=len(batch), error=type(exc).__name__)
            await asyncio.gather(*(self._alone(p) for p in batch))
            return
        self.batches += 1
        self.items += len(batch)
        for pending, row in zip(batch, rows, strict=True):
            if not pending.future.done():
                pending.future.set_result(row)

    @staticmethod
    async def _alone(pending: _Pending) -> None:
        try:
            row = await pending.single()
        except Exception as exc:
            if not pending.future.done():
                pending.future.set_exception(exc)
            return
        if not pending.future.done():
            pending.future.set_result(row)

    async def stop(self) -> None:
        """Let the batches in flight finish (their requests are being answered)."""
        while self._running:
            with contextlib.suppress(Exception):
                await asyncio.gather(*self._running)
