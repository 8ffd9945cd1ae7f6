"""The registry: every channel plugin, by the name the API uses.

Adding a channel is one module implementing ``Channel`` (see ``base.py``), one line
here and its tests (the channel contract suite runs on every entry); the router
and the deliver task need no change. Every name in ``core.channels.CHANNELS`` has
exactly one entry (a test holds them together).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

from psycopg.types.json import Jsonb

from postbell.app.core.channels import ChannelName
from postbell.app.core.settings import Settings
from postbell.workers.channels.apprise import AppriseChannel
from postbell.workers.channels.base import Channel, ChannelFactory
from postbell.workers.channels.discord import DiscordChannel
from postbell.workers.channels.email import EmailChannel
from postbell.workers.channels.in_app import InAppChannel
from postbell.workers.channels.push import PushChannel
from postbell.workers.channels.slack import SlackChannel
from postbell.workers.channels.sms import SmsChannel
from postbell.workers.channels.teams import TeamsChannel
from postbell.workers.channels.telegram import TelegramChannel
from postbell.workers.channels.webhook import WebhookChannel
from postbell.workers.channels.whatsapp import WhatsAppChannel

REGISTRY: Mapping[ChannelName, type[ChannelFactory]] = {
    "IN_APP": InAppChannel,
    "EMAIL": EmailChannel,
    "PUSH": PushChannel,
    "SMS": SmsChannel,
    "WEBHOOK": WebhookChannel,
    "SLACK": SlackChannel,
    "DISCORD": DiscordChannel,
    "WHATSAPP": WhatsAppChannel,
    "TELEGRAM": TelegramChannel,
    "TEAMS": TeamsChannel,
    "APPRISE": AppriseChannel,
}


@dataclasses.dataclass(slots=True)
class Channels:
    """The channels of one worker process: every registered one, configured or not."""

    configured: dict[str, Channel]
    settings: Settings

    @classmethod
    def from_settings(cls, settings: Settings) -> Channels:
        configured: dict[str, Channel] = {}
        for name, factory in REGISTRY.items():
            channel = factory.from_settings(settings)
            if channel is not None:
                configured[name] = channel
        return cls(configured=configured, settings=settings)

    @property
    def unconfigured(self) -> list[str]:
        return [name for name in REGISTRY if name not in self.configured]

    def get(self, name: str) -> Channel | None:
        return self.configured.get(name)

    def address_field(self, name: str) -> str | None:
        """The recipient column ``name`` sends to (None: it needs none)."""
        factory = REGISTRY.get(name)  # type: ignore[call-overload]
        return factory.address_field if factory is not None else None

    def inactive_field(self, name: str) -> str | None:
        """The recipient column set when ``name``'s address stops working (None: never)."""
        factory = REGISTRY.get(name)  # type: ignore[call-overload]
        return factory.inactive_field if factory is not None else None

    def routing_spec(self) -> dict[str, Any]:
        """The per-channel facts routing decides with: SQL arrays plus batch sizes."""
        names = list(REGISTRY)
        return {
            "ch_names": names,
            "ch_address": [REGISTRY[n].address_field for n in names],
            "ch_inactive": [REGISTRY[n].inactive_field for n in names],
            "ch_configured": [n in self.configured for n in names],
            "batch_sizes": self.batch_sizes(),
        }

    def batch_sizes(self) -> Jsonb:
        return Jsonb({n: self.settings.batch_size_for(n) for n in REGISTRY})

    async def close(self) -> None:
        for channel in self.configured.values():
            await channel.close()
