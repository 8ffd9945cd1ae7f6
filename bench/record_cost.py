"""The cost of recording W2-shaped outcomes, alone: 10,000 WEBHOOK deliveries recorded
``sent`` in batches of 500 with ``deliveries_record`` (this tree's query and Plan), on a
fresh database migrated by this tree. Prints the seconds the recording took.

Run it from two checkouts, alternately, to compare what recording costs (the delivery
timeline's events and the metric rollup's triggers are written in that statement)::

    .venv/bin/python -m bench.record_cost
"""

from __future__ import annotations

import asyncio
import datetime as dt
import time
import uuid

import psycopg

from postbell.app.core import db, migrations
from postbell.app.core.settings import Settings
from postbell.workers.channels.base import Outcome
from postbell.workers.delivery import plan_outcomes

ADMIN = "postgresql://root@127.0.0.1:5432/postgres"
DELIVERIES, BATCH = 10_000, 500


async def measure(url: str) -> float:
    await migrations.migrate(url)
    settings = Settings.from_env({"DATABASE_URL": url})
    pool = db.create_pool(url, max_size=2, name="record-cost")
    await pool.open(wait=True)
    try:
        async with pool.connection() as conn:
            await conn.execute(
                "INSERT INTO recipients (external_id, webhook_url)"
                " SELECT 'r' || i, 'http://127.0.0.1/x' FROM generate_series(1, %(n)s) AS i",
                {"n": DELIVERIES},
            )
            await conn.execute(
                "WITH n AS (INSERT INTO notifications (status, body, recipients)"
                " VALUES ('routed', 'x', '{a}') RETURNING id)"
                " INSERT INTO deliveries (notification_id, recipient_id, channel, status,"
                " next_attempt_at) SELECT n.id, r.id, 'WEBHOOK', 'pending', now() FROM n, recipients r"
            )
            cursor = await conn.execute(
                "SELECT id, attempts, 10 AS job_priority FROM deliveries ORDER BY id"
            )
            rows = await cursor.fetchall()
        now = dt.datetime.now(dt.UTC)
        started = time.perf_counter()
        for i in range(0, DELIVERIES, BATCH):
            chunk = rows[i : i + BATCH]
            outcomes = [Outcome.sent(f"m{r['id']}") for r in chunk]
            plan = plan_outcomes(settings, "WEBHOOK", chunk, outcomes, now)
            if hasattr(plan, "started_at"):  # a tree with the delivery timeline
                plan.started_at, plan.duration_ms = now, 12.5
            async with pool.connection() as conn, conn.transaction():
                await db.execute(conn, "deliveries_record", plan.record_params())
        return time.perf_counter() - started
    finally:
        await pool.close()


def main() -> None:
    name = "recordcost_" + uuid.uuid4().hex[:8]
    with psycopg.connect(ADMIN, autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {name}")
    try:
        print(f"{asyncio.run(measure(f'postgresql://root@127.0.0.1:5432/{name}')):.4f}")
    finally:
        with psycopg.connect(ADMIN, autocommit=True) as conn:
            conn.execute(f"DROP DATABASE {name} WITH (FORCE)")


if __name__ == "__main__":
    main()
