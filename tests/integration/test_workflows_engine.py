"""The workflow engine: due runs advanced in batches, sends as ordinary notifications,
delays (for, until), conditions, cancels that win, versions kept, and a killed
worker's claim released. Most tests drive ``workflows.run_due`` on a database of
their own (no worker), and move due times instead of waiting for the clock."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import os
import signal
import subprocess
import sys
import textwrap
from collections.abc import AsyncIterator
from typing import Any

import httpx
import psycopg
import pytest

from postbell.app.api.main import create_app
from postbell.app.core import db
from postbell.app.core.settings import Settings
from postbell.workers import workflows
from tests.conftest import (
    ADMIN,
    api_client,
    make_settings,
    query,
    running_worker,
    unique,
    wait_until,
)


class Env:
    def __init__(self, settings: Settings, pool: db.Pool, api: httpx.AsyncClient) -> None:
        self.settings, self.pool, self.api = settings, pool, api

    async def put(self, key: str, steps: list[dict[str, Any]], **extra: Any) -> None:
        response = await self.api.put(
            f"/api/workflows/{key}", json={"steps": steps, **extra}, headers=ADMIN
        )
        assert response.status_code == 200, response.text

    async def trigger(self, key: str, **body: Any) -> str:
        response = await self.api.post(f"/api/workflows/{key}/trigger", json=body, headers=ADMIN)
        assert response.status_code == 202, response.text
        return str(response.json()["id"])

    async def runs(self, trigger_id: str) -> list[dict[str, Any]]:
        return await query(
            self.pool,
            "SELECT id, recipient, step, state, reason, due_at, notification_ids, digest_id"
            " FROM workflow_runs WHERE trigger_id = %s ORDER BY recipient, id",
            (trigger_id,),
        )

    async def due_now(self, trigger_id: str) -> None:
        """The clock moved on: every waiting run of the trigger is due."""
        await query(
            self.pool,
            "UPDATE workflow_runs SET due_at = now() - interval '1 second'"
            " WHERE trigger_id = %s AND state = 'waiting'",
            (trigger_id,),
        )

    async def notification(self, notification_id: Any) -> dict[str, Any]:
        rows = await query(
            self.pool,
            "SELECT title, body, channels, recipients, category, metadata FROM notifications"
            " WHERE id = %s",
            (notification_id,),
        )
        return rows[0]


@contextlib.asynccontextmanager
async def workflow_env(database_url: str) -> AsyncIterator[Env]:
    """The API and a pool of 12 on ``database_url``, no worker."""
    settings = make_settings(database_url)
    pool = db.create_pool(database_url, max_size=12, name="postbell-test-workflows")
    await pool.open(wait=True)
    try:
        async with api_client(create_app(settings, pool=pool)) as api:
            yield Env(settings, pool, api)
    finally:
        await pool.close()


@pytest.fixture
async def env(fresh_database_url: str) -> AsyncIterator[Env]:
    async with workflow_env(fresh_database_url) as e:
        yield e


REMINDER = [
    {"type": "send", "channels": ["IN_APP"], "title": "New reply", "message": "Ada replied"},
    {"type": "delay", "for": "15m"},
    {
        "type": "send",
        "channels": ["EMAIL"],
        "message": "You have an unread reply",
        "if": {"in_app": "unread"},
    },
]


async def test_a_send_step_makes_one_notification_for_the_batch_then_waits(env: Env) -> None:
    """Two runs at the same send step make one notification (both recipients, the
    workflow's category, the step's channels and fields, the workflow in metadata);
    the delay then holds both runs at the next step, due 15 minutes on."""
    await query(env.pool, "INSERT INTO categories (key) VALUES ('replies')")
    key = unique("wf")
    await env.put(key, REMINDER, category="replies")
    a, b = unique("a"), unique("b")
    trigger = await env.trigger(key, to=[a, b])
    await workflows.run_due(env.pool)
    runs = await env.runs(trigger)
    assert [(r["step"], r["state"]) for r in runs] == [(2, "waiting"), (2, "waiting")]
    made = {n for r in runs for n in r["notification_ids"]}
    assert len(made) == 1
    notification = await env.notification(made.pop())
    assert notification == {
        "title": "New reply",
        "body": "Ada replied",
        "channels": ["IN_APP"],
        "recipients": sorted([a, b]),
        "category": "replies",
        "metadata": {"workflow": {"key": key, "version": 1, "step": 0}},
    }
    due = await query(
        env.pool,
        "SELECT bool_and(due_at > now() + interval '14 minutes') AS later FROM workflow_runs"
        " WHERE trigger_id = %s",
        (trigger,),
    )
    assert due[0]["later"] is True


async def test_email_goes_only_to_the_recipient_who_left_the_in_app_item_unread(
    env: Env,
) -> None:
    """End to end with a real worker: both recipients get the IN_APP item; one reads
    it; once the delay is over only the other's run sends the EMAIL step."""
    key = unique("wf")
    await env.put(key, REMINDER)
    reader, ignorer = unique("reader"), unique("ignorer")
    trigger = await env.trigger(key, to=[reader, ignorer])
    async with running_worker(env.settings, env.pool):

        async def delivered() -> bool:
            rows = await query(
                env.pool,
                "SELECT count(DISTINCT d.id) AS n FROM deliveries d JOIN workflow_runs w"
                " ON d.notification_id = ANY(w.notification_ids)"
                " WHERE w.trigger_id = %s AND d.channel = 'IN_APP' AND d.status = 'sent'",
                (trigger,),
            )
            return rows[0]["n"] == 2

        await wait_until(delivered)
        read = await env.api.post(f"/api/inbox/{reader}/read", json={"all": True}, headers=ADMIN)
        assert read.status_code == 200, read.text
        await env.due_now(trigger)

        async def finished() -> list[dict[str, Any]] | None:
            runs = await env.runs(trigger)
            return runs if all(r["state"] == "done" for r in runs) else None

        runs = {r["recipient"]: r for r in await wait_until(finished)}
    assert len(runs[reader]["notification_ids"]) == 1
    assert len(runs[ignorer]["notification_ids"]) == 2
    email = await env.notification(runs[ignorer]["notification_ids"][1])
    assert (email["channels"], email["recipients"], email["body"]) == (
        ["EMAIL"],
        [ignorer],
        "You have an unread reply",
    )


