"""PUT/GET/DELETE /api/recipients/{external_id}."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from tests.conftest import ADMIN, query, unique


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
