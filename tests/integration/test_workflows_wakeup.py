"""Triggers wake the workflow engine: with the poll interval at its maximum (60 s),
an immediate send step still runs as soon as the trigger commits, through the HTTP
trigger (the API's coalesced Waker) and through postbell.trigger in SQL (its own
NOTIFY); the engine LISTENs on a connection of its own."""

from __future__ import annotations

from collections.abc import AsyncIterator

import psycopg
import pytest

from postbell.app.api.main import create_app
from postbell.app.core import db
from tests.conftest import api_client, make_settings, query, running_worker, unique, wait_until
from tests.integration.test_workflows_engine import Env

#: Far longer than any wait below: a run finished within it was woken, not polled.
POLL = "60"


@pytest.fixture
async def env(fresh_database_url: str) -> AsyncIterator[Env]:
    settings = make_settings(fresh_database_url, POSTBELL_POLL_INTERVAL=POLL)
    pool = db.create_pool(fresh_database_url, max_size=12, name="postbell-test-wf-wakeup")
    await pool.open(wait=True)
    try:
        async with api_client(create_app(settings, pool=pool)) as api:
            yield Env(settings, pool, api)
    finally:
        await pool.close()


async def listening(env: Env) -> bool:
    """The engine's LISTEN connection is up (its last statement was the LISTEN)."""
    rows = await query(
        env.pool,
        "SELECT count(*) AS n FROM pg_stat_activity"
        " WHERE datname = current_database() AND application_name = 'postbell-workflows-listen'"
        " AND query ILIKE 'LISTEN%%'",
    )
    return bool(rows[0]["n"])


async def test_http_and_sql_triggers_wake_the_engine(env: Env, fresh_database_url: str) -> None:
    """The engine ran its start-up round and waits for a 60 s poll; a trigger by HTTP,
    then one by postbell.trigger, each has its run done (its send step made the
    notification) well within that, because each woke the engine."""
    key = unique("wf")
    await env.put(key, [{"type": "send", "channels": ["IN_APP"], "message": "hello"}])
    async with running_worker(env.settings, env.pool):
        await wait_until(lambda: listening(env))
        http = await env.trigger(key, to=[unique("h")])

        async def done(trigger_id: str) -> bool:
            runs = await env.runs(trigger_id)
            return bool(runs) and all(r["state"] == "done" for r in runs)

        await wait_until(lambda: done(http), timeout=20)
        async with await psycopg.AsyncConnection.connect(fresh_database_url) as conn:
            cur = await conn.execute(
                "SELECT postbell.trigger(%s, ARRAY[%s])::text AS id", (key, unique("s"))
            )
            row = await cur.fetchone()
        assert row is not None
        await wait_until(lambda: done(row[0]), timeout=20)
    made = await query(env.pool, "SELECT count(*) AS n FROM notifications")
    assert made[0]["n"] == 2