async def test_an_in_app_condition_waits_for_routing(env: Env) -> None:
    """With no worker to route the IN_APP notification, the conditional step does not
    guess: its run stays at that step, looking again shortly."""
    key = unique("wf")
    await env.put(key, [REMINDER[0], REMINDER[2]])
    trigger = await env.trigger(key, to=[unique("r")])
    await workflows.run_due(env.pool)
    await env.due_now(trigger)
    await workflows.run_due(env.pool)
    runs = await env.runs(trigger)
    assert [(r["step"], r["state"], len(r["notification_ids"])) for r in runs] == [
        (1, "waiting", 1)
    ]


async def test_delay_until_a_data_time_with_an_offset(env: Env) -> None:
    """`until` + `offset`: due an hour before data.event.starts_at; a run whose data
    holds no time there ends failed, saying why."""
    key = unique("wf")
    steps = [
        {"type": "delay", "until": "data.event.starts_at", "offset": "-1h"},
        {"type": "send", "channels": ["IN_APP"], "message": "Starts in an hour"},
    ]
    await env.put(key, steps)
    starts = (dt.datetime.now(dt.UTC) + dt.timedelta(days=2)).replace(microsecond=0)
    good = await env.trigger(
        key, to=[unique("r")], data={"event": {"starts_at": starts.isoformat()}}
    )
    bad = await env.trigger(key, to=[unique("r")], data={"event": {}})
    await workflows.run_due(env.pool)
    [run] = await env.runs(good)
    assert (run["step"], run["state"], run["due_at"]) == (
        1,
        "waiting",
        starts - dt.timedelta(hours=1),
    )
    [failed] = await env.runs(bad)
    assert (failed["state"], failed["reason"]) == ("failed", "data.event.starts_at holds no time")
    await env.due_now(good)
    await workflows.run_due(env.pool)
    [run] = await env.runs(good)
    assert (run["state"], len(run["notification_ids"])) == ("done", 1)


async def test_a_data_condition_skips_the_step_when_it_does_not_hold(env: Env) -> None:
    key = unique("wf")
    steps = [
        {
            "type": "send",
            "channels": ["IN_APP"],
            "message": "Pro feature",
            "if": {"path": "data.plan", "equals": "pro"},
        },
        {"type": "send", "channels": ["IN_APP"], "message": "For everyone"},
    ]
    await env.put(key, steps)
    pro = await env.trigger(key, to=[unique("r")], data={"plan": "pro"})
    free = await env.trigger(key, to=[unique("r")], data={"plan": "free"})
    await workflows.run_due(env.pool)
    [p] = await env.runs(pro)
    [f] = await env.runs(free)
    assert [(await env.notification(n))["body"] for n in p["notification_ids"]] == [
        "Pro feature",
        "For everyone",
    ]
    assert [(await env.notification(n))["body"] for n in f["notification_ids"]] == ["For everyone"]


