"""Workflows through the API and SQL: versions, step validation naming the step,
triggers (set-based, idempotent, transactional), cancel, and reading runs."""

from __future__ import annotations

from typing import Any

import httpx
import psycopg
import pytest

from postbell.app.core import db
from tests.conftest import ADMIN, query, unique

# Starts with a long delay: a worker running elsewhere in the session may take a run
# one step on, but never further while these tests look at it.
SIMPLE = {
    "steps": [
        {"type": "delay", "for": "1d"},
        {"type": "send", "channels": ["IN_APP"], "title": "New reply", "message": "Ada replied"},
        {"type": "delay", "for": "15m"},
        {
            "type": "send",
            "channels": ["EMAIL"],
            "message": "You have an unread reply",
            "if": {"in_app": "unread"},
        },
    ]
}


async def put_workflow(api: httpx.AsyncClient, key: str, body: dict[str, Any]) -> dict[str, Any]:
    response = await api.put(f"/api/workflows/{key}", json=body, headers=ADMIN)
    assert response.status_code == 200, response.text
    return dict(response.json())


async def test_put_and_get_a_workflow_and_edits_make_versions(api: httpx.AsyncClient) -> None:
    """A PUT stores version 1; the same PUT again keeps it; a changed one is version 2.
    GET answers the current version with its steps as given."""
    key = unique("wf")
    first = await put_workflow(api, key, SIMPLE)
    assert (first["key"], first["version"], first["category"]) == (key, 1, None)
    assert first["steps"] == SIMPLE["steps"]
    again = await put_workflow(api, key, SIMPLE)
    assert again["version"] == 1
    changed = {"steps": [*SIMPLE["steps"][:2]]}
    assert (await put_workflow(api, key, changed))["version"] == 2
    got = (await api.get(f"/api/workflows/{key}", headers=ADMIN)).json()
    assert (got["version"], got["steps"]) == (2, changed["steps"])
    listed = (await api.get("/api/workflows", headers=ADMIN)).json()["items"]
    assert key in [w["key"] for w in listed]
    assert (await api.get(f"/api/workflows/{unique('none')}", headers=ADMIN)).status_code == 404


BAD_STEPS: list[tuple[str, Any, str]] = [
    ("no steps", [], "steps"),
    ("unknown type", [{"type": "wait", "for": "1m"}], "steps[0].type"),
    ("send without message", [{"type": "send", "channels": ["IN_APP"]}], "steps[0].message"),
    (
        "unknown channel",
        [{"type": "send", "channels": ["FAX"], "message": "x"}],
        "steps[0].channels[0]",
    ),
    (
        "bad duration",
        [{"type": "send", "message": "x"}, {"type": "delay", "for": "15 minutes"}],
        "steps[1].for",
    ),
    (
        "delay with both",
        [{"type": "send", "message": "x"}, {"type": "delay", "for": "1m", "until": "data.at"}],
        "steps[1].for",
    ),
    (
        "bad until path",
        [{"type": "send", "message": "x"}, {"type": "delay", "until": "event.at"}],
        "steps[1].until",
    ),
    (
        "unknown field",
        [{"type": "send", "message": "x", "colour": "red"}],
        "steps[0]",  # the object; the detail names the field
    ),
    (
        "in_app condition without an in-app send",
        [{"type": "send", "channels": ["EMAIL"], "message": "x", "if": {"in_app": "unread"}}],
        "steps[0].if.in_app",
    ),
    (
        "template and message fields",
        [{"type": "send", "channels": ["EMAIL"], "template": "reply-digest", "message": "x"}],
        "steps[0].message",
    ),
    (
        "unknown template",
        [{"type": "send", "channels": ["EMAIL"], "template": "no-such-template-x"}],
        "steps[0].template",
    ),
    (
        "message that does not compile",
        [{"type": "send", "message": "{% for e in events %}{{ e.author }}"}],
        "steps[0].message",
    ),
    (
        "preference window without a category",
        [{"type": "digest", "window": "preference"}, {"type": "send", "message": "x"}],
        "steps[0].window",
    ),
    (
        "default frequency with a fixed window",
        [
            {"type": "digest", "window": "1h", "default": {"frequency": "daily"}},
            {"type": "send", "message": "x"},
        ],
        "steps[0].default",
    ),
    (
        "max_wait under the window",
        [{"type": "digest", "window": "1h", "max_wait": "10m"}, {"type": "send", "message": "x"}],
        "steps[0].max_wait",
    ),
    (
        "throttle limit zero",
        [{"type": "throttle", "limit": 0, "per": "1h"}, {"type": "send", "message": "x"}],
        "steps[0].limit",
    ),
    ("no send step", [{"type": "delay", "for": "1m"}], "steps"),
]


