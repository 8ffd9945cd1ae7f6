"""Categories: operator defaults for a kind of notification ("events", "security").

A category names the channels used when a notification names none, whether
recipients may opt out (``required: true`` for security notices), a fallback map,
and per-recipient rate limits per channel.
"""

from __future__ import annotations

import datetime as dt
import re
from typing import Annotated, Any, Literal

import msgspec
from psycopg.types.json import Jsonb

from postbell.app.api.types import Description, Key, Short
from postbell.app.core import db
from postbell.app.core.channels import ChannelName
from postbell.app.core.errors import Invalid, NotFound

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


class CategoryOut(msgspec.Struct):
    key: str
    name: str | None
    description: str | None
    default_channels: list[str] | None
    required: bool
    fallback: dict[str, str] | None
    rate_limits: dict[str, Any]
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


async def put(pool: db.Pool, key: str, data: CategoryIn) -> CategoryOut:
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
    }
    async with pool.connection() as conn:
        row = await db.fetch_one(conn, "categories_put", params)
    return msgspec.convert(row, CategoryOut)


async def get(pool: db.Pool, key: str) -> CategoryOut:
    async with pool.connection() as conn:
        row = await db.fetch_one(conn, "categories_get", {"key": key})
    if row is None:
        raise NotFound(f"no category {key!r}")
    return msgspec.convert(row, CategoryOut)


async def list_all(pool: db.Pool) -> CategoryList:
    async with pool.connection() as conn:
        rows = await db.fetch_all(conn, "categories_list")
    return CategoryList(items=[msgspec.convert(r, CategoryOut) for r in rows])
