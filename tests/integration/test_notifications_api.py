"""POST /api/notifications: validation, the one-transaction outbox, reading back."""

from __future__ import annotations

import datetime as dt
from typing import Any

import httpx
import psycopg
import pytest

from postbell.app.api.main import create_app
from postbell.app.core import db
from tests.conftest import ADMIN, api_client, make_settings, query, unique


async def count_notifications(pool: db.Pool) -> int:
    rows = await query(pool, "SELECT count(*) AS n FROM notifications")
    return int(rows[0]["n"])


def future(**delta: float) -> str:
    return (dt.datetime.now(dt.UTC) + dt.timedelta(**delta)).isoformat()


BAD_REQUESTS: list[tuple[str, Any, int, str | None]] = [
    ("empty to", {"to": [], "message": "hi"}, 422, "to"),
    ("no to", {"message": "hi"}, 422, "to"),
    ("no message", {"to": ["a"]}, 422, "message"),
    ("blank message", {"to": ["a"], "message": "   "}, 422, "message"),
    ("message and body", {"to": ["a"], "message": "x", "body": "y"}, 422, "body"),
    ("unknown channel", {"to": ["a"], "message": "hi", "channels": ["FAX"]}, 422, "channels[0]"),
    (
        "lower-case channel",
        {"to": ["a"], "message": "hi", "channels": ["email"]},
        422,
        "channels[0]",
    ),
    ("empty channels", {"to": ["a"], "message": "hi", "channels": []}, 422, "channels"),
    ("oversized message", {"to": ["a"], "message": "x" * 20_001}, 422, "message"),
    ("too many recipients", {"to": [f"u{i}" for i in range(10_001)], "message": "hi"}, 422, "to"),
    ("empty recipient id", {"to": [""], "message": "hi"}, 422, "to[0]"),
    ("recipient id not a string", {"to": [7], "message": "hi"}, 422, "to[0]"),
    # Postgres text cannot hold NUL (it was a 500); ids are printable (the CLI's too).
    ("NUL in a recipient id", {"to": ["a", "b\x00c"], "message": "hi"}, 422, "to[1]"),
    ("line break in a recipient id", {"to": ["a\nb"], "message": "hi"}, 422, "to[0]"),
    ("escape in a recipient id", {"to": ["a\x1b[31m"], "message": "hi"}, 422, "to[0]"),
    ("NUL in the message", {"to": ["a"], "message": "x\x00y"}, 422, "message"),
    ("NUL in the body", {"to": ["a"], "body": "x\x00y"}, 422, "body"),
    ("NUL in the title", {"to": ["a"], "message": "x", "title": "\x00"}, 422, "title"),
    ("unknown field", {"to": ["a"], "message": "hi", "colour": "red"}, 422, "colour"),
    ("bad priority", {"to": ["a"], "message": "hi", "priority": "asap"}, 422, "priority"),
    (
        "send_at in the past",
        {"to": ["a"], "message": "hi", "send_at": "2001-01-01T00:00:00Z"},
        422,
        "send_at",
    ),
    (
        "send_at without zone",
        {"to": ["a"], "message": "hi", "send_at": "2099-01-01T00:00:00"},
        422,
        "send_at",
    ),
    (
        "send_at beyond horizon",
        {"to": ["a"], "message": "hi", "send_at": future(days=400)},
        422,
        "send_at",
    ),
    ("send_at not a time", {"to": ["a"], "message": "hi", "send_at": "tomorrow"}, 422, "send_at"),
    (
        "expires before send",
        {"to": ["a"], "message": "hi", "send_at": future(hours=2), "expires_at": future(hours=1)},
        422,
        "expires_at",
    ),
    (
        "action_url not http",
        {"to": ["a"], "message": "hi", "action_url": "javascript:alert(1)"},
        422,
        "action_url",
    ),
    (
        "metadata too big",
        {"to": ["a"], "message": "hi", "metadata": {"x": "y" * 20_000}},
        422,
        "metadata",
    ),
    ("body is a list", [1, 2], 422, None),
    ("body is a string", "hello", 422, None),
]


@pytest.mark.parametrize(
    ("case", "body", "status", "field"), BAD_REQUESTS, ids=[c[0] for c in BAD_REQUESTS]
)
async def test_bad_request_is_4xx_naming_the_field_and_writes_nothing(
    api: httpx.AsyncClient, pool: db.Pool, case: str, body: Any, status: int, field: str | None
) -> None:
    before = await count_notifications(pool)
    response = await api.post("/api/notifications", headers=ADMIN, json=body)
    assert response.status_code == status, response.text
    assert response.json()["field"] == field, response.json()
    assert await count_notifications(pool) == before


@pytest.mark.parametrize(
    ("raw", "error"),
    [
        (b"{", "malformed_json"),
        (b'{"to": ["a"], "message": }', "malformed_json"),
        (b"\xff\xfe", "malformed_json"),
        (b"", "missing_body"),
    ],
)
async def test_malformed_json_is_400(
    api: httpx.AsyncClient, pool: db.Pool, raw: bytes, error: str
) -> None:
    before = await count_notifications(pool)
    response = await api.post("/api/notifications", headers=ADMIN, content=raw)
    assert response.status_code == 400, response.text
    assert response.json()["error"] == error
    assert await count_notifications(pool) == before