@pytest.mark.parametrize(("case", "steps", "field"), BAD_STEPS, ids=[c[0] for c in BAD_STEPS])
async def test_a_bad_step_is_422_naming_its_index_and_field(
    api: httpx.AsyncClient, case: str, steps: Any, field: str
) -> None:
    """Each broken step answers 422 with `field` = steps[i].<field>, and stores nothing."""
    key = unique("bad")
    response = await api.put(f"/api/workflows/{key}", json={"steps": steps}, headers=ADMIN)
    assert response.status_code == 422, response.text
    assert response.json()["field"] == field, response.json()
    assert (await api.get(f"/api/workflows/{key}", headers=ADMIN)).status_code == 404


async def test_unknown_category_is_422(api: httpx.AsyncClient) -> None:
    response = await api.put(
        f"/api/workflows/{unique('wf')}", json={**SIMPLE, "category": "nope-x"}, headers=ADMIN
    )
    assert (response.status_code, response.json()["field"]) == (422, "category")


async def test_trigger_makes_one_run_per_distinct_recipient(
    api: httpx.AsyncClient, pool: db.Pool
) -> None:
    """POST .../trigger answers 202 with the trigger id; its runs wait at step 0, due
    now, carry the cancel key; GET /api/workflow-runs/{id} and the runs list show them."""
    key = unique("wf")
    await put_workflow(api, key, SIMPLE)
    a, b = unique("r"), unique("r")
    response = await api.post(
        f"/api/workflows/{key}/trigger",
        json={"to": [a, b, a], "data": {"thread_id": "t9"}, "cancel_key": "thread-t9"},
        headers=ADMIN,
    )
    assert response.status_code == 202, response.text
    accepted = response.json()
    assert (accepted["workflow"], accepted["version"], accepted["runs"]) == (key, 1, 2)
    rows = await query(
        pool,
        "SELECT id, recipient, state, step < 2 AS early, cancel_key FROM workflow_runs"
        " WHERE trigger_id = %s ORDER BY recipient",
        (accepted["id"],),
    )
    assert [(r["recipient"], r["state"], r["early"], r["cancel_key"]) for r in rows] == sorted(
        [(a, "waiting", True, "thread-t9"), (b, "waiting", True, "thread-t9")]
    )
    run = (await api.get(f"/api/workflow-runs/{rows[0]['id']}", headers=ADMIN)).json()
    assert run["trigger_id"] == accepted["id"]
    assert (run["data"], run["notifications"]) == ({"thread_id": "t9"}, [])
    assert run["step_type"] in ("delay", "send")
    page = (await api.get(f"/api/workflows/{key}/runs?recipient={a}", headers=ADMIN)).json()
    assert [r["recipient"] for r in page["items"]] == [a]
    waiting = (
        await api.get(f"/api/workflows/{key}/runs?status=waiting&limit=1", headers=ADMIN)
    ).json()
    assert len(waiting["items"]) == 1 and waiting["next_cursor"]
    rest = (
        await api.get(
            f"/api/workflows/{key}/runs?status=waiting&cursor={waiting['next_cursor']}",
            headers=ADMIN,
        )
    ).json()
    assert len(rest["items"]) == 1 and rest["next_cursor"] is None
    assert (
        await api.get(f"/api/workflows/{key}/runs?status=nope", headers=ADMIN)
    ).status_code == 400
    assert (await api.get("/api/workflow-runs/999999999", headers=ADMIN)).status_code == 404


async def test_trigger_rules(api: httpx.AsyncClient) -> None:
    """Unknown workflow 404; to and topic together, neither, unknown topic: 422."""
    key = unique("wf")
    await put_workflow(api, key, SIMPLE)
    missing = await api.post(
        f"/api/workflows/{unique('x')}/trigger", json={"to": ["a"]}, headers=ADMIN
    )
    assert missing.status_code == 404
    for body, field in (
        ({"to": ["a"], "topic": "t"}, "topic"),
        ({}, "to"),
        ({"topic": unique("topic")}, "topic"),
        # the error mapper drops a field called "data" (Litestar's name for the body)
        ({"to": ["a"], "data": []}, None),
    ):
        response = await api.post(f"/api/workflows/{key}/trigger", json=body, headers=ADMIN)
        assert (response.status_code, response.json()["field"]) == (422, field), response.text


