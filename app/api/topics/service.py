"""Topics: named groups of recipients (one per community), the target of a fan-out."""

from __future__ import annotations

import datetime as dt
from typing import Annotated

import msgspec

from postbell.app.api.pagination import decode_cursor, encode_cursor
from postbell.app.api.types import ExternalId, Key
from postbell.app.core import db
from postbell.app.core.errors import Invalid, NotFound

MAX_PER_CALL = 10_000


class SubscribersIn(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    recipients: Annotated[list[ExternalId], msgspec.Meta(min_length=1, max_length=MAX_PER_CALL)]


class Changed(msgspec.Struct):
    topic: str
    changed: int
    subscribers: int


class Subscriber(msgspec.Struct):
    recipient: str
    subscribed_at: dt.datetime


class SubscriberPage(msgspec.Struct):
    items: list[Subscriber]
    next_cursor: str | None
    total: int


def _key(value: str) -> str:
    try:
        return msgspec.convert(value, Key)
    except msgspec.ValidationError:
        raise Invalid(
            "a topic key is letters, digits and . _ : - (at most 100)", field="key"
        ) from None


async def _count(conn: db.Conn, topic: str) -> tuple[int, bool]:
    row = await db.fetch_one(conn, "topics_count", {"topic": topic})
    assert row is not None
    return int(row["subscribers"]), bool(row["exists"])


async def subscribe(pool: db.Pool, topic: str, data: SubscribersIn) -> Changed:
    """Subscribe recipients (unknown ones are created) in one statement."""
    key = _key(topic)
    async with pool.connection() as conn, conn.transaction():
        row = await db.fetch_one(
            conn, "topics_subscribe", {"topic": key, "external_ids": data.recipients}
        )
        total, _ = await _count(conn, key)
    return Changed(topic=key, changed=int(row["added"]) if row else 0, subscribers=total)


async def unsubscribe(pool: db.Pool, topic: str, data: SubscribersIn) -> Changed:
    key = _key(topic)
    async with pool.connection() as conn:
        removed = await db.execute(
            conn, "topics_unsubscribe", {"topic": key, "external_ids": data.recipients}
        )
        total, exists = await _count(conn, key)
    if not exists:
        raise NotFound(f"no topic {key!r}")
    return Changed(topic=key, changed=removed, subscribers=total)


async def page(pool: db.Pool, topic: str, *, cursor: str | None, limit: int) -> SubscriberPage:
    key = _key(topic)
    after = decode_cursor("s", cursor) or 0
    async with pool.connection() as conn:
        total, exists = await _count(conn, key)
        if not exists:
            raise NotFound(f"no topic {key!r}")
        rows = await db.fetch_all(
            conn, "topics_subscribers_page", {"topic": key, "after": after, "limit": limit + 1}
        )
    more = len(rows) > limit
    rows = rows[:limit]
    return SubscriberPage(
        items=[Subscriber(recipient=r["external_id"], subscribed_at=r["created_at"]) for r in rows],
        next_cursor=encode_cursor("s", rows[-1]["id"]) if more and rows else None,
        total=total,
    )
