"""SQL calls for recipients (sql/queries/recipients.sql)."""

from __future__ import annotations

from typing import Any

from psycopg.rows import DictRow
from psycopg.types.json import Jsonb

from postbell.app.core import db


async def get(conn: db.Conn, external_id: str) -> DictRow | None:
    return await db.fetch_one(conn, "recipients_get", {"external_id": external_id})


async def upsert(
    conn: db.Conn, external_id: str, fields: dict[str, Any], present: set[str]
) -> DictRow:
    params: dict[str, Any] = {"external_id": external_id}
    for name, value in fields.items():
        params[name] = Jsonb(value) if name == "metadata" and value is not None else value
        params[f"{name}_set"] = name in present
    row = await db.fetch_one(conn, "recipients_upsert", params)
    assert row is not None
    return row


async def delete(conn: db.Conn, external_id: str) -> bool:
    row = await db.fetch_one(conn, "recipients_delete", {"external_id": external_id})
    return bool(row and row["recipients"])
