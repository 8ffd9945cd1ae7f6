"""SQL calls for templates (named queries in sql/queries/templates.sql)."""

from __future__ import annotations

from typing import Any

from psycopg.rows import DictRow
from psycopg.types.json import Jsonb

from postbell.app.core import db


async def put(conn: db.Conn, key: str, **fields: Any) -> DictRow:
    params = dict(fields, key=key)
    for name in ("example_data", "example_recipient", "locales"):
        params[name] = Jsonb(params[name]) if params[name] is not None else None
    row = await db.fetch_one(conn, "templates_put", params)
    assert row is not None
    return row


async def get(conn: db.Conn, key: str, version: int | None = None) -> DictRow | None:
    return await db.fetch_one(conn, "templates_get", {"key": key, "version": version})


async def list_page(conn: db.Conn, after: str, limit: int) -> list[DictRow]:
    return await db.fetch_all(conn, "templates_list", {"after": after, "limit": limit})


async def versions(conn: db.Conn, key: str, before: int, limit: int) -> list[DictRow]:
    return await db.fetch_all(
        conn, "templates_versions", {"key": key, "before": before, "limit": limit}
    )


async def activate(conn: db.Conn, key: str, version: int) -> bool:
    row = await db.fetch_one(conn, "templates_activate", {"key": key, "version": version})
    return row is not None


async def lock(conn: db.Conn, key: str) -> bool:
    return await db.fetch_one(conn, "templates_lock", {"key": key}) is not None


async def scheduled_use(conn: db.Conn, key: str) -> DictRow | None:
    return await db.fetch_one(conn, "templates_scheduled_use", {"key": key})


async def workflow_use(conn: db.Conn, key: str) -> DictRow | None:
    return await db.fetch_one(conn, "templates_workflow_use", {"key": key})


async def delete(conn: db.Conn, key: str) -> None:
    await db.execute(conn, "templates_delete", {"key": key})


async def category_exists(conn: db.Conn, category: str) -> bool:
    row = await db.fetch_one(conn, "templates_category_exists", {"category": category})
    return bool(row and row["ok"])


async def recipient(conn: db.Conn, external_id: str) -> DictRow | None:
    return await db.fetch_one(conn, "templates_recipient", {"external_id": external_id})
