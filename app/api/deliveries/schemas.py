"""Payloads of /api/deliveries (msgspec Structs)."""

from __future__ import annotations

import datetime as dt
import uuid
from typing import Any

import msgspec


class DeliveryEvent(msgspec.Struct):
    """One entry of a delivery's timeline.

    ``kind``: ``attempt`` (a send: ``outcome`` is the status it led to, with
    ``error_class``/``error`` when it failed, ``provider_message_id``, and the send
    call's ``started_at`` and ``duration_ms``), ``skip`` (not sent at send time,
    ``detail.reason``), ``feedback`` (what the provider reported, ``detail.provider``,
    ``detail.applied``: whether it moved the delivery), ``requeue`` (a dead letter put
    back), ``replay`` (sent again by a replay: ``detail.replay_id``,
    ``detail.previous_status``; the attempts that follow name the replay in
    ``detail.replay_id`` too), ``cancel``."""

    at: dt.datetime
    kind: str
    outcome: str | None
    error_class: str | None
    error: str | None
    provider_message_id: str | None
    started_at: dt.datetime | None
    duration_ms: float | None
    detail: dict[str, Any] | None


class DeliveryDetail(msgspec.Struct):
    id: int
    notification_id: uuid.UUID
    channel: str
    recipient: str
    status: str
    reason: str | None
    attempts: int
    last_error: str | None
    next_attempt_at: dt.datetime | None
    provider_message_id: str | None
    created_at: dt.datetime
    updated_at: dt.datetime
    sent_at: dt.datetime | None
    read_at: dt.datetime | None
    seen_at: dt.datetime | None
    archived_at: dt.datetime | None
    fallback_for: int | None
    fallback_reason: str | None
    #: the last replay that sent it again (null: never replayed)
    replay_id: uuid.UUID | None
    #: the experiment variant it carries (null outside experiments)
    variant: str | None
    #: oldest first, at most the last 1,000
    events: list[DeliveryEvent]
