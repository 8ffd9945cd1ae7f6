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
from postbell.app.api.types import DbId
from postbell.app.core import db
from postbell.app.core.channels import CHANNELS, ChannelName, parse_channel, unknown_channel
from postbell.app.core.errors import Invalid, InvalidParameter, NotFound, PostbellError
from postbell.app.core.settings import Settings
from postbell.app.core.validation import MAX_ID

MAX_BULK = 10_000
#: The furthest back ``older_than`` reaches (as an age): a century.
MAX_AGE_DAYS = 36_500
_AGE_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(s|m|h|d)?\s*$")
_AGE_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, None: 1}
_REASON_RE = re.compile(r"^[a-z][a-z0-9_]{0,63}$")


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
    reason: Annotated[str, msgspec.Meta(max_length=64)] | None = None
    older_than: Annotated[str, msgspec.Meta(max_length=40)] | None = None
    all: bool = False


class Retried(msgspec.Struct):
    retried: int


def parse_older_than(
    value: str | None, *, error: type[PostbellError] = Invalid
) -> dt.datetime | None:
    """``older_than`` as an age (``90``, ``30m``, ``2h``, ``7d``; at most a century) or an
    RFC 3339 time within a century of now. ``error`` is what a bad value raises,
    naming the field (a query parameter's is ``InvalidParameter``: 400)."""
    if value is None or value == "":
        return None
    now = dt.datetime.now(dt.UTC)
    match = _AGE_RE.match(value)
    if match:
        seconds = float(match.group(1)) * _AGE_UNITS[match.group(2)]
        if not seconds <= MAX_AGE_DAYS * 86400:  # also inf, from a very long number
            raise error(
                f"older_than reaches back at most {MAX_AGE_DAYS}d, got {value.strip()[:40]!r}",
                field="older_than",
            )
        return now - dt.timedelta(seconds=seconds)
    try:
        moment = dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise error(
            "older_than must be an age like 30m, 2h, 7d or an RFC 3339 time", field="older_than"
        ) from None
    if moment.tzinfo is None:
        raise error("older_than needs a time zone offset", field="older_than")
    reach = dt.timedelta(days=MAX_AGE_DAYS)
    try:
        within = now - reach <= moment <= now + reach
    except OverflowError:
        within = False
    if not within:
        raise error(f"older_than must be within {MAX_AGE_DAYS}d of now", field="older_than")
    return moment


def _channel(value: str | None, *, error: type[PostbellError] = Invalid) -> str | None:
    if value is None or value == "":
        return None
    channel = parse_channel(value)
    if channel is None:
        raise error(unknown_channel(value), field="channel")
    return channel


def _reason(value: str | None, *, error: type[PostbellError] = Invalid) -> str | None:
    if value is None or value == "":
        return None
    if not _REASON_RE.match(value):
        raise error(
            "reason must be a reason code like retries_exhausted or permanent_error",
            field="reason",
        )
    return value


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
        "reason": _reason(reason, error=InvalidParameter),
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
    async with pool.connection() as conn, conn.transaction():
        requeued = await _requeue(
            conn, settings, ids=ids, channel=channel, reason=reason, older_than=older_than
        )
    return len(requeued)


async def _requeue(
    conn: db.Conn,
    settings: Settings,
    *,
    ids: list[int] | None,
    channel: str | None = None,
    reason: str | None = None,
    older_than: str | None = None,
) -> list[int]:
    """The ids requeued, in the caller's transaction."""
    params = {
        "ids": [i for i in ids if 1 <= i <= MAX_ID] if ids is not None else None,
        "channel": _channel(channel),
        "reason": _reason(reason),
        "older_than": parse_older_than(older_than),
        "limit": MAX_BULK,
        "batch_sizes": batch_sizes(settings),
    }
    row = await db.fetch_one(conn, "deliveries_requeue_dead", params)
    return list(row["ids"] or []) if row else []


async def retry_exactly(pool: db.Pool, settings: Settings, ids: list[int]) -> Retried:
    """Requeue exactly these dead deliveries, all or none: when one of them is not dead
    (or does not exist), ``NotFound`` names every such id and nothing is requeued."""
    wanted = list(dict.fromkeys(ids))
    if len(wanted) > MAX_BULK:
        raise Invalid(f"at most {MAX_BULK} ids at once, got {len(wanted)}", field="ids")
    async with pool.connection() as conn, conn.transaction():
        requeued = set(await _requeue(conn, settings, ids=wanted))
        missing = [i for i in wanted if i not in requeued]
        if missing:  # raising rolls back the requeue of the others
            listed = ", ".join(str(i) for i in missing)
            rest = "; nothing was requeued" if len(wanted) > 1 else ""
            raise NotFound(f"no dead delivery {listed}{rest}")
    return Retried(retried=len(requeued))


async def retry_one(pool: db.Pool, settings: Settings, delivery_id: int) -> Retried:
    return await retry_exactly(pool, settings, [delivery_id])


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
