"""Payloads of /api/replays and /api/notifications/{id}/replay (msgspec Structs)."""

from __future__ import annotations

import datetime as dt
import uuid
from typing import Annotated, Literal

import msgspec

from postbell.app.api.types import ExternalId, Key
from postbell.app.core.channels import ChannelName

Priority = Literal["low", "normal", "high", "urgent"]
#: The statuses a replay picks (sql: replay_statuses()): sent once, or dead. Not
#: skipped or cancelled (deliberately not sent), bounced or complained (the address
#: is known bad), pending or failed (on their way already).
ReplayStatus = Literal["sent", "delivered", "undelivered", "dead"]
REPLAY_STATUSES: tuple[ReplayStatus, ...] = ("sent", "delivered", "undelivered", "dead")
Time = Annotated[dt.datetime, msgspec.Meta(tz=True)]


class ReplayIn(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """Send one channel's past deliveries again: those created in [from, to) whose
    status is one of ``statuses``, optionally of one recipient or category."""

    channel: ChannelName
    from_: Time = msgspec.field(name="from")
    to: Time
    statuses: Annotated[list[ReplayStatus], msgspec.Meta(min_length=1)] = msgspec.field(
        default_factory=lambda: list(REPLAY_STATUSES)
    )
    recipient: ExternalId | None = None
    category: Key | None = None
    #: count what would be sent again; change nothing
    dry_run: bool = False
    #: the deliver jobs' priority: low unless asked otherwise
    priority: Priority = "low"


class NotificationReplayIn(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """Send one notification's deliveries again (all its channels but IN_APP unless
    ``channels`` names some)."""

    channels: Annotated[list[ChannelName], msgspec.Meta(min_length=1)] | None = None
    statuses: Annotated[list[ReplayStatus], msgspec.Meta(min_length=1)] = msgspec.field(
        default_factory=lambda: list(REPLAY_STATUSES)
    )
    dry_run: bool = False
    priority: Priority = "low"


class ReplayAccepted(msgspec.Struct):
    """``id``: the replay (null for a dry run); ``deliveries``: how many it sends again
    (a dry run: would send)."""

    id: uuid.UUID | None
    deliveries: int
    dry_run: bool = False
