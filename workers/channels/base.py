"""What every channel plugin builds on: the protocol, ``Outcome`` and the delivery types.

A channel turns a batch of deliveries into one ``Outcome`` each, classifying every
provider error once, in its own module, as transient (``Outcome.retry``) or
permanent (``Outcome.fail``). It knows its provider and this module, nothing of
HTTP routes or SQL.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import uuid
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar, Protocol

from postbell.app.core.settings import Settings


@dataclasses.dataclass(frozen=True, slots=True)
class Recipient:
    external_id: str
    email: str | None = None
    phone: str | None = None
    name: str | None = None
    locale: str | None = None
    timezone: str | None = None
    webhook_url: str | None = None
    webhook_secret: str | None = dataclasses.field(default=None, repr=False)
    slack_webhook_url: str | None = None
    discord_webhook_url: str | None = None
    whatsapp: str | None = None
    telegram_chat_id: str | None = None
    teams_webhook_url: str | None = None
    metadata: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    #: Active push devices, [{"token": ..., "platform": "android|ios|web"}] (PUSH only).
    devices: Sequence[Mapping[str, str]] = ()


@dataclasses.dataclass(frozen=True, slots=True)
class CategoryOptions:
    """What the notification's category sets for some channels (an operator's choice,
    set with an admin key: never from a recipient or a send key)."""

    #: TEAMS: the team channel's webhook, used when the recipient has none of their own
    teams_webhook_url: str | None = None
    #: APPRISE: where the category's notifications go; they hold credentials
    apprise_urls: tuple[str, ...] = dataclasses.field(default=(), repr=False)
    #: SMS through SNS: "transactional" or "promotional" instead of the priority's
    sms_type: str | None = None
    #: WHATSAPP: the approved template (content SID) the category's messages use
    whatsapp_content_sid: str | None = None


@dataclasses.dataclass(frozen=True, slots=True)
class Delivery:
    """One message to one recipient on one channel, as a channel sees it."""

    id: int
    attempts: int  # attempts made before this one
    notification_id: uuid.UUID
    recipient: Recipient
    body: str = dataclasses.field(repr=False)
    title: str | None = dataclasses.field(default=None, repr=False)
    action_url: str | None = None
    category: str | None = None
    category_required: bool = False
    priority: str = "normal"
    metadata: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    category_options: CategoryOptions = dataclasses.field(default_factory=CategoryOptions)
    #: A templated notification's fields as rendered for this channel and recipient
    #: (EMAIL: subject, html, text); title, body and action_url hold them already.
    rendered: Mapping[str, str] | None = dataclasses.field(default=None, repr=False)
    #: Deliveries with equal keys have equal rendered content (shared MIME parts).
    content_key: object = None
    #: The replay that sends this delivery again (None: its first send, or a retry
    #: of it). The delivery id stays the same; channels that can mark a resend do.
    replay_id: uuid.UUID | None = None
    #: An experiment's variant this delivery carries (its text is already in title and
    #: body); None outside experiments.
    variant: str | None = None

    @property
    def subject(self) -> str:
        """The title, or the first line of the body cut to a subject's length."""
        if self.title:
            return self.title
        first = self.body.strip().splitlines()[0] if self.body.strip() else ""
        return first if len(first) <= 78 else first[:75].rstrip() + "..."


@dataclasses.dataclass(frozen=True, slots=True)
class Outcome:
    """What became of one delivery attempt.

    kind: ``sent``; ``retry`` (transient: try again after a backoff, or after
    ``retry_after`` seconds when the provider said so); ``fail`` (permanent: dead at
    once); ``skip`` (deliberately not sent, with a reason); ``wait`` (not attempted:
    held until ``until`` by a rate limit or provider pacing, with a reason).
    """

    kind: str
    error: str | None = None
    reason: str | None = None
    retry_after: float | None = None
    provider_message_id: str | None = None
    address_inactive: bool = False
    #: Push tokens the provider called dead: disabled, never used again.
    disable_tokens: tuple[str, ...] = ()
    until: dt.datetime | None = None

    @classmethod
    def sent(cls, provider_message_id: str | None = None) -> Outcome:
        return cls("sent", provider_message_id=provider_message_id)

    @classmethod
    def retry(cls, error: str, retry_after: float | None = None) -> Outcome:
        return cls("retry", error=error[:1000], retry_after=retry_after)

    @classmethod
    def fail(
        cls, error: str, reason: str = "permanent_error", *, address_inactive: bool = False
    ) -> Outcome:
        return cls("fail", error=error[:1000], reason=reason, address_inactive=address_inactive)

    @classmethod
    def skip(cls, reason: str) -> Outcome:
        return cls("skip", reason=reason)

    @classmethod
    def wait(cls, reason: str, until: dt.datetime) -> Outcome:
        return cls("wait", reason=reason, until=until)


def invalid_content(what: str, exc: BaseException) -> Outcome:
    """The outcome of a delivery whose message could not be built: dead at once (a
    retry builds the same message), the error class recorded, never the content."""
    return Outcome.fail(
        f"{what}: cannot build the message ({type(exc).__name__})", "invalid_content"
    )


class Channel(Protocol):
    #: The channel's name in the API: "EMAIL", "PUSH", ...
    name: ClassVar[str]
    #: The recipient field holding this channel's address (None: needs none).
    address_field: ClassVar[str | None]
    #: The recipient field set when that address stopped working (None: never).
    inactive_field: ClassVar[str | None]

    async def send(self, deliveries: Sequence[Delivery]) -> list[Outcome]:
        """Send each delivery; answer one outcome per delivery, in order. Never raises
        for a provider error: classify it into the outcome instead."""
        ...

    async def close(self) -> None: ...


class ChannelFactory(Protocol):
    name: ClassVar[str]
    address_field: ClassVar[str | None]
    inactive_field: ClassVar[str | None]

    @classmethod
    def from_settings(cls, settings: Settings) -> Channel | None:
        """The configured channel, or None when its settings are absent."""
        ...
