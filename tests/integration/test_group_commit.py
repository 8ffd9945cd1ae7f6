"""Group commit (issue 19): concurrent POST /api/notifications share transactions,
and one request never fails or changes another's answer.

Whether two notifications were written by one transaction is read from Postgres
itself: rows written by one transaction carry the same ``xmin``.
"""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from postbell.app.api.main import create_app
from postbell.app.core import db
from tests.conftest import ADMIN, api_client, make_settings, query, unique


async def _post_all(api: httpx.AsyncClient, bodies: list[dict[str, Any]]) -> list[httpx.Response]:
    return list(
        await asyncio.gather(
            *(api.post("/api/notifications", headers=ADMIN, json=b) for b in bodies)
        )
    )


async def _transactions(pool: db.Pool, ids: list[str]) -> int:
    rows = await query(
        pool,
        "SELECT count(DISTINCT xmin::text) AS n FROM notifications WHERE id = ANY(%s::uuid[])",
        (ids,),
    )
    return int(rows[0]["n"])


async def test_concurrent_requests_share_a_commit_and_each_gets_its_own_row(
    api: httpx.AsyncClient, pool: db.Pool
) -> None:
    """200 POSTs at once: every one 202 with its own id, every row holding its own
    request's text and options, written by fewer transactions than requests."""
    tag = unique("gc")
    later = (dt.datetime.now(dt.UTC) + dt.timedelta(days=30)).isoformat()
    bodies = [
        {
            "to": [f"{tag}-{i}"],
            "title": f"t{i}",
            "message": f"m{i}",
            "priority": ("low", "normal", "high", "urgent")[i % 4],
            "metadata": {"i": i},
            **({"send_at": later} if i % 10 == 0 else {}),
        }
        for i in range(200)
    ]
    answers = await _post_all(api, bodies)
    assert [a.status_code for a in answers] == [202] * 200, answers[0].text
    ids = [a.json()["id"] for a in answers]
    assert len(set(ids)) == 200
    assert [a.json()["status"] for a in answers] == [
        "scheduled" if i % 10 == 0 else "queued" for i in range(200)
    ]
    rows = await query(
        pool,
        "SELECT id::text, recipients, title, body, priority, metadata, send_at IS NOT NULL AS later"
        " FROM notifications WHERE id = ANY(%s::uuid[])",
        (ids,),
    )
    by_id = {r["id"]: r for r in rows}
    for i, notification_id in enumerate(ids):
        row = by_id[notification_id]
        assert (row["recipients"], row["title"], row["body"], row["metadata"]) == (
            [f"{tag}-{i}"],
            f"t{i}",
            f"m{i}",
            {"i": i},
        )
        assert row["priority"] == bodies[i]["priority"]
        assert row["later"] == (i % 10 == 0)
    # one route job per notification, at the notification's priority and time
    jobs = await query(
        pool,
        "SELECT count(*) AS n FROM procrastinate_jobs"
        " WHERE task_name = 'postbell.route' AND args ->> 'notification_id' = ANY(%s)",
        (ids,),
    )
    assert jobs[0]["n"] >= 180  # the workers may have routed some already
    assert await _transactions(pool, ids) < 200


async def test_an_unknown_category_or_topic_fails_only_its_own_request(
    api: httpx.AsyncClient, pool: db.Pool
) -> None:
    """Among concurrent good requests, the ones naming a missing category or topic get
    their 422 naming the field; the others are written."""
    tag = unique("gc-bad")
    bodies: list[dict[str, Any]] = [{"to": [f"{tag}-{i}"], "message": "ok"} for i in range(30)]
    bodies[3] = {"to": [f"{tag}-3"], "message": "bad", "category": unique("nope")}
    bodies[17] = {"topic": unique("no-topic"), "message": "bad"}
    answers = await _post_all(api, bodies)
    assert [a.status_code for a in answers] == [422 if i in (3, 17) else 202 for i in range(30)]
    assert answers[3].json()["field"] == "category"
    assert answers[17].json()["field"] == "topic"
    good = [a.json()["id"] for i, a in enumerate(answers) if i not in (3, 17)]
    rows = await query(
        pool, "SELECT count(*) AS n FROM notifications WHERE recipients[1] LIKE %s", (f"{tag}-%",)
    )
    assert rows[0]["n"] == len(good) == 28


@pytest.fixture
async def poisoned_api(fresh_database_url: str) -> AsyncIterator[tuple[httpx.AsyncClient, db.Pool]]:
    """An API on a database whose notifications refuse the title 'poison' (a trigger):
    a fault the batch statement cannot check for."""
    pool = db.create_pool(fresh_database_url, max_size=8)
    await pool.open(wait=True)
    await query(
        pool,
        """
        CREATE FUNCTION refuse_poison() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            IF NEW.title = 'poison' THEN
                RAISE EXCEPTION 'poisoned row (test)' USING ERRCODE = '22023';
            END IF;
            RETURN NEW;
        END $$;
        CREATE TRIGGER refuse_poison BEFORE INSERT ON notifications
            FOR EACH ROW EXECUTE FUNCTION refuse_poison();
        """,
    )
    try:
        async with api_client(create_app(make_settings(fresh_database_url), pool=pool)) as client:
            yield client, pool
    finally:
        await pool.close()


async def test_a_batch_that_fails_is_written_again_one_by_one(
    poisoned_api: tuple[httpx.AsyncClient, db.Pool],
) -> None:
    """A row the database refuses fails its whole batch statement; each request of
    that batch is then written on its own: the poisoned one gets an error (never a
    202), every other one its 202 and its row."""
    api, pool = poisoned_api
    bodies: list[dict[str, Any]] = [{"to": [f"r{i}"], "message": "ok"} for i in range(40)]
    for i in (0, 21):
        bodies[i] = {"to": [f"r{i}"], "title": "poison", "message": "bad"}
    answers = await _post_all(api, bodies)
    codes = [a.status_code for a in answers]
    assert [c for i, c in enumerate(codes) if i not in (0, 21)] == [202] * 38
    assert codes[0] != 202 and codes[21] != 202
    assert {answers[0].json()["error"], answers[21].json()["error"]} <= {
        "invalid",
        "internal_error",
    }
    rows = await query(pool, "SELECT recipients[1] AS r FROM notifications ORDER BY 1")
    assert sorted(r["r"] for r in rows) == sorted(f"r{i}" for i in range(40) if i not in (0, 21))
