"""SQL calls for /metrics (named queries in sql/queries/metrics.sql)."""

from __future__ import annotations

from psycopg.rows import DictRow

from postbell.app.core import db


async def rollup(conn: db.Conn) -> list[DictRow]:
    return await db.fetch_all(conn, "metrics_rollup")


async def send_buckets(conn: db.Conn) -> list[float]:
    row = await db.fetch_one(conn, "metrics_send_buckets")
    return [float(b) for b in row["buckets"]] if row else []


async def queues(conn: db.Conn) -> list[DictRow]:
    return await db.fetch_all(conn, "metrics_queues")


async def workers(conn: db.Conn) -> DictRow | None:
    return await db.fetch_one(conn, "metrics_workers")


async def workflow_runs(conn: db.Conn) -> list[DictRow]:
    return await db.fetch_all(conn, "metrics_workflow_runs")