async def test_a_topic_trigger_makes_a_run_per_subscriber(
    api: httpx.AsyncClient, pool: db.Pool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A topic's runs are inserted in chunks (here of 3, for 7 subscribers): all 7."""
    from postbell.app.api.workflows import service

    monkeypatch.setattr(service, "TOPIC_CHUNK", 3)
    key, topic = unique("wf"), unique("topic")
    await put_workflow(api, key, SIMPLE)
    members = [unique("m") for _ in range(7)]
    response = await api.put(
        f"/api/topics/{topic}/subscribers", json={"recipients": members}, headers=ADMIN
    )
    assert response.status_code == 200, response.text
    accepted = (
        await api.post(f"/api/workflows/{key}/trigger", json={"topic": topic}, headers=ADMIN)
    ).json()
    assert accepted["runs"] == 7
    rows = await query(
        pool, "SELECT recipient FROM workflow_runs WHERE trigger_id = %s", (accepted["id"],)
    )
    assert sorted(r["recipient"] for r in rows) == sorted(members)


async def test_an_idempotent_trigger_repeat_answers_the_original(api: httpx.AsyncClient) -> None:
    key = unique("wf")
    await put_workflow(api, key, SIMPLE)
    headers = {**ADMIN, "Idempotency-Key": unique("idem")}
    body = {"to": [unique("r")], "data": {"n": 1}}
    first = await api.post(f"/api/workflows/{key}/trigger", json=body, headers=headers)
    second = await api.post(f"/api/workflows/{key}/trigger", json=body, headers=headers)
    assert (first.status_code, second.status_code) == (202, 200)
    assert first.json() == second.json()
    other = await api.post(
        f"/api/workflows/{key}/trigger", json={**body, "data": {"n": 2}}, headers=headers
    )
    assert (other.status_code, other.json()["error"]) == (422, "idempotency_conflict")


async def test_cancel_stops_the_runs_with_the_key(api: httpx.AsyncClient, pool: db.Pool) -> None:
    """POST /api/workflows/cancel answers how many unfinished runs it stopped; a second
    cancel finds none."""
    key, cancel_key = unique("wf"), unique("event")
    await put_workflow(api, key, SIMPLE)
    await api.post(
        f"/api/workflows/{key}/trigger",
        json={"to": [unique("r"), unique("r")], "cancel_key": cancel_key},
        headers=ADMIN,
    )
    first = await api.post("/api/workflows/cancel", json={"cancel_key": cancel_key}, headers=ADMIN)
    assert first.json() == {"cancel_key": cancel_key, "cancelled": 2}
    again = await api.post("/api/workflows/cancel", json={"cancel_key": cancel_key}, headers=ADMIN)
    assert again.json()["cancelled"] == 0
    rows = await query(
        pool, "SELECT state, due_at FROM workflow_runs WHERE cancel_key = %s", (cancel_key,)
    )
    assert [(r["state"], r["due_at"]) for r in rows] == [("cancelled", None)] * 2


async def test_sql_trigger_and_cancel_follow_the_host_transaction(
    api: httpx.AsyncClient, database_url: str, pool: db.Pool
) -> None:
    """postbell.trigger in a rolled-back transaction leaves no trigger and no run;
    committed, its runs exist; postbell.cancel rolled back cancels nothing, committed
    it answers the count."""
    key, cancel_key, who = unique("wf"), unique("c"), unique("r")
    await put_workflow(api, key, SIMPLE)
    async with await psycopg.AsyncConnection.connect(database_url) as conn:
        with pytest.raises(RuntimeError):
            async with conn.transaction():
                await conn.execute(
                    "SELECT postbell.trigger(%s, ARRAY[%s], '{\"a\": 1}'::jsonb, cancel_key => %s)",
                    (key, who, cancel_key),
                )
                raise RuntimeError("the host's write failed")
        assert await query(pool, "SELECT 1 FROM workflow_runs WHERE recipient = %s", (who,)) == []
        assert (
            await query(
                pool, "SELECT 1 FROM workflow_triggers WHERE cancel_key = %s", (cancel_key,)
            )
            == []
        )
        async with conn.transaction():
            cursor = await conn.execute(
                "SELECT postbell.trigger(%s, ARRAY[%s], '{\"a\": 1}'::jsonb, cancel_key => %s)",
                (key, who, cancel_key),
            )
            trigger_id = (await cursor.fetchone())[0]
        runs = await query(
            pool, "SELECT trigger_id FROM workflow_runs WHERE recipient = %s", (who,)
        )
        assert [r["trigger_id"] for r in runs] == [trigger_id]
        with pytest.raises(RuntimeError):
            async with conn.transaction():
                await conn.execute("SELECT postbell.cancel(%s)", (cancel_key,))
                raise RuntimeError("rolled back")
        states = await query(pool, "SELECT state FROM workflow_runs WHERE recipient = %s", (who,))
        assert [r["state"] for r in states] == ["waiting"]
        async with conn.transaction():
            cursor = await conn.execute("SELECT postbell.cancel(%s)", (cancel_key,))
            assert (await cursor.fetchone())[0] == 1


@pytest.mark.parametrize(
    ("call", "message"),
    [
        ("SELECT postbell.trigger('no-such-workflow', ARRAY['a'], '{}')", "unknown workflow"),
        ("SELECT postbell.trigger(%(key)s, ARRAY[]::text[], '{}')", "at least one recipient"),
        ("SELECT postbell.trigger(%(key)s, ARRAY['a'], '[1]')", "data must be a JSON object"),
    ],
)
async def test_sql_trigger_refuses_bad_arguments(
    api: httpx.AsyncClient, database_url: str, call: str, message: str
) -> None:
    key = unique("wf")
    await put_workflow(api, key, SIMPLE)
    async with await psycopg.AsyncConnection.connect(database_url) as conn:
        with pytest.raises(psycopg.errors.InvalidParameterValue, match=message):
            await conn.execute(call, {"key": key})
