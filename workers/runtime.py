"""What a worker process's tasks share: settings, the pool and the channels."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from postbell.app.core import db
from postbell.app.core.settings import Settings
from postbell.workers.channels.registry import Channels


@dataclasses.dataclass(slots=True)
class Runtime:
    settings: Settings
    pool: db.Pool
    channels: Channels
    #: deliver runs a channel may have in flight in this process (see delivery.deliver)
    slots: dict[str, asyncio.Semaphore] = dataclasses.field(default_factory=dict)
    #: jobs this worker runs at once
    concurrency: int = 8
    #: procrastinate jobs our tasks are running now (each run's own and those it
    #: claimed), and the procrastinate worker ids they ran under: the maintenance loop
    #: requeues jobs left 'doing' under these ids that no task is running any more
    active_jobs: set[int] = dataclasses.field(default_factory=set)
    #: held by the routing run in progress, and the runs waiting for it, by job id:
    #: (notification id, job priority, a future the batch that adopts them settles);
    #: see tasks.route
    routing: asyncio.Lock = dataclasses.field(default_factory=asyncio.Lock)
    waiting_routes: dict[int, tuple[str, int, asyncio.Future[Any]]] = dataclasses.field(
        default_factory=dict
    )
    worker_ids: set[int] = dataclasses.field(default_factory=set)

    @contextlib.contextmanager
    def running(self, job: Any) -> Iterator[Callable[[Sequence[int]], None]]:
        """Mark ``job`` as running for the block; the callable it gives adds the jobs
        the run claims."""
        mine = {job.id}
        if job.worker_id is not None:
            self.worker_ids.add(job.worker_id)
        self.active_jobs.add(job.id)

        def track(ids: Sequence[int]) -> None:
            mine.update(ids)
            self.active_jobs.update(ids)

        try:
            yield track
        finally:
            self.active_jobs -= mine

    def channel_slots(self, channel: str) -> asyncio.Semaphore:
        """At most half the worker's job slots per channel: a provider that hangs
        cannot take the slots the other channels need."""
        if channel not in self.slots:
            self.slots[channel] = asyncio.Semaphore(max(1, self.concurrency // 2))
        return self.slots[channel]

    @classmethod
    def of(cls, context: Any) -> Runtime:
        """The runtime a task runs with (procrastinate passes it in the job context)."""
        runtime = context.additional_context["runtime"]
        assert isinstance(runtime, Runtime)
        return runtime
