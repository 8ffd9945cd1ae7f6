"""SQL calls for workflows (named queries in sql/queries/workflows.sql)."""

from __future__ import annotations

from typing import Any

from psycopg.rows import DictRow
from psycopg.types.json import Jsonb

from postbell.app.core import db


async def lock(conn: db.Conn, key: str) -> DictRow:
    await db.execute(conn, "workflows_ensure", {"key": key})
    row = await db.fetch_one(conn, "workflows_lock", {"key": key})
    assert row is not None
    return row


async def add_version(
    conn: db.Conn, key: str, version: int, category: str | None, steps: list[Any]
) -> None:
    await db.execute(
        conn,
        "workflow_versions_add",
        {"key": key, "version": version, "category": category, "steps": Jsonb(steps)},
    )


async def get(conn: db.Conn, key: str) -> DictRow | None:
    return await db.fetch_one(conn, "workflows_get", {"key": key})


async def list_all(conn: db.Conn) -> list[DictRow]:
    return await db.fetch_all(conn, "workflows_list", {})


async def category_exists(conn: db.Conn, category: str) -> bool:
    row = await db.fetch_one(conn, "workflows_category_exists", {"category": category})
    return bool(row and row["found"])


async def templates_active(conn: db.Conn, keys: list[str]) -> dict[str, DictRow]:
    rows = await db.fetch_all(conn, "workflow_templates_active", {"keys": keys})
    return {r["key"]: r for r in rows}


async def topic_exists(conn: db.Conn, topic: str) -> bool:
    row = await db.fetch_one(conn, "workflows_topic_exists", {"topic": topic})
    return bool(row and row["found"])


async def start(conn: db.Conn, **params: Any) -> DictRow:
    params["data"] = Jsonb(params["data"] or {})
    row = await db.fetch_one(conn, "workflows_start", params)
    assert row is not None
    return row


async def insert_topic_chunk(conn: db.Conn, **params: Any) -> DictRow:
    row = await db.fetch_one(conn, "workflow_runs_insert_topic_chunk", params)
    assert row is not None
    return row


async def count_trigger_runs(conn: db.Conn, trigger_id: Any) -> int:
    row = await db.fetch_one(conn, "workflow_runs_count_trigger", {"trigger_id": trigger_id})
    return int(row["runs"]) if row else 0


async def cancel(conn: db.Conn, cancel_key: str) -> int:
    row = await db.fetch_one(conn, "workflow_runs_cancel", {"cancel_key": cancel_key})
    return int(row["cancelled"]) if row else 0


async def get_run(conn: db.Conn, run_id: int) -> DictRow | None:
    return await db.fetch_one(conn, "workflow_runs_get", {"id": run_id})


async def list_runs(conn: db.Conn, **params: Any) -> list[DictRow]:
    return await db.fetch_all(conn, "workflow_runs_list", params)


async def digest_events(conn: db.Conn, digest_id: int) -> list[Any]:
    rows = await db.fetch_all(conn, "workflow_digests_events", {"digest_id": digest_id})
    return [r["data"] for r in rows]
