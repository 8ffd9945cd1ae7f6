"""The SQL calls of replays (sql/queries/replays.sql)."""

from __future__ import annotations

from typing import Any

from psycopg.rows import DictRow

from postbell.app.core import db


async def run(conn: db.Conn, **params: Any) -> DictRow:
    row = await db.fetch_one(conn, "replays_run", params)
    assert row is not None  # replay() answers one row
    return row


async def notification_channels(conn: db.Conn, notification_id: Any) -> DictRow | None:
    return await db.fetch_one(conn, "replays_notification_channels", {"id": notification_id})
