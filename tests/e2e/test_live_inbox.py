"""Live inboxes across two API processes: each process holds one LISTEN connection
and fans events out to its own clients; a change made through one reaches clients of
the other. CORS lets a front-end on another origin use the inbox endpoints."""

from __future__ import annotations

import asyncio

import httpx
import psycopg

from postbell.app.core import tokens
from tests.conftest import ADMIN_KEY, INBOX_SECRET
from tests.e2e.procs import background, env, wait_http
from tests.peers.net import free_port
from tests.peers.sse import sse

HEADERS = {"Authorization": f"Bearer {ADMIN_KEY}"}
ORIGIN = "https://community.example.org"


def token(rid: str) -> str:
    return tokens.recipient_token(INBOX_SECRET, rid)


async def test_two_api_processes_several_clients(fresh_database_url: str) -> None:
    ports = [free_port(), free_port()]
    common = {
        "DATABASE_URL": fresh_database_url,
        "POSTBELL_ADMIN_KEY": ADMIN_KEY,
        "POSTBELL_INBOX_SECRET": INBOX_SECRET,
        "POSTBELL_POLL_INTERVAL": "0.2",
        "POSTBELL_HOST": "127.0.0.1",
        "POSTBELL_CORS_ORIGINS": ORIGIN,
    }
    with (
        background("serve", environ=env(PORT=str(ports[0]), **common)),
        background("serve", environ=env(PORT=str(ports[1]), **common)),
        background("worker", environ=env(**common)),
    ):
        a, b = (f"http://127.0.0.1:{p}" for p in ports)
        for base in (a, b):
            await asyncio.to_thread(wait_http, f"{base}/health")
        async with httpx.AsyncClient(base_url=a) as on_a, httpx.AsyncClient(base_url=b) as on_b:
            streams = [
                sse(on_a, f"/api/inbox/ann/stream?token={token('ann')}"),
                sse(on_a, f"/api/inbox/bob/stream?token={token('bob')}"),
                sse(on_b, f"/api/inbox/ann/stream?token={token('ann')}"),
                sse(on_b, f"/api/inbox/cat/stream?token={token('cat')}"),
            ]
            ann_a, bob_a, ann_b, cat_b = [await s.__aenter__() for s in streams]
            try:
                for stream in (ann_a, bob_a, ann_b, cat_b):
                    await stream.wait_for("counts")
                # Four browsers, two processes: two LISTEN connections, not four.
                with psycopg.connect(fresh_database_url) as conn:
                    (listening,) = conn.execute(
                        "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'postbell-inbox-listen' AND datname = current_database()"
                    ).fetchone()
                assert listening == 2
                response = await on_b.post(
                    "/api/notifications",
                    headers=HEADERS,
                    json={"to": ["ann", "bob"], "message": "Community meet-up"},
                )
                assert response.status_code == 202
                for stream in (ann_a, bob_a, ann_b):
                    (event,) = await stream.wait_for("notification")
                    assert event.json()["body"] == "Community meet-up"
                item_id = (await ann_a.wait_for("notification"))[0].json()["id"]
                # Read on process B: the client on process A hears it.
                marked = await on_b.post(
                    "/api/inbox/ann/read",
                    headers={"Authorization": f"Bearer {token('ann')}"},
                    json={"ids": [item_id]},
                )
                assert marked.json()["unread_count"] == 0
                (update,) = await ann_a.wait_for("update")
                assert update.json() == {"action": "read", "ids": [item_id]}
                assert (await ann_a.wait_for("counts", 3))[-1].json() == {
                    "unread_count": 0,
                    "unseen_count": 0,
                }
                # Nothing for a recipient not addressed: cat's first item is the one
                # sent to cat afterwards (a stream's events arrive in order).
                for_cat = await on_b.post(
                    "/api/notifications",
                    headers=HEADERS,
                    json={"to": ["cat"], "message": "Only cat"},
                )
                assert for_cat.status_code == 202
                (first,) = await cat_b.wait_for("notification")
                assert first.json()["body"] == "Only cat"
            finally:
                for s in streams:
                    await s.__aexit__(None, None, None)
            # CORS: the preflight and the answer carry the allowed origin.
            preflight = await on_a.options(
                "/api/inbox/ann",
                headers={
                    "Origin": ORIGIN,
                    "Access-Control-Request-Method": "GET",
                    "Access-Control-Request-Headers": "authorization",
                },
            )
            assert preflight.status_code in (200, 204)
            assert preflight.headers["access-control-allow-origin"] == ORIGIN
            got = await on_a.get(
                "/api/inbox/ann",
                headers={"Origin": ORIGIN, "Authorization": f"Bearer {token('ann')}"},
            )
            assert got.headers["access-control-allow-origin"] == ORIGIN
            other = await on_a.get(
                "/api/inbox/ann",
                headers={
                    "Origin": "https://evil.example",
                    "Authorization": f"Bearer {token('ann')}",
                },
            )
            assert "access-control-allow-origin" not in other.headers
    with psycopg.connect(fresh_database_url) as conn:
        (listeners,) = conn.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'postbell-inbox-listen' AND datname = current_database()"
        ).fetchone()
    assert listeners == 0  # closed with their processes
