"""Payloads of /api/notifications (msgspec Structs: decoded, validated and documented)."""

from __future__ import annotations

import datetime as dt
import uuid
from typing import Annotated, Any, Literal

import msgspec

from postbell.app.api.types import MAX_RECIPIENTS, Body, ExternalId, Key, Title, Url
from postbell.app.core.channels import ChannelName

Priority = Literal["low", "normal", "high", "urgent"]


class Variant(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """One arm of an A/B experiment: its share (``weight``) and either its own text or
    a ``template`` (its active version is pinned when the notification is accepted)."""

    name: Key
    weight: Annotated[int, msgspec.Meta(ge=1, le=1_000_000)]
    title: Title | None = None
    body: Body | None = None
    action_url: Url | None = None
    #: A template's key instead of the text: rendered with the notification's ``data``
    #: per channel and recipient locale (docs/experiments.md).
    template: Key | None = None


class NotificationIn(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """A notification to send. ``message`` is shorthand for ``body``."""

    to: (
        Annotated[list[ExternalId], msgspec.Meta(min_length=1, max_length=MAX_RECIPIENTS)] | None
    ) = None
    topic: Key | None = None
    message: Body | None = None
    title: Title | None = None
    body: Body | None = None
    action_url: Url | None = None
    channels: Annotated[list[ChannelName], msgspec.Meta(min_length=1)] | None = None
    priority: Priority = "normal"
    category: Key | None = None
    send_at: dt.datetime | None = None
    expires_at: dt.datetime | None = None
    metadata: dict[str, Any] | None = None
    #: When the first channel ends dead or has no device/address, send on the second:
    #: {"PUSH": "SMS"}.
    fallback: dict[ChannelName, ChannelName] | None = None
    #: A template's key instead of message, title, body and action_url: each channel
    #: and recipient gets the template's text in their language (docs/templates.md).
    template: Key | None = None
    #: The template's variables (required with a template: its required data keys).
    data: dict[str, Any] | None = None
    #: An A/B experiment's key: each recipient gets one of ``variants``, the same one
    #: for every notification of this experiment (docs/experiments.md).
    experiment: Key | None = None
    variants: Annotated[list[Variant], msgspec.Meta(min_length=2, max_length=10)] | None = None


class NotificationAccepted(msgspec.Struct):
    id: uuid.UUID
    status: str


class Cancelled(msgspec.Struct):
    id: uuid.UUID
    status: str
    #: deliveries cancelled (for a notification not yet routed: the deliveries it
    #: would have made, recorded as cancelled shortly after)
    cancelled: int


class DeliveryOut(msgspec.Struct):
    id: int
    channel: str
    recipient: str
    status: str
    reason: str | None
    attempts: int
    last_error: str | None
    next_attempt_at: dt.datetime | None
    sent_at: dt.datetime | None
    created_at: dt.datetime
    fallback_for: int | None = None
    fallback_reason: str | None = None


class NotificationOut(msgspec.Struct):
    id: uuid.UUID
    status: str
    priority: str
    category: str | None
    title: str | None
    body: str
    action_url: str | None
    metadata: dict[str, Any]
    channels: list[str] | None
    fallback: dict[str, str] | None
    topic: str | None
    recipient_count: int | None
    send_at: dt.datetime | None
    expires_at: dt.datetime | None
    created_at: dt.datetime
    routed_at: dt.datetime | None
    delivery_counts: dict[str, int]
    deliveries: list[DeliveryOut]
    next_cursor: str | None
    #: the template, the version it renders with (pinned when accepted) and its data
    template: str | None = None
    template_version: int | None = None
    data: dict[str, Any] | None = None
    #: its A/B experiment and the variants as stored: a template variant with the
    #: ``template_version`` pinned when accepted
    experiment: str | None = None
    variants: list[dict[str, Any]] | None = None


class NotificationSummary(msgspec.Struct):
    """One row of the notifications list (the content is in GET /api/notifications/{id})."""

    id: uuid.UUID
    status: str
    priority: str
    category: str | None
    title: str | None
    topic: str | None
    recipient_count: int | None
    channels: list[str] | None
    send_at: dt.datetime | None
    expires_at: dt.datetime | None
    created_at: dt.datetime
    routed_at: dt.datetime | None
    delivery_counts: dict[str, int]
    #: the template it was sent with, and the workflow whose send step made it
    template: str | None = None
    workflow: str | None = None


class NotificationPage(msgspec.Struct):
    items: list[NotificationSummary]
    next_cursor: str | None
