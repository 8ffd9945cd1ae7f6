"""Coalesced worker wake-ups for the notifications the API accepts.

Each accepted notification commits without a NOTIFY (postbell.quiet_defer, see
sql/migrations/0006_wakeups.sql): a NOTIFY would serialize the API's commits on
Postgres's notify lock. Instead ``Waker.poke()`` marks that work arrived, and one
background task sends a single NOTIFY on a connection of its own, at most every
``INTERVAL`` seconds, after the commits it covers. If the NOTIFY is lost (the
process dies, the connection drops), workers find the jobs at their next poll.
"""

from __future__ import annotations

import asyncio
import contextlib

import structlog

from postbell.app.core import db
from postbell.app.core.workflow_steps import WAKEUP_CHANNEL

log = structlog.get_logger("postbell.wakeups")

INTERVAL = 0.002
_PAYLOAD = '\'{"type": "job_inserted", "job_id": 0}\''
_WAKE = (
    f"SELECT pg_notify('procrastinate_queue_v1#route', {_PAYLOAD}),"
    f" pg_notify('procrastinate_any_queue_v1', {_PAYLOAD})"
).encode()
#: The workflow engines' wake-up (workers/workflows.py LISTENs on it).
_WAKE_WORKFLOWS = f"SELECT pg_notify('{WAKEUP_CHANNEL}', '')".encode()


class Waker:
    def __init__(self, database_url: str) -> None:
        self._url = database_url
        self._pending = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._routing = False
        self._workflows = False

    def poke(self) -> None:
        """Wake the route workers (a notification was accepted)."""
        self._routing = True
        self._pending.set()

    def poke_workflows(self) -> None:
        """Wake the workflow engines (a trigger's runs may send at once)."""
        self._workflows = True
        self._pending.set()

    async def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="worker-wakeups")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _run(self) -> None:
        delay = 0.5
        while True:
            try:
                async with await db.connect(self._url, name="postbell-wakeups") as conn:
                    delay = 0.5
                    while True:
                        await self._pending.wait()
                        self._pending.clear()
                        routing, workflows = self._routing, self._workflows
                        self._routing = self._workflows = False
                        if routing:
                            await conn.execute(_WAKE)
                        if workflows:
                            await conn.execute(_WAKE_WORKFLOWS)
                        await asyncio.sleep(INTERVAL)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("wakeups_lost", error=db.describe_error(exc, self._url), retry_in=delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 10.0)
