"""Hostile and careless input: each member of a class gets a clear 4xx naming its
field and changes nothing; poison that was stored anyway (before a rule existed, or
written by hand) harms only its own delivery, never the batch it rides in."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from postbell.app.api.inbox.routes import _event_id
from postbell.app.api.main import create_app
from postbell.app.core import db
from postbell.app.core.settings import Settings
from tests.conftest import (
    ADMIN,
    api_client,
    live_server,
    make_settings,
    query,
    running_worker,
    unique,
    wait_until,
)
from tests.peers.smtp import SmtpPeer

CONTROL = ["\n", "\r\n", "\x00", "\x1b", "\x7f", "\x0b"]


async def _count(pool: db.Pool, table: str) -> int:
    rows = await query(pool, f"SELECT count(*) AS n FROM {table}")
    return int(rows[0]["n"])


NOTIFICATION_POISON: list[tuple[dict[str, Any], str]] = [
    ({"expires_at": "9999-12-31T23:59:59-23:59"}, "expires_at"),
    ({"expires_at": "0001-01-01T00:00:00Z"}, "expires_at"),
    ({"expires_at": "2999-01-01T00:00:00Z"}, "expires_at"),
    ({"send_at": "9999-12-31T23:59:59-23:59"}, "send_at"),
    ({"send_at": "2020-01-01T00:00:00Z"}, "send_at"),
    ({"title": "x\nX-Evil: 1"}, "title"),
    ({"title": "x\r\nBcc: evil@example.org"}, "title"),
    ({"title": "a\x00b"}, "title"),
    ({"message": "a\x00b"}, "message"),
    ({"message": "bell \x07"}, "message"),
    ({"action_url": "https://example.org/\r\nX: 1"}, "action_url"),
    ({"action_url": "javascript:alert(1)"}, "action_url"),
    ({"metadata": {"k": "a\u0000"}}, "metadata"),
    ({"metadata": {"k\u0000": 1}}, "metadata"),
    ({"category": "a b"}, "category"),
    ({"channels": ["email"]}, "channels[0]"),
    ({"channels": []}, "channels"),
    ({"priority": "URGENT"}, "priority"),
    ({"fallback": {"PUSH": "FAX"}}, "fallback"),
    ({"to": ["a\nb"]}, "to[0]"),
    ({"to": ["x" * 256]}, "to[0]"),
    ({"to": []}, "to"),
]


@pytest.mark.parametrize(("change", "field"), NOTIFICATION_POISON)
async def test_poison_notifications_are_refused_and_write_nothing(
    api: httpx.AsyncClient, pool: db.Pool, change: dict[str, Any], field: str
) -> None:
    body = {"to": [unique("poison")], "message": "ok", "channels": ["IN_APP"], **change}
    before = await _count(pool, "notifications")
    response = await api.post("/api/notifications", headers=ADMIN, json=body)
    assert response.status_code == 422, response.text
    answer = response.json()
    assert (answer["error"], answer["field"]) == ("invalid", field), answer
    assert await _count(pool, "notifications") == before


async def test_enum_errors_name_the_valid_values(api: httpx.AsyncClient) -> None:
    response = await api.post(
        "/api/notifications",
        headers=ADMIN,
        json={"to": ["x"], "message": "m", "channels": ["email"]},
    )
    detail = response.json()["detail"]
    assert "did you mean 'EMAIL'" in detail and "IN_APP, EMAIL, PUSH" in detail


@pytest.mark.parametrize("char", CONTROL)
@pytest.mark.parametrize(
    "field", ["name", "email", "phone", "locale", "timezone", "webhook_secret"]
)
async def test_control_characters_never_reach_a_recipient_field(
    api: httpx.AsyncClient, field: str, char: str
) -> None:
    """Every recipient field that can reach a header (To:, a signature, a URL) is one
    line: a name like "Victim\\r\\nBcc: x@evil.example" is refused, nothing stored."""
    rid = unique("inject")
    value = {"name": "Victim{c}Bcc: x@evil.example", "email": "a{c}@example.org"}.get(
        field, "x{c}y"
    ).format(c=char)
    response = await api.put(f"/api/recipients/{rid}", headers=ADMIN, json={field: value})
    assert (response.status_code, response.json()["field"]) == (422, field), response.text
    assert (await api.get(f"/api/recipients/{rid}", headers=ADMIN)).status_code == 404


@pytest.mark.parametrize(
    ("method", "path", "field"),
    [
        ("GET", "/api/recipients/a%00b", "recipient"),
        ("PUT", "/api/recipients/a%0Ab", "recipient"),
        ("GET", f"/api/recipients/{'x' * 256}", "recipient"),
        ("GET", "/api/inbox/u1?category=%00", "category"),
        ("GET", "/api/inbox/u1?cursor=%00", "cursor"),
        ("GET", "/api/topics/bad%20key/subscribers", "key"),
        ("POST", f"/api/dead-letters/{2**63}/retry", "delivery_id"),
        ("POST", "/api/dead-letters/-1/retry", "delivery_id"),
        ("GET", "/api/notifications/00000000-0000-0000-0000-000000000000?limit=100000", "limit"),
        ("DELETE", "/api/recipients/u1/devices/a%00b", "token"),
    ],
)
async def test_bad_path_and_query_parameters_are_400_naming_them(
    api: httpx.AsyncClient, method: str, path: str, field: str
) -> None:
    response = await api.request(method, path, headers=ADMIN, json={} if method == "PUT" else None)
    body = response.json()
    assert (response.status_code, body["error"], body["field"]) == (
        400,
        "invalid_parameter",
        field,
    ), body


@pytest.mark.parametrize(
    "path",
    ["/api/notifications", "/api/recipients/bulk", "/api/inbox/u1/read", "/api/categories/c"],
)
async def test_json_nested_100000_deep_is_400(api: httpx.AsyncClient, path: str) -> None:
    deep = b'{"metadata":' + b"[" * 100_000 + b"]" * 100_000 + b"}"
    method = "PUT" if path.startswith("/api/categories") else "POST"
    response = await api.request(method, path, headers=ADMIN, content=deep)
    assert (response.status_code, response.json()["error"]) == (400, "malformed_json")


@pytest.mark.parametrize(
    ("rule", "field"),
    [
        ({"limit": 1, "per": "9999999999999d"}, "rate_limits.EMAIL.per"),
        ({"limit": 1, "per": "367d"}, "rate_limits.EMAIL.per"),
        ({"limit": 0, "per": "1h"}, "rate_limits.EMAIL.limit"),
        ({"limit": 10**12, "per": "1h"}, "rate_limits.EMAIL.limit"),
        ({"limit": 1, "per": "1h\n"}, "rate_limits.EMAIL.per"),
    ],
)
async def test_category_limits_have_bounds(
    api: httpx.AsyncClient, rule: dict[str, Any], field: str
) -> None:
    key = unique("cat")
    response = await api.put(
        f"/api/categories/{key}", headers=ADMIN, json={"rate_limits": {"EMAIL": rule}}
    )
    assert (response.status_code, response.json()["field"]) == (422, field), response.text
    assert (await api.get(f"/api/categories/{key}", headers=ADMIN)).status_code == 404


async def test_inbox_ids_out_of_range(api: httpx.AsyncClient) -> None:
    marked = await api.post(
        f"/api/inbox/{unique('range')}/read", headers=ADMIN, json={"ids": [2**63]}
    )
    assert (marked.status_code, marked.json()["field"]) == (422, "ids[0]")


@pytest.mark.parametrize("value", ["²", "١٢٣", "9" * 30, "-5", "12x", ""])
def test_a_last_event_id_it_did_not_hand_out_means_from_now(value: str) -> None:
    assert _event_id(value) is None


async def test_a_non_ascii_last_event_id_opens_the_stream(
    settings: Settings, pool: db.Pool
) -> None:
    """Browsers send back whatever they got; bytes that are no event id are no 500."""
    async with live_server(create_app(settings, pool=pool)) as base, httpx.AsyncClient() as client:
        headers = {**ADMIN, "Last-Event-ID": "²".encode()}
        async with client.stream(
            "GET", f"{base}/api/inbox/{unique('sse')}/stream", headers=headers
        ) as stream:
            assert stream.status_code == 200
            async for chunk in stream.aiter_text():
                assert "postbell inbox stream" in chunk
                break


async def test_stored_poison_harms_only_its_own_delivery(
    fresh_database_url: str, smtp: SmtpPeer
) -> None:
    """Rows written before the rules existed (or by hand): an 'infinity' expiry, a title
    with a header in it, a recipient name with a Bcc in it, a rate-limit window of
    ten trillion seconds. Every delivery of the batch still ends recorded, the other
    recipients' emails are sent, no header is injected, and the API reads it all."""
    settings = make_settings(fresh_database_url, **smtp.env())
    cat = unique("poisoncat")
    async with api_client(create_app(settings)) as api:
        assert (
            await api.put(
                f"/api/categories/{cat}",
                headers=ADMIN,
                json={"rate_limits": {"EMAIL": {"limit": 100, "per": "1h"}}},
            )
        ).status_code == 200
        ids = [unique("pz") for _ in range(30)]
        bad_name = unique("victim")
        async with await db.connect(fresh_database_url) as conn:
            await conn.execute(
                "ALTER TABLE notifications DROP CONSTRAINT notifications_times_in_range"
            )
            await conn.execute(
                "UPDATE categories SET rate_limits = jsonb_set(rate_limits, '{EMAIL,per_seconds}',"
                " '10000000000000') WHERE key = %s",
                (cat,),
            )
            await conn.execute(
                "INSERT INTO recipients (external_id, email, name)"
                " SELECT x, x || '@poison.example.org', NULL FROM unnest(%s::text[]) AS x",
                (ids,),
            )
            await conn.execute(
                "INSERT INTO recipients (external_id, email, name) VALUES (%s, %s, %s)",
                (bad_name, f"{bad_name}@poison.example.org", "Victim\r\nBcc: evil@evil.example"),
            )
            cursor = await conn.execute(
                "SELECT id FROM enqueue_notification(%s, NULL, %s, 'poisoned', NULL, NULL,"
                " ARRAY['EMAIL'], 'normal', %s, NULL, NULL, 'infinity', NULL, NULL, NULL,"
                " interval '1 day')",
                ([*ids, bad_name], "x\nX-Evil: 1", cat),
            )
            row = await cursor.fetchone()
            assert row is not None
            nid = str(row["id"])
        async with running_worker(settings):

            async def settled() -> dict[str, Any] | None:
                response = await api.get(f"/api/notifications/{nid}", headers=ADMIN)
                assert response.status_code == 200, response.text
                body = response.json()
                return body if body["delivery_counts"] == {"sent": 31} else None

            body = await wait_until(settled, timeout=30)
    assert body["expires_at"].startswith("9999-12-31T23:59:59")
    received = [m for m in smtp.received if any("poison.example.org" in r for r in m.rcpt_tos)]
    mine = [m for m in received if m.rcpt_tos[0].split("@")[0] in {*ids, bad_name}]
    assert len(mine) == 31
    for message in mine:
        assert message.rcpt_tos == [message.rcpt_tos[0]]  # no smuggled recipient
        assert message.message["X-Evil"] is None and message.message["Bcc"] is None
        assert message.message["Subject"] == "x X-Evil: 1"
    (victim,) = [m for m in mine if m.rcpt_tos[0].startswith(bad_name)]
    assert victim.message["To"].addresses[0].display_name == "Victim Bcc: evil@evil.example"
