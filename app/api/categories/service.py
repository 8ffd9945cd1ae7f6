"""Categories: operator defaults for a kind of notification ("events", "security").

A category names the channels used when a notification names none, whether
recipients may opt out (``required: true`` for security notices), a fallback map,
per-recipient rate limits per channel, and what some channels need of it: the Teams
channel its notifications go to (``teams_webhook_url``), the Apprise destinations
of an ops alert (``apprise_urls``: write-only, shown masked), the SMS type
(``sms_type``) and the WhatsApp template (``whatsapp_content_sid``).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import re
from typing import Annotated, Any, Literal

import msgspec
from msgspec import UNSET, UnsetType
from psycopg.types.json import Jsonb

from postbell.app.api.types import Description, Key, Short, Url
from postbell.app.core import apprise_urls, db, validation
from postbell.app.core.channels import ChannelName
from postbell.app.core.errors import Invalid, NotFound
from postbell.app.core.settings import Settings

ContentSid = Annotated[str, msgspec.Meta(pattern=r"^HX[0-9a-fA-F]{32}$")]
_PER_RE = re.compile(r"(\d{1,9}) ?(s|m|h|d)")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


class RateLimit(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """At most ``limit`` deliveries per recipient per ``per`` (``30m``, ``1h``, ``1d``).

    Over the limit, ``defer`` holds the delivery until a slot frees; ``skip`` records
    it skipped (``rate_limited``)."""

    limit: int
    per: Annotated[str, msgspec.Meta(max_length=16)]
    policy: Literal["defer", "skip"] = "defer"


class CategoryIn(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    name: Short | None = None
    description: Description | None = None
    default_channels: Annotated[list[ChannelName], msgspec.Meta(min_length=1)] | None = None
    required: bool = False
    fallback: dict[ChannelName, ChannelName] | None = None
    rate_limits: dict[ChannelName, RateLimit] | None = None
    #: TEAMS: where the category's notifications go for recipients without their own
    teams_webhook_url: Url | None = None
    #: APPRISE: the destinations (they hold credentials: write-only, answers mask
    #: them). Left out: the stored ones stay; null or [] clears them.
    apprise_urls: (
        Annotated[list[Url], msgspec.Meta(max_length=apprise_urls.MAX_URLS)] | UnsetType | None
    ) = UNSET
    #: SMS through SNS: the SMS type instead of the one the priority gives
    sms_type: Literal["transactional", "promotional"] | None = None
    #: WHATSAPP: the approved template (Twilio content SID, HX + 32 hex digits)
    whatsapp_content_sid: ContentSid | None = None


class CategoryOut(msgspec.Struct):
    key: str
    name: str | None
    description: str | None
    default_channels: list[str] | None
    required: bool
    fallback: dict[str, str] | None
    rate_limits: dict[str, Any]
    teams_webhook_url: str | None
    #: each URL's scheme only ("ntfy://***"): the rest holds credentials
    apprise_urls: list[str]
    sms_type: str | None
    whatsapp_content_sid: str | None
    created_at: dt.datetime
    updated_at: dt.datetime


class CategoryList(msgspec.Struct):
    items: list[CategoryOut]


#: The most deliveries a rate limit may allow per window.
MAX_LIMIT = 1_000_000
#: The longest rate-limit window: a longer one would hold deliveries for years.
MAX_WINDOW_SECONDS = 366 * 86400


def per_seconds(value: str, field: str) -> int:
    match = _PER_RE.fullmatch(value)
    if not match or int(match.group(1)) == 0:
        raise Invalid(f"{field}: give a duration like 30m, 1h or 1d", field=field)
    seconds = int(match.group(1)) * _UNITS[match.group(2)]
    if seconds > MAX_WINDOW_SECONDS:
        raise Invalid(f"{field}: at most 366 days", field=field)
    return seconds


def _key(value: str) -> str:
    try:
        return msgspec.convert(value, Key)
    except msgspec.ValidationError:
        raise Invalid(
            "a category key is letters, digits and . _ : - (at most 100)", field="key"
        ) from None


def _out(row: Any) -> CategoryOut:
    shown = dict(row)
    shown["apprise_urls"] = [apprise_urls.mask(u) for u in row["apprise_urls"] or ()]
    return msgspec.convert(shown, CategoryOut)


async def _apprise(urls: list[str]) -> list[str]:
    cleaned = [u.strip() for u in urls]
    for index, url in enumerate(cleaned):
        # Loading Apprise's plugins the first time blocks for a moment: off the loop.
        why = await asyncio.to_thread(apprise_urls.check, url)
        if why:
            field = f"apprise_urls[{index}]"
            raise Invalid(f"{field}: {why}", field=field)
    return list(dict.fromkeys(cleaned))


async def put(pool: db.Pool, settings: Settings, key: str, data: CategoryIn) -> CategoryOut:
    for first, second in (data.fallback or {}).items():
        if first == second:
            raise Invalid(
                f"fallback.{first}: a channel cannot fall back to itself", field=f"fallback.{first}"
            )
    for channel, rule in (data.rate_limits or {}).items():
        if not 1 <= rule.limit <= MAX_LIMIT:
            field = f"rate_limits.{channel}.limit"
            raise Invalid(f"{field}: from 1 to {MAX_LIMIT:,}", field=field)
    limits = {
        channel: {
            "limit": rule.limit,
            "per": rule.per,
            "per_seconds": per_seconds(rule.per, f"rate_limits.{channel}.per"),
            "policy": rule.policy,
        }
        for channel, rule in (data.rate_limits or {}).items()
    }
    teams = data.teams_webhook_url.strip() if data.teams_webhook_url else None
    if teams:
        teams = validation.webhook_url(teams, "teams_webhook_url", guard=settings.address_guard)
    urls = None
    if data.apprise_urls is not UNSET:
        urls = await _apprise(data.apprise_urls or [])
    params = {
        "key": _key(key),
        "name": data.name,
        "description": data.description,
        "default_channels": list(dict.fromkeys(data.default_channels))
        if data.default_channels
        else None,
        "required": data.required,
        "fallback": Jsonb(data.fallback) if data.fallback else None,
        "rate_limits": Jsonb(limits),
        "teams_webhook_url": teams or None,
        "apprise_urls": urls,
        "apprise_urls_set": data.apprise_urls is not UNSET,
        "sms_type": data.sms_type,
        "whatsapp_content_sid": data.whatsapp_content_sid,
    }
    async with pool.connection() as conn:
        row = await db.fetch_one(conn, "categories_put", params)
    return _out(row)


async def get(pool: db.Pool, key: str) -> CategoryOut:
    async with pool.connection() as conn:
        row = await db.fetch_one(conn, "categories_get", {"key": key})
    if row is None:
        raise NotFound(f"no category {key!r}")
    return _out(row)


async def list_all(pool: db.Pool) -> CategoryList:
    async with pool.connection() as conn:
        rows = await db.fetch_all(conn, "categories_list")
    return CategoryList(items=[_out(r) for r in rows])
