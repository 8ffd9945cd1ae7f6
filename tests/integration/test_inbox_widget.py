"""What the drop-in widget needs from the server: the script itself at
/static/postbell-inbox.js, and CORS for the page's origin on the inbox endpoints and
the stream (preflights included, with the headers the widget sends)."""

from __future__ import annotations

import httpx

from postbell.app.api.main import create_app
from postbell.app.core import db, tokens
from postbell.app.core.settings import Settings
from tests.conftest import INBOX_SECRET, live_server, make_settings, unique

PAGE = "https://community.example.org"


def cors_settings(settings: Settings) -> Settings:
    assert settings.database_url
    return make_settings(settings.database_url, POSTBELL_CORS_ORIGINS=f"{PAGE},https://b.example")


async def test_the_widget_script_is_served(api: httpx.AsyncClient) -> None:
    """GET /static/postbell-inbox.js answers the web component, as JavaScript, with no
    credential (a page loads it with a plain script tag)."""
    response = await api.get("/static/postbell-inbox.js")
    assert response.status_code == 200
    assert response.headers["content-type"].split(";")[0] in (
        "text/javascript",
        "application/javascript",
    )
    assert 'customElements.define("postbell-inbox"' in response.text


async def test_cors_preflights_and_answers_for_the_widgets_calls(
    settings: Settings, pool: db.Pool
) -> None:
    """A page on an allowed origin may list, mark and stream with a recipient token: each
    preflight allows the method and the headers the widget sends (Authorization,
    Content-Type, Last-Event-ID), and each answer carries the page's origin. Another
    origin gets no CORS headers (the browser refuses the answer to it)."""
    rid = unique("cors")
    token = tokens.recipient_token(INBOX_SECRET, rid)
    async with (
        live_server(create_app(cors_settings(settings), pool=pool)) as base,
        httpx.AsyncClient(base_url=base, timeout=30) as client,
    ):
        for method, path, headers in (
            ("GET", f"/api/inbox/{rid}", "authorization"),
            ("POST", f"/api/inbox/{rid}/read", "authorization,content-type"),
            ("POST", f"/api/inbox/{rid}/archive", "authorization,content-type"),
            ("GET", f"/api/inbox/{rid}/stream", "last-event-id"),
            ("GET", "/static/postbell-inbox.js", ""),
        ):
            preflight = await client.options(
                path,
                headers={
                    "Origin": PAGE,
                    "Access-Control-Request-Method": method,
                    "Access-Control-Request-Headers": headers,
                },
            )
            assert preflight.status_code in (200, 204), (path, preflight.text)
            assert preflight.headers["access-control-allow-origin"] == PAGE
            assert method in preflight.headers["access-control-allow-methods"]
            allowed = preflight.headers.get("access-control-allow-headers", "").lower()
            for header in filter(None, headers.split(",")):
                assert header in allowed, (path, header, allowed)
        auth = {"Origin": PAGE, "Authorization": f"Bearer {token}"}
        listing = await client.get(f"/api/inbox/{rid}", headers=auth)
        assert listing.status_code == 200
        assert listing.headers["access-control-allow-origin"] == PAGE
        marked = await client.post(f"/api/inbox/{rid}/read", headers=auth, json={"all": True})
        assert marked.status_code == 200
        assert marked.headers["access-control-allow-origin"] == PAGE
        script = await client.get("/static/postbell-inbox.js", headers={"Origin": PAGE})
        assert script.headers["access-control-allow-origin"] == PAGE
        # The stream, as EventSource opens it: the token in the query, no credentials mode.
        async with client.stream(
            "GET", f"/api/inbox/{rid}/stream?token={token}", headers={"Origin": PAGE}
        ) as stream:
            assert stream.status_code == 200
            assert stream.headers["access-control-allow-origin"] == PAGE
        evil = await client.get(
            f"/api/inbox/{rid}", headers={**auth, "Origin": "https://evil.example"}
        )
        assert "access-control-allow-origin" not in evil.headers
        refused = await client.options(
            f"/api/inbox/{rid}",
            headers={"Origin": "https://evil.example", "Access-Control-Request-Method": "GET"},
        )
        assert "access-control-allow-origin" not in refused.headers
