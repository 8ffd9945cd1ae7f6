"""What a worker process's tasks share: settings, the pool and the channels."""

from __future__ import annotations

import dataclasses
from collections import Counter
from typing import Any

from app import db
from app.settings import Settings
from workers.channels import Channels


@dataclasses.dataclass(slots=True)
class Runtime:
    settings: Settings
    pool: db.Pool
    channels: Channels
    #: deliver runs in flight per channel in this process (see delivery.deliver)
    inflight: Counter[str] = dataclasses.field(default_factory=Counter)
    #: jobs this worker runs at once
    concurrency: int = 8

    @property
    def channel_cap(self) -> int:
        """Deliver runs one channel may hold at once: the rest stay free for the others,
        so a provider that hangs cannot take every slot of the worker."""
        return max(1, self.concurrency - 2)

    @classmethod
    def of(cls, context: Any) -> Runtime:
        """The runtime a task runs with (procrastinate passes it in the job context)."""
        runtime = context.additional_context["runtime"]
        assert isinstance(runtime, Runtime)
        return runtime
