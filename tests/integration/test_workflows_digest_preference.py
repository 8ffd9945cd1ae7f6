"""Recipient-chosen digest frequency: preferences hold, per category, `digest`
(off, hourly, daily, weekly + the local delivery hour and weekday); a digest step
with `"window": "preference"` follows it, set-based in the join statement."""

from __future__ import annotations

import datetime as dt
import zoneinfo
from collections.abc import AsyncIterator
from typing import Any

import pytest

from postbell.workers import workflows
from tests.conftest import ADMIN, query, unique
from tests.integration.test_workflows_engine import Env, workflow_env


@pytest.fixture
async def env(fresh_database_url: str) -> AsyncIterator[Env]:
    async with workflow_env(fresh_database_url) as e:
        await query(e.pool, "INSERT INTO categories (key) VALUES ('replies')")
        yield e


STEPS = [
    {"type": "digest", "window": "preference", "key": "data.thread_id"},
    {"type": "send", "channels": ["IN_APP"], "message": "{{ count }} new replies"},
]


async def prefer(env: Env, who: str, digest: dict[str, Any], **recipient: Any) -> dict[str, Any]:
    if recipient:
        response = await env.api.put(f"/api/recipients/{who}", json=recipient, headers=ADMIN)
        assert response.status_code in (200, 201), response.text
    response = await env.api.put(
        f"/api/recipients/{who}/preferences", json={"digest": digest}, headers=ADMIN
    )
    assert response.status_code == 200, response.text
    return dict(response.json())


async def digest_of(env: Env, key: str) -> dict[str, Any]:
    [row] = await query(
        env.pool,
        "SELECT opened_at, due_at, max_due_at, events, state FROM workflow_digests"
        " WHERE workflow_key = %s",
        (key,),
    )
    return row


def next_local(
    opened: dt.datetime, zone: str, hour: int, weekday: int | None = None
) -> dt.datetime:
    """The first ``hour``:00 (on ``weekday``, 0 = Monday) in ``zone`` after ``opened``."""
    tz = zoneinfo.ZoneInfo(zone)
    local = opened.astimezone(tz)
    day = local.date()
    while True:
        candidate = dt.datetime.combine(day, dt.time(hour), tz)
        if candidate > local and (weekday is None or candidate.weekday() == weekday):
            return candidate
        day += dt.timedelta(days=1)


async def test_preferences_store_digest_frequencies_per_category(env: Env) -> None:
    """A PUT merges per category (hour and weekday default to 9 and monday); a null
    clears that category; other members stay; a bad hour is 422 naming it."""
    who = unique("r")
    first = await prefer(env, who, {"replies": {"frequency": "daily", "hour": 7}})
    assert first["digest"] == {"replies": {"frequency": "daily", "hour": 7, "weekday": "monday"}}
    second = await prefer(env, who, {"events": {"frequency": "weekly", "weekday": "friday"}})
    assert second["digest"] == {
        "replies": {"frequency": "daily", "hour": 7, "weekday": "monday"},
        "events": {"frequency": "weekly", "hour": 9, "weekday": "friday"},
    }
    cleared = await prefer(env, who, {"replies": None})
    assert list(cleared["digest"]) == ["events"]
    got = await env.api.get(f"/api/recipients/{who}/preferences", headers=ADMIN)
    assert got.json()["digest"] == cleared["digest"]
    for bad, field in (
        ({"replies": {"frequency": "daily", "hour": 24}}, "hour"),
        ({"replies": {"frequency": "monthly"}}, "frequency"),
    ):
        response = await env.api.put(
            f"/api/recipients/{who}/preferences", json={"digest": bad}, headers=ADMIN
        )
        assert response.status_code == 422, response.text
        assert response.json()["field"].startswith("digest.")
        assert response.json()["field"].endswith(field)


