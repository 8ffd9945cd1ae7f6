"""PUT/GET/DELETE /api/recipients/{external_id}."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from postbell.app.core import db
from tests.conftest import ADMIN, query, unique, wait_until


async def test_put_creates_then_merges(api: httpx.AsyncClient) -> None:
    rid = unique("user")
    first = await api.put(
        f"/api/recipients/{rid}", headers=ADMIN, json={"email": "ada@example.org", "name": "Ada"}
    )
    assert first.status_code == 200
    assert (first.json()["email"], first.json()["name"]) == ("ada@example.org", "Ada")
    second = await api.put(
        f"/api/recipients/{rid}", headers=ADMIN, json={"phone": "+4915112345678", "name": None}
    )
    body = second.json()
    assert (body["email"], body["phone"], body["name"]) == (
        "ada@example.org",
        "+4915112345678",
        None,
    )
    got = await api.get(f"/api/recipients/{rid}", headers=ADMIN)
    assert got.json() == body


async def test_delete_removes_recipient_and_inbox(api: httpx.AsyncClient, pool: Any) -> None:
    rid = unique("user")
    await api.put(f"/api/recipients/{rid}", headers=ADMIN, json={"email": "x@example.org"})
    assert (await api.delete(f"/api/recipients/{rid}", headers=ADMIN)).status_code == 204
    assert (await api.get(f"/api/recipients/{rid}", headers=ADMIN)).status_code == 404
    assert (await api.delete(f"/api/recipients/{rid}", headers=ADMIN)).status_code == 404
    assert await query(pool, "SELECT 1 FROM recipients WHERE external_id = %s", (rid,)) == []


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"email": "not-an-address"}, "email"),
        ({"phone": "0151 1234"}, "phone"),
        ({"timezone": "Mars/Olympus"}, "timezone"),
        ({"locale": "english please"}, "locale"),
        ({"webhook_url": "ftp://example.org"}, "webhook_url"),
        ({"email": 42}, "email"),
        ({"nickname": "x"}, "nickname"),
        ({"email": "a@" + "b" * 300 + ".org"}, "email"),
        ({"email": "zoë@example.org"}, "email"),
    ],
)
async def test_bad_recipient_is_422_and_writes_nothing(
    api: httpx.AsyncClient, pool: Any, body: dict[str, Any], field: str
) -> None:
    rid = unique("user")
    response = await api.put(f"/api/recipients/{rid}", headers=ADMIN, json=body)
    assert response.status_code == 422, response.text
    assert response.json()["field"] == field
    assert await query(pool, "SELECT 1 FROM recipients WHERE external_id = %s", (rid,)) == []


async def test_malformed_json_is_400(api: httpx.AsyncClient) -> None:
    response = await api.put("/api/recipients/x", headers=ADMIN, content=b"{email:")
    assert (response.status_code, response.json()["error"]) == (400, "malformed_json")


async def test_concurrent_bulk_upserts_of_new_ids_lose_no_write(
    api: httpx.AsyncClient, pool: db.Pool
) -> None:
    """Two bulk upserts naming the same new ids, one setting email and one phone: the
    second waits for the first (deterministically: the first is held open inside its
    transaction while the second starts) and every row ends with both fields."""
    import asyncio

    from psycopg.types.json import Jsonb

    ids = [unique("race") for _ in range(300)]
    emails = [{"external_id": i, "email": f"{i}@example.org"} for i in ids]
    phones = [{"external_id": i, "phone": f"+1202555{n:04d}"} for n, i in enumerate(ids)]
    async with pool.connection() as held, held.transaction():
        await db.execute(held, "recipients_bulk_create", {"rows": Jsonb(emails)})
        second = asyncio.create_task(
            api.post("/api/recipients/bulk", headers=ADMIN, json={"recipients": phones})
        )

        async def waiting_on_a_lock() -> bool:
            rows = await query(
                pool,
                "SELECT count(*) AS n FROM pg_stat_activity"
                " WHERE datname = current_database() AND wait_event_type = 'Lock'",
            )
            return bool(rows[0]["n"])

        await wait_until(waiting_on_a_lock)  # the second is inside, blocked on the first
        assert not second.done()
        await db.execute(held, "recipients_bulk_update", {"rows": Jsonb(emails)})
    answer = await second
    assert (answer.status_code, answer.json()) == (200, {"created": 0, "updated": 300})
    rows = await query(
        pool,
        "SELECT count(*) AS n FROM recipients WHERE external_id = ANY(%s)"
        " AND email IS NOT NULL AND phone IS NOT NULL",
        (ids,),
    )
    assert rows[0]["n"] == 300
    # and free-running pairs, both orders, several rounds
    for _ in range(3):
        more = [unique("race2") for _ in range(100)]
        a = [{"external_id": i, "email": f"{i}@example.org"} for i in more]
        b = [{"external_id": i, "phone": f"+1202556{n:04d}"} for n, i in enumerate(reversed(more))]
        results = await asyncio.gather(
            api.post("/api/recipients/bulk", headers=ADMIN, json={"recipients": a}),
            api.post("/api/recipients/bulk", headers=ADMIN, json={"recipients": b}),
        )
        assert sum(r.json()["created"] for r in results) == 100
        rows = await query(
            pool,
            "SELECT count(*) AS n FROM recipients WHERE external_id = ANY(%s)"
            " AND email IS NOT NULL AND phone IS NOT NULL",
            (more,),
        )
        assert rows[0]["n"] == 100
