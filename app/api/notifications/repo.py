"""SQL calls for notifications (named queries in sql/queries/notifications.sql)."""

from __future__ import annotations

import uuid
from typing import Any

import msgspec
from psycopg.rows import DictRow
from psycopg.types.json import Jsonb

from postbell.app.core import db


async def enqueue(conn: db.Conn, **fields: Any) -> DictRow:
    params = dict(fields)
    for key in ("metadata", "fallback", "template_data"):
        params[key] = Jsonb(params[key]) if params.get(key) is not None else None
    row = await db.fetch_one(conn, "notifications_enqueue", params)
    assert row is not None
    return row


async def get(conn: db.Conn, notification_id: uuid.UUID) -> DictRow | None:
    return await db.fetch_one(conn, "notifications_get", {"id": notification_id})


async def delivery_counts(conn: db.Conn, notification_id: uuid.UUID) -> dict[str, int]:
    rows = await db.fetch_all(conn, "notifications_delivery_counts", {"id": notification_id})
    return {r["status"]: int(r["n"]) for r in rows}


async def deliveries_page(
    conn: db.Conn, notification_id: uuid.UUID, after: tuple[int, str], limit: int
) -> list[DictRow]:
    return await db.fetch_all(
        conn,
        "notifications_deliveries_page",
        {
            "id": notification_id,
            "after_recipient": after[0],
            "after_channel": after[1],
            "limit": limit,
        },
    )


async def delivery_position(
    conn: db.Conn, notification_id: uuid.UUID, delivery_id: int
) -> tuple[int, str] | None:
    row = await db.fetch_one(
        conn,
        "notifications_delivery_position",
        {"id": delivery_id, "notification": notification_id},
    )
    return (int(row["recipient_id"]), str(row["channel"])) if row else None


async def target_check(conn: db.Conn, *, category: str | None, topic: str | None) -> DictRow:
    row = await db.fetch_one(
        conn, "notifications_target_check", {"category": category, "topic": topic}
    )
    assert row is not None
    return row


async def lock(conn: db.Conn, notification_id: uuid.UUID) -> DictRow | None:
    return await db.fetch_one(conn, "notifications_lock", {"id": notification_id})


async def cancel_unrouted(conn: db.Conn, notification_id: uuid.UUID) -> int:
    row = await db.fetch_one(conn, "notifications_cancel_unrouted", {"id": notification_id})
    return int(row["deliveries"] or 0) if row else 0


async def cancel_routed(conn: db.Conn, notification_id: uuid.UUID) -> int:
    row = await db.fetch_one(conn, "notifications_cancel_routed", {"id": notification_id})
    return int(row["deliveries"]) if row else 0


async def list_page(conn: db.Conn, params: dict[str, Any]) -> list[DictRow]:
    name = "notifications_list_for_recipient" if params["recipient"] else "notifications_list"
    return await db.fetch_all(conn, name, params, prepare=False)


async def list_counts(
    conn: db.Conn, notification_ids: list[uuid.UUID]
) -> dict[uuid.UUID, dict[str, int]]:
    counts: dict[uuid.UUID, dict[str, int]] = {}
    if not notification_ids:
        return counts
    rows = await db.fetch_all(conn, "notifications_list_counts", {"ids": notification_ids})
    for r in rows:
        counts.setdefault(r["notification_id"], {})[r["status"]] = int(r["n"])
    return counts


async def template(conn: db.Conn, key: str) -> DictRow | None:
    return await db.fetch_one(conn, "notifications_template", {"key": key})


async def set_experiment(
    conn: db.Conn, notification_id: Any, experiment: str, variants: Any, *, data: Any = None
) -> None:
    """Attach an experiment to a notification just enqueued (the same transaction);
    ``data``: the template variants' data, kept unless the notification has its own."""
    await db.execute(
        conn,
        "notifications_set_experiment",
        {
            "id": notification_id,
            "experiment": experiment,
            "variants": Jsonb(msgspec.to_builtins(variants)),
            "data": Jsonb(data) if data is not None else None,
        },
    )
