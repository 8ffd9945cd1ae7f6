"""Digest and throttle steps: one open digest per (workflow, recipient, key) held by a
unique index, under real concurrency; keys never mix; a trigger after the digest
fired starts the next; cancelled events drop out; throttles let `limit` runs through
per recipient and key, the rest end `throttled`."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
from collections.abc import AsyncIterator
from typing import Any

import psycopg
import pytest

from postbell.workers import workflows
from tests.conftest import ADMIN, query, unique
from tests.integration.test_workflows_engine import Env, workflow_env


@pytest.fixture
async def env(fresh_database_url: str) -> AsyncIterator[Env]:
    async with workflow_env(fresh_database_url) as e:
        yield e


DIGEST = [
    {"type": "digest", "window": "1h", "key": "data.thread_id", "max_wait": "6h"},
    {
        "type": "send",
        "channels": ["IN_APP"],
        "title": "{{count}} new replies",
        "message": "{{count}} new replies in the thread",
    },
]


async def digests(env: Env, key: str) -> list[dict[str, Any]]:
    return await query(
        env.pool,
        "SELECT id, recipient, digest_key, state, events, run_id, cardinality(run_ids) AS held"
        " FROM workflow_digests WHERE workflow_key = %s ORDER BY id",
        (key,),
    )


async def fire(env: Env, key: str) -> None:
    """The window is over: every open digest of the workflow is due; run the engine."""
    await query(
        env.pool,
        "UPDATE workflow_digests SET due_at = now() - interval '1 second'"
        " WHERE workflow_key = %s AND state = 'open'",
        (key,),
    )
    await workflows.run_due(env.pool)


async def advance_concurrently(env: Env, *, workers: int, batch: int) -> None:
    """Several engine rounds at once (each its own transaction and connection), until
    nothing is due: they take different runs (SKIP LOCKED) and meet at the digest."""
    while sum(
        await asyncio.gather(*(workflows.advance(env.pool, batch=batch) for _ in range(workers)))
    ):
        pass


async def test_fifty_concurrent_triggers_make_exactly_one_digest_with_all_fifty_events(
    env: Env, fresh_database_url: str
) -> None:
    """50 host transactions trigger at once for one recipient and thread; engine
    rounds on five connections collect them: one digest, 50 events. When it fires,
    one run sends one notification saying 50 (the {{count}} placeholder), the other
    49 end done ('digested'), and the delivering run shows all 50 events."""
    key, who = unique("wf"), unique("r")
    await env.put(key, DIGEST)

    async def trigger(n: int) -> None:
        async with await psycopg.AsyncConnection.connect(fresh_database_url) as conn:
            await conn.execute(
                "SELECT postbell.trigger(%s, ARRAY[%s], %s::jsonb)",
                (key, who, json.dumps({"thread_id": "t9", "n": n})),
            )

    await asyncio.gather(*(trigger(n) for n in range(50)))
    await advance_concurrently(env, workers=5, batch=4)
    [digest] = await digests(env, key)
    assert (digest["recipient"], digest["digest_key"], digest["state"], digest["events"]) == (
        who,
        '"t9"',
        "open",
        50,
    )
    states = await query(
        env.pool,
        "SELECT state, digest_id, count(*) AS n FROM workflow_runs WHERE workflow_key = %s"
        " GROUP BY 1, 2",
        (key,),
    )
    assert [(s["state"], s["digest_id"], s["n"]) for s in states] == [
        ("digesting", digest["id"], 50)
    ]

    await fire(env, key)
    [fired] = await digests(env, key)
    assert (fired["state"], fired["held"]) == ("fired", 50)
    runs = await query(
        env.pool,
        "SELECT id, state, reason, notification_ids FROM workflow_runs WHERE workflow_key = %s ORDER BY id",
        (key,),
    )
    leader, others = runs[0], runs[1:]
    assert fired["run_id"] == leader["id"]
    assert (leader["state"], len(leader["notification_ids"])) == ("done", 1)
    assert {(r["state"], r["reason"], len(r["notification_ids"])) for r in others} == {
        ("done", "digested", 0)
    }
    [notification] = await query(
        env.pool,
        "SELECT title, body, recipients, metadata FROM notifications WHERE id = %s",
        (leader["notification_ids"][0],),
    )
    assert notification["title"] == "50 new replies"
    assert notification["body"] == "50 new replies in the thread"
    assert notification["recipients"] == [who]
    assert notification["metadata"]["workflow"]["count"] == 50
    shown = (await env.api.get(f"/api/workflow-runs/{leader['id']}", headers=ADMIN)).json()
    assert shown["digest"] == {
        "id": fired["id"],
        "state": "fired",
        "count": 50,
        "run_id": leader["id"],
    }
    assert sorted(e["n"] for e in shown["events"]) == list(range(50))
    assert [e["n"] for e in shown["events"]] == [
        r["n"]
        for r in await query(
            env.pool,
            "SELECT (t.data ->> 'n')::int AS n FROM workflow_runs r JOIN workflow_triggers t"
            " ON t.id = r.trigger_id WHERE r.workflow_key = %s ORDER BY r.id",
            (key,),
        )
    ]


async def test_keys_and_recipients_never_mix_and_a_late_trigger_starts_the_next_digest(
    env: Env,
) -> None:
    key = unique("wf")
    await env.put(key, DIGEST)
    a, b = unique("a"), unique("b")
    for thread, who in (("t1", a), ("t1", a), ("t1", a), ("t2", a), ("t2", a), ("t1", b)):
        await env.trigger(key, to=[who], data={"thread_id": thread})
    await workflows.run_due(env.pool)
    found = {(d["recipient"], d["digest_key"]): d["events"] for d in await digests(env, key)}
    assert found == {(a, '"t1"'): 3, (a, '"t2"'): 2, (b, '"t1"'): 1}
    await fire(env, key)
    await env.trigger(key, to=[a], data={"thread_id": "t1"})
    await workflows.run_due(env.pool)
    rows = await digests(env, key)
    assert [
        (d["state"], d["held"]) for d in rows if d["recipient"] == a and d["digest_key"] == '"t1"'
    ] == [
        ("fired", 3),
        ("open", None),
    ]
    sent = await query(
        env.pool,
        "SELECT n.title FROM workflow_runs r JOIN notifications n ON n.id = ANY(r.notification_ids)"
        " WHERE r.workflow_key = %s ORDER BY n.title",
        (key,),
    )
    assert [s["title"] for s in sent] == ["1 new replies", "2 new replies", "3 new replies"]


async def test_a_new_event_moves_the_digest_later_but_never_past_max_wait(env: Env) -> None:
    key = unique("wf")
    await env.put(key, DIGEST)
    who = unique("r")
    await env.trigger(key, to=[who], data={"thread_id": "t"})
    await workflows.run_due(env.pool)
    [first] = await query(
        env.pool,
        "SELECT due_at, max_due_at, opened_at FROM workflow_digests WHERE workflow_key = %s",
        (key,),
    )
    assert first["due_at"] - first["opened_at"] == dt.timedelta(hours=1)
    assert first["max_due_at"] - first["opened_at"] == dt.timedelta(hours=6)
    await query(
        env.pool,
        "UPDATE workflow_digests SET max_due_at = now() + interval '10 minutes' WHERE workflow_key = %s",
        (key,),
    )
    await env.trigger(key, to=[who], data={"thread_id": "t"})
    await workflows.run_due(env.pool)
    [after] = await query(
        env.pool,
        "SELECT due_at, max_due_at, events FROM workflow_digests WHERE workflow_key = %s",
        (key,),
    )
    assert (after["events"], after["due_at"]) == (2, after["max_due_at"])


async def test_a_cancelled_event_drops_out_of_its_digest(env: Env) -> None:
    key = unique("wf")
    await env.put(key, DIGEST)
    who = unique("r")
    await env.trigger(key, to=[who], data={"thread_id": "t"}, cancel_key="first")
    await env.trigger(key, to=[who], data={"thread_id": "t"})
    await env.trigger(key, to=[who], data={"thread_id": "t"})
    await workflows.run_due(env.pool)
    cancelled = await env.api.post(
        "/api/workflows/cancel", json={"cancel_key": "first"}, headers=ADMIN
    )
    assert cancelled.json()["cancelled"] == 1
    await fire(env, key)
    [digest] = await digests(env, key)
    assert digest["held"] == 2
    titles = await query(
        env.pool,
        "SELECT n.title FROM workflow_runs r JOIN notifications n ON n.id = ANY(r.notification_ids)"
        " WHERE r.workflow_key = %s",
        (key,),
    )
    assert [t["title"] for t in titles] == ["2 new replies"]


THROTTLED = [
    {"type": "throttle", "limit": 2, "per": "1h", "key": "data.community"},
    {"type": "send", "channels": ["IN_APP"], "message": "New post"},
]


async def test_a_throttle_lets_limit_runs_through_and_records_the_rest(env: Env) -> None:
    """Five triggers for one recipient and community, advanced by concurrent rounds:
    two pass, three end throttled with the reason. Another community has its own
    allowance; once the hour has passed, the next one passes again."""
    key, who = unique("wf"), unique("r")
    await env.put(key, THROTTLED)
    for _ in range(5):
        await env.trigger(key, to=[who], data={"community": "c1"})
    await env.trigger(key, to=[who], data={"community": "c2"})
    await advance_concurrently(env, workers=3, batch=1)
    rows = await query(
        env.pool,
        "SELECT t.data ->> 'community' AS community, r.state, r.reason, cardinality(r.notification_ids) AS sent"
        " FROM workflow_runs r JOIN workflow_triggers t ON t.id = r.trigger_id"
        " WHERE r.workflow_key = %s",
        (key,),
    )
    outcome = sorted((r["community"], r["state"], r["reason"], r["sent"]) for r in rows)
    assert outcome == [
        ("c1", "done", None, 1),
        ("c1", "done", None, 1),
        ("c1", "throttled", "over 2 per 1h", 0),
        ("c1", "throttled", "over 2 per 1h", 0),
        ("c1", "throttled", "over 2 per 1h", 0),
        ("c2", "done", None, 1),
    ]
    listed = (
        await env.api.get(f"/api/workflows/{key}/runs?status=throttled", headers=ADMIN)
    ).json()
    assert len(listed["items"]) == 3
    await query(
        env.pool,
        "UPDATE workflow_throttle_passes SET passed_at = passed_at - interval '61 minutes',"
        " expires_at = expires_at - interval '61 minutes' WHERE workflow_key = %s",
        (key,),
    )
    assert await workflows.purge_throttle_passes(env.pool) == 3
    later = await env.trigger(key, to=[who], data={"community": "c1"})
    await workflows.run_due(env.pool)
    [run] = await env.runs(later)
    assert run["state"] == "done"


async def test_the_due_view_shows_what_fires_next(env: Env) -> None:
    """postbell.workflow_runs_due: per workflow, version and step, the runs waiting,
    the open digests, and how many are past due."""
    reminder, replies = unique("remind"), unique("replies")
    await env.put(reminder, [{"type": "delay", "for": "1h"}, {"type": "send", "message": "soon"}])
    await env.put(replies, DIGEST)
    await env.trigger(reminder, to=[unique("r") for _ in range(3)])
    await env.trigger(replies, to=[unique("r"), unique("r")], data={"thread_id": "t"})
    await workflows.run_due(env.pool)
    await env.trigger(reminder, to=[unique("r")])  # not taken yet: overdue
    rows = await query(
        env.pool,
        "SELECT workflow, version, step, step_type, runs, digests, overdue"
        " FROM postbell.workflow_runs_due ORDER BY workflow, step",
    )
    assert rows == [
        {
            "workflow": reminder,
            "version": 1,
            "step": 0,
            "step_type": "delay",
            "runs": 1,
            "digests": 0,
            "overdue": 1,
        },
        {
            "workflow": reminder,
            "version": 1,
            "step": 1,
            "step_type": "send",
            "runs": 3,
            "digests": 0,
            "overdue": 0,
        },
        {
            "workflow": replies,
            "version": 1,
            "step": 0,
            "step_type": "digest",
            "runs": 2,
            "digests": 2,
            "overdue": 0,
        },
    ]


async def test_the_claim_and_the_runs_list_use_their_indexes_on_many_finished_runs(
    env: Env,
) -> None:
    """With 50,000 finished runs and a few waiting, the engine's claim and one
    recipient's run list read their indexes, not the table."""
    from postbell.app.core.db import queries

    key = unique("wf")
    await env.put(key, [{"type": "delay", "for": "1h"}, {"type": "send", "message": "x"}])
    trigger = await env.trigger(key, to=[unique("r") for _ in range(5)], cancel_key="k")
    await query(
        env.pool,
        "INSERT INTO workflow_runs (trigger_id, workflow_key, version, recipient, state, cancel_key)"
        " SELECT %s, %s, 1, 'r-' || g, 'done', 'k' FROM generate_series(1, 50000) AS g",
        (trigger, key),
    )
    await query(env.pool, "ANALYZE workflow_runs")
    for name, params in (
        ("workflow_runs_claim_due", {"limit": 500}),
        (
            "workflow_runs_list",
            {"workflow": key, "recipient": "r-7", "state": None, "before": 1 << 62, "limit": 51},
        ),
    ):
        async with env.pool.connection() as conn:
            cursor = await conn.execute(b"EXPLAIN " + queries[name], params)
            plan = "\n".join(r["QUERY PLAN"] for r in await cursor.fetchall())
        assert "Seq Scan on workflow_runs" not in plan, (name, plan)
