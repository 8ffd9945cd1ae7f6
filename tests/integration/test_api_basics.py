"""Health, readiness, OpenAPI, authentication and the one error shape."""

from __future__ import annotations

from typing import Any

import httpx

from postbell.app.api.main import create_app
from tests.conftest import ADMIN, api_client, create_database, drop_database, make_settings, unique


async def test_health_and_ready_need_no_credential(api: httpx.AsyncClient) -> None:
    assert (await api.get("/health")).json() == {"status": "ok"}
    ready = await api.get("/ready")
    assert (ready.status_code, ready.json()) == (200, {"status": "ready"})


async def test_ready_reports_pending_migrations(admin_url: str) -> None:
    name = unique("pbtest_empty").replace("-", "_")
    url = create_database(admin_url, name)
    try:
        async with api_client(create_app(make_settings(url))) as client:
            response = await client.get("/ready")
        assert response.status_code == 503
        body = response.json()
        assert body["error"] == "not_ready" and "0001_procrastinate" in body["detail"]
    finally:
        drop_database(admin_url, name)


async def test_openapi_schema_is_served(api: httpx.AsyncClient) -> None:
    schema = (await api.get("/schema/openapi.json")).json()
    assert "/api/notifications" in schema["paths"]
    assert "/api/inbox/{recipient}" in schema["paths"]


async def test_missing_or_wrong_key_is_401(api: httpx.AsyncClient) -> None:
    for headers in (
        {},
        {"Authorization": "Bearer nope"},
        {"Authorization": "Basic abc"},
        {"Authorization": "Bearer pb_not-a-real-key-at-all"},
    ):
        response = await api.get("/api/recipients/someone", headers=headers)
        assert response.status_code == 401, headers
        assert response.json()["error"] == "unauthorized"


async def test_every_error_has_one_shape(api: httpx.AsyncClient) -> None:
    cases = [
        (await api.get("/nowhere"), 404),
        (await api.delete("/health"), 405),
        (
            await api.get("/api/notifications/00000000-0000-0000-0000-000000000000", headers=ADMIN),
            404,
        ),
        (await api.post("/api/notifications", headers=ADMIN, content=b"{"), 400),
        (await api.get("/api/recipients/nobody-" + unique(), headers=ADMIN), 404),
        (await api.get("/api/inbox/x", headers=ADMIN, params={"limit": "lots"}), 400),
    ]
    for response, status in cases:
        assert response.status_code == status, response.text
        body = response.json()
        assert set(body) == {"error", "detail", "field"}, body
        assert isinstance(body["detail"], str) and body["detail"]


async def test_api_key_from_the_cli_store_authenticates(api: httpx.AsyncClient, pool: Any) -> None:
    """Keys are stored hashed; a created key works, a revoked one does not (after the cache)."""
    from postbell.app.core import db, keys

    async with pool.connection() as conn:
        _, key = await keys.create_key(conn, "send", "test")
        stored = await db.fetch_all(conn, "api_keys_list")
    assert all(key not in str(row) for row in stored)
    # what `postbell keys list` shows to tell keys apart: "pb_" and five characters
    [row] = [r for r in stored if r["name"] == "test" and r["prefix"] == key[:8]]
    response = await api.get("/api/recipients/ghost", headers={"Authorization": f"Bearer {key}"})
    assert response.status_code == 404  # authenticated; the recipient just doesn't exist
    async with pool.connection() as conn:  # storing it again answers the same key's id
        assert await keys.store_key(conn, key, "send", "test") == row["id"]


async def test_docs_page_and_api_index_work_offline(api: httpx.AsyncClient) -> None:
    """/schema loads Swagger UI from the project's own /static (no CDN), and every asset
    it names answers; GET /api lists the endpoints without a credential."""
    import re

    page = await api.get("/schema")
    assert page.status_code == 200
    assets = re.findall(r"""(?:src|href)=['"]([^'"]+)['"]""", page.text)
    assert assets and all(a.startswith("/static/") for a in assets), assets
    for asset in assets:
        assert (await api.get(asset)).status_code == 200, asset
    index = await api.get("/api")
    assert index.status_code == 200
    assert "POST /api/notifications" in index.json()["endpoints"]
    assert index.json()["docs"] == "/schema"


