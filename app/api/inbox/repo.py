"""SQL calls for the inbox (sql/queries/inbox.sql)."""

from __future__ import annotations

from typing import Any

from psycopg.rows import DictRow

from postbell.app.core import db


async def recipient_id(conn: db.Conn, external_id: str) -> int | None:
    row = await db.fetch_one(conn, "inbox_recipient_id", {"external_id": external_id})
    return int(row["id"]) if row else None


async def view(conn: db.Conn, **params: Any) -> list[DictRow]:
    """The recipient's counts and a page, one row per item (``inbox_view``)."""
    return await db.fetch_all(conn, "inbox_view", params)


async def counts(conn: db.Conn, recipient: int) -> tuple[int, int]:
    row = await db.fetch_one(conn, "inbox_counts", {"recipient_id": recipient})
    assert row is not None
    return int(row["unread_count"]), int(row["unseen_count"])


async def mark(conn: db.Conn, recipient: int, action: str, ids: list[int], everything: bool) -> int:
    row = await db.fetch_one(
        conn,
        "inbox_mark",
        {"recipient_id": recipient, "action": action, "ids": ids, "all": everything},
    )
    return int(row["updated"]) if row else 0