async def test_huge_body_is_413(api: httpx.AsyncClient) -> None:
    response = await api.post("/api/notifications", headers=ADMIN, content=b"x" * (9 * 1024 * 1024))
    assert (response.status_code, response.json()["error"]) == (413, "body_too_large")


async def test_accepted_notification_has_its_route_job(fresh_database_url: str) -> None:
    """The outbox: the notification and its routing job exist together (no worker here)."""
    settings = make_settings(fresh_database_url)
    async with api_client(create_app(settings)) as client:
        ids = []
        for n in range(5):
            response = await client.post(
                "/api/notifications",
                headers=ADMIN,
                json={"to": ["user-1"], "message": f"hello {n}", "priority": "high"},
            )
            assert response.status_code == 202
            assert response.json()["status"] == "queued"
            ids.append(response.json()["id"])
    with psycopg.connect(fresh_database_url) as conn:
        rows = conn.execute(
            "SELECT n.id::text, j.queue_name, j.task_name, j.priority, j.status::text"
            "  FROM postbell.notifications n"
            "  JOIN postbell.procrastinate_jobs j ON j.args ->> 'notification_id' = n.id::text"
            " ORDER BY n.created_at"
        ).fetchall()
    assert rows == [(i, "route", "postbell.route", 20, "todo") for i in ids]


async def test_failed_enqueue_leaves_no_notification(fresh_database_url: str) -> None:
    """If the routing job cannot be written, the notification is not written either."""
    with psycopg.connect(fresh_database_url, autocommit=True) as conn:
        conn.execute(
            "CREATE FUNCTION postbell.refuse() RETURNS trigger LANGUAGE plpgsql AS"
            " $$ BEGIN RAISE EXCEPTION 'queue is read-only'; END $$;"
            " CREATE TRIGGER refuse BEFORE INSERT ON postbell.procrastinate_jobs"
            " FOR EACH ROW EXECUTE FUNCTION postbell.refuse()"
        )
    async with api_client(create_app(make_settings(fresh_database_url))) as client:
        response = await client.post(
            "/api/notifications", headers=ADMIN, json={"to": ["a"], "message": "hi"}
        )
    assert response.status_code == 500
    assert response.json() == {
        "error": "internal_error",
        "detail": "an internal error occurred",
        "field": None,
    }
    with psycopg.connect(fresh_database_url) as conn:
        assert conn.execute("SELECT count(*) FROM postbell.notifications").fetchone() == (0,)


async def test_rollback_of_the_callers_transaction_leaves_nothing(pool: db.Pool) -> None:
    """Enqueue inside a transaction that rolls back: no notification, no job."""
    marker = unique("rollback")
    async with pool.connection() as conn:
        try:
            async with conn.transaction():
                await db.fetch_one(
                    conn,
                    "notifications_enqueue",
                    {
                        "recipients": [marker],
                        "topic": None,
                        "title": None,
                        "body": "x",
                        "action_url": None,
                        "metadata": None,
                        "channels": None,
                        "priority": "normal",
                        "category": None,
                        "fallback": None,
                        "send_at": None,
                        "expires_at": None,
                        "idempotency_scope": None,
                        "idempotency_key": None,
                        "request_hash": None,
                        "idempotency_ttl_hours": 24,
                        "wakeup": True,
                        "template_key": None,
                        "template_version": None,
                        "template_data": None,
                    },
                )
                raise RuntimeError("the host app's own write failed")
        except RuntimeError:
            pass
    assert (
        await query(pool, "SELECT 1 FROM notifications WHERE %s = ANY(recipients)", (marker,)) == []
    )


async def test_get_unknown_notification_is_404(api: httpx.AsyncClient) -> None:
    response = await api.get(
        "/api/notifications/6f1c2f53-3b2e-4c54-9a53-0c4bb6f2a111", headers=ADMIN
    )
    assert (response.status_code, response.json()["error"]) == (404, "not_found")


async def test_an_idempotency_key_is_1_to_255_characters(api: httpx.AsyncClient) -> None:
    body = {"to": [unique("idem-len")], "message": "hi"}
    longest = unique("k").ljust(255, "k")
    accepted = await api.post(
        "/api/notifications", headers={**ADMIN, "Idempotency-Key": longest}, json=body
    )
    assert accepted.status_code == 202, accepted.text
    refused = await api.post(
        "/api/notifications", headers={**ADMIN, "Idempotency-Key": longest + "k"}, json=body
    )
    assert refused.status_code == 422 and refused.json()["field"] == "Idempotency-Key"
    assert refused.json()["detail"] == "Idempotency-Key must be 1 to 255 characters"
    # the shortest: one character (one no other test uses as a key)
    shortest = "~"
    one = await api.post(
        "/api/notifications", headers={**ADMIN, "Idempotency-Key": shortest}, json=body
    )
    assert one.status_code == 202, one.text
