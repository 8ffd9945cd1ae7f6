"""Payloads of /api/inbox."""

from __future__ import annotations

import datetime as dt
import uuid
from typing import Annotated, Any

import msgspec

from postbell.app.api.types import DbId


class InboxItem(msgspec.Struct):
    id: int
    notification_id: uuid.UUID
    title: str | None
    body: str
    action_url: str | None
    category: str | None
    priority: str
    metadata: dict[str, Any]
    created_at: dt.datetime
    read_at: dt.datetime | None
    seen_at: dt.datetime | None
    archived_at: dt.datetime | None


class InboxPage(msgspec.Struct):
    items: list[InboxItem]
    next_cursor: str | None
    unread_count: int
    unseen_count: int


class MarkIn(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """Which inbox items to mark: ``{"ids": [...]}`` or ``{"all": true}``."""

    ids: Annotated[list[DbId], msgspec.Meta(max_length=1000)] | None = None
    all: bool = False


class MarkOut(msgspec.Struct):
    updated: int
    unread_count: int
    unseen_count: int