async def test_recipient_token_refusals_say_what_is_wrong(database_url: str) -> None:
    """Without POSTBELL_INBOX_SECRET the 403 says so; a token for someone else says whose
    inbox it does not open; an unknown credential says what a credential must be."""
    from postbell.app.core.tokens import recipient_token

    token = recipient_token("some-secret", "user-1")
    off = make_settings(database_url, POSTBELL_INBOX_SECRET="")
    async with api_client(create_app(off)) as client:
        refused = await client.get(
            "/api/inbox/user-1", headers={"Authorization": f"Bearer {token}"}
        )
    assert refused.status_code == 403 and "POSTBELL_INBOX_SECRET" in refused.json()["detail"]
    async with api_client(create_app(make_settings(database_url))) as client:
        wrong = await client.get("/api/inbox/user-1", headers={"Authorization": f"Bearer {token}"})
        unknown = await client.get("/api/inbox/user-1", headers={"Authorization": "Bearer nope"})
    assert wrong.status_code == 403 and "'user-1'" in wrong.json()["detail"]
    assert unknown.status_code == 401 and "API key" in unknown.json()["detail"]


async def test_every_operation_declares_its_errors_with_the_one_error_body(
    api: httpx.AsyncClient,
) -> None:
    """Generated clients see what the API answers: every /api operation declares 500 and
    503, the authenticated ones 401/403/429, those with a body 400/413/422, each with
    the ErrorBody schema (whose `error` enum is the vocabulary of codes)."""
    from postbell.app.core.errors import CODES

    schema = (await api.get("/schema/openapi.json")).json()
    assert schema["components"]["schemas"]["ErrorBody"]["properties"]["error"]["enum"] == list(
        CODES
    )
    for path, item in schema["paths"].items():
        for method, operation in item.items():
            if method not in ("get", "post", "put", "delete"):
                continue
            declared = set(operation["responses"])
            expected = {"500", "503"}
            if path.startswith("/api/") and not path.startswith(
                ("/api/callbacks", "/api/unsubscribe")
            ):
                expected |= {"401", "403", "429"}
            if method in ("post", "put"):
                expected |= {"400", "413", "422"}
            assert expected <= declared, (method, path, sorted(declared))
            for status, response in operation["responses"].items():
                if int(status) >= 400:
                    ref = response["content"]["application/json"]["schema"]["$ref"]
                    assert ref.endswith("/ErrorBody"), (method, path, status)


async def test_options_needs_no_credential_and_is_no_server_error(api: httpx.AsyncClient) -> None:
    """OPTIONS carries no credential (CORS preflights never do): the guards let it be."""
    for path in ("/api/categories", "/api/inbox/u1", "/api/dead-letters/retry"):
        response = await api.options(path)
        assert response.status_code == 204, (path, response.text)
        assert "GET" in response.headers["allow"] or "POST" in response.headers["allow"]


async def test_unsubscribe_without_or_with_a_bad_token(api: httpx.AsyncClient) -> None:
    """No token: 400 naming it (it was "not valid JSON"); a token that does not verify:
    the page says so with 403 instead of showing a button, and POST refuses it."""
    for method in ("GET", "POST"):
        missing = await api.request(method, "/api/unsubscribe")
        assert (missing.status_code, missing.json()["error"], missing.json()["field"]) == (
            400,
            "invalid_parameter",
            "token",
        )
    page = await api.get("/api/unsubscribe", params={"token": "garbage.garbage"})
    assert page.status_code == 403 and "not valid" in page.text and "<button" not in page.text
    refused = await api.post("/api/unsubscribe", params={"token": "garbage.garbage"})
    assert refused.status_code == 403
