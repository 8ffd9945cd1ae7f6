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

#: Job priority from which a run may take a spare slot (high: 20, urgent: 30).
PREEMPT_PRIORITY = 20
#: Spare slots per channel and process, for high and urgent runs.
SPARE_SLOTS = 2
#: A run holds at most what it sends in this long; it gives the rest back at once.
SEND_HORIZON_SECONDS = 0.5
#: What a run of a channel not measured yet may hold, and the least any run holds.
FIRST_HOLD = 64
MIN_HOLD = 8
#: Rounds of its share of the channel's requests in flight a run holds at least: two,
#: so that a round waits at the gate while one is out (the adaptive gate grows only
#: while requests wait for it).
ROUNDS_HELD = 2


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
    #: (notification ids, job priority, a future the batch that adopts them settles);
    #: see tasks.route
    routing: asyncio.Lock = dataclasses.field(default_factory=asyncio.Lock)
    waiting_routes: dict[int, tuple[list[str], int, asyncio.Future[Any]]] = dataclasses.field(
        default_factory=dict
    )
    worker_ids: set[int] = dataclasses.field(default_factory=set)
    #: per channel: slots for high and urgent runs when every ordinary one is taken
    spare_slots: dict[str, asyncio.Semaphore] = dataclasses.field(default_factory=dict)
    #: per channel: deliveries a run sent per second, recently (see ``hold_limit``)
    send_rates: dict[str, float] = dataclasses.field(default_factory=dict)

    @property
    def fanout_parallel(self) -> int:
        """Connections a topic fan-out routes its chunks on at once: the setting, at
        most half the pool, so that deliver runs and other routing keep the rest."""
        return max(1, min(self.settings.fanout_parallel, self.settings.db_pool_size // 2))

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

    def slots_for(self, channel: str, priority: int) -> asyncio.Semaphore:
        """The slots a run of ``priority`` takes: a high or urgent run whose channel's
        ordinary slots are all taken (by slow runs of a backlog) gets one of
        ``SPARE_SLOTS`` instead of waiting for them."""
        slots = self.channel_slots(channel)
        if priority >= PREEMPT_PRIORITY and slots.locked():
            if channel not in self.spare_slots:
                self.spare_slots[channel] = asyncio.Semaphore(SPARE_SLOTS)
            return self.spare_slots[channel]
        return slots

    def hold_limit(
        self,
        channel: str,
        batch: int,
        in_flight: int | None = None,
        latency: float | None = None,
    ) -> int:
        """How many deliveries a run of ``channel`` may hold: what it sends in
        ``SEND_HORIZON_SECONDS`` at the rate runs of the channel reached recently
        (before any was measured: ``FIRST_HOLD``), between ``MIN_HOLD`` and ``batch``.

        ``in_flight`` is how many requests the channel lets out at once now (its
        gate's limit) and ``latency`` its receivers' answer time (the gate's least
        median). When fewer than ``ROUNDS_HELD`` rounds of answers fit in the horizon,
        a run holds ``ROUNDS_HELD`` rounds of its share of ``in_flight`` at least.
        Otherwise, against a receiver slower than the horizon, the rate shrinks the
        hold to ``MIN_HOLD`` (a run of 64 that takes 4 s is 16/s, a hold of 8), the
        runs keep the gate nearly empty, nobody waits for it and it never grows: 4 runs
        x 8 in flight whatever the receivers could take. Holding rounds costs no
        preemption: urgent work takes a spare slot and enters the gate ahead of every
        waiting request. Against fast receivers the rate decides alone (more held would
        only open more connections where the CPU is the limit)."""
        rate = self.send_rates.get(channel)
        wanted = FIRST_HOLD if rate is None else int(rate * SEND_HORIZON_SECONDS)
        if in_flight and latency is not None and latency * ROUNDS_HELD >= SEND_HORIZON_SECONDS:
            runs = max(1, self.concurrency // 2)  # the channel's ordinary slots
            wanted = max(wanted, ROUNDS_HELD * -(-in_flight // runs))
        return max(min(MIN_HOLD, batch), min(wanted, batch))

    def observe_send(self, channel: str, deliveries: int, seconds: float) -> None:
        """A run of ``channel`` sent ``deliveries`` in ``seconds``."""
        if deliveries <= 0:
            return
        rate = deliveries / max(seconds, 1e-3)
        previous = self.send_rates.get(channel)
        self.send_rates[channel] = rate if previous is None else 0.5 * previous + 0.5 * rate

    @classmethod
    def of(cls, context: Any) -> Runtime:
        """The runtime a task runs with (procrastinate passes it in the job context)."""
        runtime = context.additional_context["runtime"]
        assert isinstance(runtime, Runtime)
        return runtime