async def test_a_cancel_committed_before_the_due_time_wins(
    env: Env, fresh_database_url: str
) -> None:
    """The reminder is cancelled (postbell.cancel in the host's transaction) while it
    waits; when its time comes, nothing more is sent."""
    key, cancel_key = unique("wf"), unique("event")
    await env.put(key, REMINDER)
    trigger = await env.trigger(key, to=[unique("r")], cancel_key=cancel_key)
    await workflows.run_due(env.pool)
    conn = await psycopg.AsyncConnection.connect(fresh_database_url)
    async with conn, conn.transaction():
        cursor = await conn.execute("SELECT postbell.cancel(%s)", (cancel_key,))
        assert (await cursor.fetchone())[0] == 1
    await query(
        env.pool, "UPDATE workflow_runs SET due_at = now() WHERE trigger_id = %s", (trigger,)
    )
    await workflows.run_due(env.pool)
    [run] = await env.runs(trigger)
    assert (run["state"], run["step"], len(run["notification_ids"])) == ("cancelled", 2, 1)


async def test_a_run_finishes_on_the_version_it_started_with(env: Env) -> None:
    key = unique("wf")
    await env.put(key, [{"type": "delay", "for": "1h"}, {"type": "send", "message": "version one"}])
    old = await env.trigger(key, to=[unique("r")])
    await workflows.run_due(env.pool)
    await env.put(key, [{"type": "send", "message": "version two"}])
    new = await env.trigger(key, to=[unique("r")])
    await env.due_now(old)
    await workflows.run_due(env.pool)
    [o] = await env.runs(old)
    [n] = await env.runs(new)
    assert (await env.notification(o["notification_ids"][0]))["body"] == "version one"
    assert (await env.notification(n["notification_ids"][0]))["body"] == "version two"


CLAIM_AND_HOLD = textwrap.dedent(
    """
    import asyncio, sys
    from postbell.app.core import db

    async def main():
        conn = await db.connect(sys.argv[1])
        async with conn.transaction():
            rows = await db.fetch_all(conn, "workflow_runs_claim_due", {"limit": 100})
            print(len(rows), flush=True)
            await asyncio.sleep(600)

    asyncio.run(main())
    """
)


async def test_a_killed_workers_claim_is_released_and_its_step_runs_once(
    env: Env, fresh_database_url: str
) -> None:
    """A worker process claims the due runs (its transaction holds them) and is
    SIGKILLed: nothing of its round is committed, the locks go with its connection,
    and the next round sends the step exactly once."""
    key = unique("wf")
    await env.put(key, [{"type": "send", "channels": ["IN_APP"], "message": "once"}])
    trigger = await env.trigger(key, to=[unique("r"), unique("r")])
    proc = subprocess.Popen(
        [sys.executable, "-c", CLAIM_AND_HOLD, fresh_database_url],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        line = await asyncio.to_thread(proc.stdout.readline)
        assert line.strip() == "2"
        assert await workflows.advance(env.pool) == 0  # claimed elsewhere: skipped
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()

    async def released() -> int:
        return await workflows.run_due(env.pool)

    await wait_until(released)
    runs = await env.runs(trigger)
    assert [r["state"] for r in runs] == ["done", "done"]
    made = await query(
        env.pool,
        "SELECT count(*) AS n FROM notifications WHERE metadata -> 'workflow' ->> 'key' = %s",
        (key,),
    )
    assert made[0]["n"] == 1


async def test_a_run_whose_data_breaks_its_step_fails_alone(env: Env) -> None:
    """A time that overflows with its offset fails that run (saying which step) and
    the other runs of the batch go on."""
    key = unique("wf")
    steps = [
        {"type": "delay", "until": "data.at", "offset": "+2h"},
        {"type": "send", "channels": ["IN_APP"], "message": "x"},
    ]
    await env.put(key, steps)
    broken = await env.trigger(key, to=[unique("r")], data={"at": "9999-12-31T23:00:00+00:00"})
    past = dt.datetime.now(dt.UTC) - dt.timedelta(days=1)
    fine = await env.trigger(key, to=[unique("r")], data={"at": past.isoformat()})
    await workflows.run_due(env.pool)
    [b] = await env.runs(broken)
    [f] = await env.runs(fine)
    assert (b["state"], b["reason"].startswith("step 0: ")) == ("failed", True)
    assert (f["state"], len(f["notification_ids"])) == ("done", 1)
