"""IN_APP: the inbox. The router writes these deliveries as ``sent`` in the routing
transaction itself (one NOTIFY wakes the live inboxes), so no job ever carries one;
``send`` exists only to satisfy the protocol if a requeued one comes through."""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar

from postbell.app.core.settings import Settings
from postbell.workers.channels.base import Channel, Delivery, Outcome


class InAppChannel:
    name: ClassVar[str] = "IN_APP"
    address_field: ClassVar[str | None] = None
    inactive_field: ClassVar[str | None] = None

    @classmethod
    def from_settings(cls, settings: Settings) -> Channel:
        return cls()

    async def send(self, deliveries: Sequence[Delivery]) -> list[Outcome]:
        return [Outcome.sent() for _ in deliveries]

    async def close(self) -> None:
        return None
