"""A recipient's in-app inbox: pages newest first, unread and unseen counts, read marks."""

from __future__ import annotations

import msgspec

from postbell.app.api.inbox import repo
from postbell.app.api.inbox.schemas import InboxItem, InboxPage, MarkIn, MarkOut
from postbell.app.api.pagination import decode_cursor, encode_cursor
from postbell.app.core import db
from postbell.app.core.errors import Invalid

_NO_CURSOR = 2**63 - 1


async def list_items(
    pool: db.Pool,
    external_id: str,
    *,
    cursor: str | None,
    limit: int,
    unread: bool,
    archived: bool | None,
    category: str | None,
) -> InboxPage:
    before = decode_cursor("i", cursor) or _NO_CURSOR
    async with pool.connection() as conn:
        rows = await repo.view(
            conn,
            external_id=external_id,
            before=before,
            limit=limit + 1,
            unread_only=unread,
            archived=archived,
            category=category,
        )
    if not rows:  # never notified yet: an empty inbox, not an error
        return InboxPage(items=[], next_cursor=None, unread_count=0, unseen_count=0)
    unread_count, unseen_count = int(rows[0]["unread_count"]), int(rows[0]["unseen_count"])
    if rows[0]["id"] is None:  # the page is empty
        rows = []
    items = [msgspec.convert(r, InboxItem) for r in rows[:limit]]
    more = len(rows) > limit
    return InboxPage(
        items=items,
        next_cursor=encode_cursor("i", items[-1].id) if more and items else None,
        unread_count=unread_count,
        unseen_count=unseen_count,
    )


ACTIONS = ("read", "unread", "seen", "archive", "unarchive")


async def mark(pool: db.Pool, external_id: str, action: str, data: MarkIn) -> MarkOut:
    """Apply ``action`` to the items named (or all); answer how many changed and the counts."""
    if not data.all and not data.ids:
        raise Invalid("give 'ids' (a list of inbox item ids) or 'all': true", field="ids")
    async with pool.connection() as conn:
        recipient = await repo.recipient_id(conn, external_id)
        if recipient is None:
            return MarkOut(updated=0, unread_count=0, unseen_count=0)
        updated = await repo.mark(conn, recipient, action, data.ids or [], data.all)
        unread_count, unseen_count = await repo.counts(conn, recipient)
    return MarkOut(updated=updated, unread_count=unread_count, unseen_count=unseen_count)


async def ensure_recipient(pool: db.Pool, external_id: str) -> int:
    """The recipient's id, creating the recipient bare if it is new (a stream may open
    before the first notification)."""
    async with pool.connection() as conn:
        found = await repo.recipient_id(conn, external_id)
        if found is not None:
            return found
        await db.execute(conn, "devices_ensure_recipient", {"external_id": external_id})
        created = await repo.recipient_id(conn, external_id)
    assert created is not None
    return created
