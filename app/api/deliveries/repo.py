"""SQL calls for deliveries (named queries in sql/queries/delivery_events.sql)."""

from __future__ import annotations

from psycopg.rows import DictRow

from postbell.app.core import db

MAX_EVENTS = 1000


async def get(conn: db.Conn, delivery_id: int) -> DictRow | None:
    return await db.fetch_one(conn, "deliveries_get", {"id": delivery_id})


async def events(conn: db.Conn, delivery_id: int) -> list[DictRow]:
    return await db.fetch_all(
        conn, "delivery_events_list", {"id": delivery_id, "limit": MAX_EVENTS}
    )