async def test_hourly_collects_for_an_hour_from_the_first_event(env: Env) -> None:
    """hourly: a fixed window of one hour from the first event; a second trigger
    joins the same digest without moving its time."""
    key, who = unique("wf"), unique("r")
    await env.put(key, STEPS, category="replies")
    await prefer(env, who, {"replies": {"frequency": "hourly"}})
    for _ in range(2):
        await env.trigger(key, to=[who], data={"thread_id": "t1"})
        await workflows.run_due(env.pool)
    digest = await digest_of(env, key)
    assert digest["events"] == 2
    assert digest["due_at"] - digest["opened_at"] == dt.timedelta(hours=1)


@pytest.mark.parametrize("zone", ["America/New_York", "Asia/Kolkata", "UTC"])
async def test_daily_fires_at_the_next_delivery_hour_in_the_recipients_timezone(
    env: Env, zone: str
) -> None:
    """daily at 8: the digest is due at the next 08:00 in the recipient's timezone
    (a half-hour zone included), whatever the server's clock zone."""
    key, who = unique("wf"), unique("r")
    await env.put(key, STEPS, category="replies")
    await prefer(env, who, {"replies": {"frequency": "daily", "hour": 8}}, timezone=zone)
    await env.trigger(key, to=[who], data={"thread_id": "t1"})
    await workflows.run_due(env.pool)
    digest = await digest_of(env, key)
    assert digest["due_at"] == next_local(digest["opened_at"], zone, 8)
    assert digest["max_due_at"] == digest["due_at"]


async def test_weekly_fires_on_the_weekday_and_max_wait_caps_it(env: Env) -> None:
    """weekly on wednesday at 18 (UTC, no timezone set): the next such hour; the same
    step with max_wait 2h fires within two hours of the first event instead."""
    key, who = unique("wf"), unique("r")
    await env.put(key, STEPS, category="replies")
    await prefer(env, who, {"replies": {"frequency": "weekly", "hour": 18, "weekday": "wednesday"}})
    await env.trigger(key, to=[who], data={"thread_id": "t1"})
    await workflows.run_due(env.pool)
    digest = await digest_of(env, key)
    assert digest["due_at"] == next_local(digest["opened_at"], "UTC", 18, weekday=2)

    capped = unique("wf")
    await env.put(capped, [{**STEPS[0], "max_wait": "2h"}, STEPS[1]], category="replies")
    await env.trigger(capped, to=[who], data={"thread_id": "t1"})
    await workflows.run_due(env.pool)
    digest = await digest_of(env, capped)
    expected = min(
        next_local(digest["opened_at"], "UTC", 18, weekday=2),
        digest["opened_at"] + dt.timedelta(hours=2),
    )
    assert digest["due_at"] == expected


async def test_off_sends_each_trigger_at_once_and_a_default_applies_to_the_others(
    env: Env,
) -> None:
    """off: no digest; each trigger's run goes straight on and sends its own
    notification (count 1). A recipient who chose nothing gets the step's default
    (hourly here): their triggers are digested."""
    key, chooser, silent = unique("wf"), unique("off"), unique("silent")
    await env.put(
        key,
        [{**STEPS[0], "default": {"frequency": "hourly"}}, STEPS[1]],
        category="replies",
    )
    await prefer(env, chooser, {"replies": {"frequency": "off"}})
    first = await env.trigger(key, to=[chooser, silent], data={"thread_id": "t1"})
    second = await env.trigger(key, to=[chooser, silent], data={"thread_id": "t1"})
    await workflows.run_due(env.pool)
    runs = [*(await env.runs(first)), *(await env.runs(second))]
    by = {(r["recipient"], r["state"], r["digest_id"] is None) for r in runs}
    assert by == {(chooser, "done", True), (silent, "digesting", False)}
    bodies = await query(env.pool, "SELECT body, recipients FROM notifications ORDER BY created_at")
    assert [(b["body"], b["recipients"]) for b in bodies] == [
        ("1 new replies", [chooser]),
        ("1 new replies", [chooser]),
    ]
    digest = await digest_of(env, key)
    assert (digest["events"], digest["due_at"] - digest["opened_at"]) == (
        2,
        dt.timedelta(hours=1),
    )
