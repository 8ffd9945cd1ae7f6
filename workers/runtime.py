"""What a worker process's tasks share: settings, the pool and the channels."""

from __future__ import annotations

import dataclasses
from typing import Any

from app import db
from app.settings import Settings
from workers.channels import Channels


@dataclasses.dataclass(slots=True)
class Runtime:
    settings: Settings
    pool: db.Pool
    channels: Channels

    @classmethod
    def of(cls, context: Any) -> Runtime:
        """The runtime a task runs with (procrastinate passes it in the job context)."""
        runtime = context.additional_context["runtime"]
        assert isinstance(runtime, Runtime)
        return runtime
