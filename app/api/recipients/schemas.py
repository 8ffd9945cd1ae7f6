"""Payloads of /api/recipients."""

from __future__ import annotations

import datetime as dt
from typing import Annotated, Any

import msgspec
from msgspec import UNSET, UnsetType

from postbell.app.api.types import LINE_PATTERN, ExternalId, Short, Url

Locale = Annotated[str, msgspec.Meta(max_length=35, pattern=LINE_PATTERN)]
Zone = Annotated[str, msgspec.Meta(max_length=64, pattern=LINE_PATTERN)]


class RecipientIn(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """Fields to set on a recipient. A field left out keeps its value; null clears it."""

    email: Short | UnsetType | None = UNSET
    phone: Short | UnsetType | None = UNSET
    name: Short | UnsetType | None = UNSET
    locale: Locale | UnsetType | None = UNSET
    timezone: Zone | UnsetType | None = UNSET
    webhook_url: Url | UnsetType | None = UNSET
    webhook_secret: Short | UnsetType | None = UNSET
    slack_webhook_url: Url | UnsetType | None = UNSET
    discord_webhook_url: Url | UnsetType | None = UNSET
    #: WhatsApp number, E.164 (like +14155550123)
    whatsapp: Short | UnsetType | None = UNSET
    #: Telegram chat: the numeric id the bot saw (groups are negative), or @channelname
    telegram_chat_id: Short | UnsetType | None = UNSET
    #: Microsoft Teams incoming-webhook or Workflows URL
    teams_webhook_url: Url | UnsetType | None = UNSET
    metadata: dict[str, Any] | UnsetType | None = UNSET


class RecipientOut(msgspec.Struct):
    external_id: str
    email: str | None
    phone: str | None
    name: str | None
    locale: str | None
    timezone: str | None
    webhook_url: str | None
    slack_webhook_url: str | None
    discord_webhook_url: str | None
    whatsapp: str | None
    telegram_chat_id: str | None
    teams_webhook_url: str | None
    metadata: dict[str, Any]
    email_inactive_at: dt.datetime | None
    phone_inactive_at: dt.datetime | None
    whatsapp_inactive_at: dt.datetime | None
    telegram_inactive_at: dt.datetime | None
    created_at: dt.datetime
    updated_at: dt.datetime


class BulkRecipient(RecipientIn, forbid_unknown_fields=True, kw_only=True):
    external_id: ExternalId


class BulkIn(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    recipients: Annotated[list[BulkRecipient], msgspec.Meta(min_length=1, max_length=10_000)]


class BulkOut(msgspec.Struct):
    created: int
    updated: int
