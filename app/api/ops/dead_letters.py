"""The dead-letter queue: deliveries that ended ``dead``, listed and requeued.

Requeueing sets a delivery back to ``pending`` with fresh attempts and defers its
deliver job in the same transaction; it keeps ``last_error`` until the next outcome.
"""

from __future__ import annotations

import datetime as dt
import re
from typing import Annotated, Any

import msgspec
from psycopg.types.json import Jsonb

from postbell.app.api.pagination import decode_cursor, encode_cursor
from postbell.app.api.types import LINE_PATTERN, DbId
from postbell.app.core import db
from postbell.app.core.channels import CHANNELS, ChannelName, parse_channel
from postbell.app.core.errors import Invalid, InvalidParameter, NotFound, PostbellError
from postbell.app.core.settings import Settings

MAX_BULK = 10_000
_AGE_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(s|m|h|d)?\s*$")
_AGE_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, None: 1}


class DeadLetter(msgspec.Struct):
    id: int
    notification_id: str
    channel: str
    recipient: str
    reason: str | None
    last_error: str | None
    attempts: int
    created_at: dt.datetime
    died_at: dt.datetime


class DeadLetterPage(msgspec.Struct):
    items: list[DeadLetter]
    next_cursor: str | None
    total: int


class RetryIn(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """Which dead letters to requeue: ``ids``, or a filter, or ``all: true``."""

    ids: Annotated[list[DbId], msgspec.Meta(min_length=1, max_length=MAX_BULK)] | None = None
    channel: ChannelName | None = None
    reason: Annotated[str, msgspec.Meta(max_length=100, pattern=LINE_PATTERN)] | None = None
    older_than: Annotated[str, msgspec.Meta(max_length=40, pattern=LINE_PATTERN)] | None = None
    all: bool = False


class Retried(msgspec.Struct):
    retried: int


#: The oldest age a filter may name (a typo like 100000000d is refused, not overflowed).
MAX_AGE = dt.timedelta(days=3650)


def parse_older_than(
    value: str | None, *, error: type[PostbellError] = Invalid
) -> dt.datetime | None:
    """``older_than`` as an age (``90``, ``30m``, ``2h``, ``7d``; at most ten years) or an
    RFC 3339 time. ``error`` is raised naming the field (query parameters: 400)."""
    if value is None or value == "":
        return None
    now = dt.datetime.now(dt.UTC)
    match = _AGE_RE.match(value)
    if match:
        seconds = float(match.group(1)) * _AGE_UNITS[match.group(2)]
        if seconds > MAX_AGE.total_seconds():
            raise error("older_than is more than ten years", field="older_than")
        return now - dt.timedelta(seconds=seconds)
    try:
        moment = dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise error(
            "older_than must be an age like 30m, 2h, 7d or an RFC 3339 time", field="older_than"
        ) from None
    if moment.tzinfo is None:
        raise error("older_than needs a time zone offset", field="older_than")
    if not now - MAX_AGE <= moment <= now + MAX_AGE:
        raise error("older_than is more than ten years away", field="older_than")
    return moment


def _channel(value: str | None, *, error: type[PostbellError] = Invalid) -> str | None:
    if value is None or value == "":
        return None
    found = parse_channel(value)
    if found is None:
        raise error(
            f"unknown channel {value!r}; channels are {', '.join(CHANNELS)}", field="channel"
        )
    return found


def batch_sizes(settings: Settings) -> Jsonb:
    return Jsonb({c: settings.batch_size_for(c) for c in CHANNELS})


async def list_page(
    pool: db.Pool,
    *,
    channel: str | None,
    reason: str | None,
    older_than: str | None,
    cursor: str | None,
    limit: int,
) -> DeadLetterPage:
    filters: dict[str, Any] = {
        "channel": _channel(channel, error=InvalidParameter),
        "reason": reason or None,
        "older_than": parse_older_than(older_than, error=InvalidParameter),
    }
    after = decode_cursor("x", cursor) or 0
    async with pool.connection() as conn:
        rows = await db.fetch_all(
            conn, "deliveries_dead_page", {**filters, "after": after, "limit": limit + 1}
        )
        total = await db.fetch_one(conn, "deliveries_dead_count", filters)
    items = [
        msgspec.convert({**r, "notification_id": str(r["notification_id"])}, DeadLetter)
        for r in rows[:limit]
    ]
    return DeadLetterPage(
        items=items,
        next_cursor=encode_cursor("x", items[-1].id) if len(rows) > limit and items else None,
        total=int(total["total"]) if total else 0,
    )


async def requeue(
    pool: db.Pool,
    settings: Settings,
    *,
    ids: list[int] | None = None,
    channel: str | None = None,
    reason: str | None = None,
    older_than: str | None = None,
) -> int:
    """Requeue dead deliveries (by ids, or every one matching the filters); answer how many."""
    params = {
        "ids": ids,
        "channel": _channel(channel),
        "reason": reason or None,
        "older_than": parse_older_than(older_than),
        "limit": MAX_BULK,
        "batch_sizes": batch_sizes(settings),
    }
    async with pool.connection() as conn, conn.transaction():
        row = await db.fetch_one(conn, "deliveries_requeue_dead", params)
    return int(row["deliveries"]) if row else 0


async def retry_one(pool: db.Pool, settings: Settings, delivery_id: int) -> Retried:
    count = await requeue(pool, settings, ids=[delivery_id])
    if not count:
        raise NotFound(f"no dead delivery {delivery_id}")
    return Retried(retried=count)


async def retry_many(pool: db.Pool, settings: Settings, data: RetryIn) -> Retried:
    has_filter = any(v is not None for v in (data.channel, data.reason, data.older_than))
    if data.ids is None and not has_filter and not data.all:
        raise Invalid(
            "give 'ids', a filter (channel, reason, older_than) or 'all': true", field="ids"
        )
    count = await requeue(
        pool,
        settings,
        ids=data.ids,
        channel=data.channel,
        reason=data.reason,
        older_than=data.older_than,
    )
    return Retried(retried=count)
