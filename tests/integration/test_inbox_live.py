"""The inbox as a front-end uses it: recipient tokens, read state, the live stream."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import httpx
import pytest

from postbell.app.api.inbox.live import Client, Event
from postbell.app.api.main import create_app
from postbell.app.core import db, tokens
from postbell.app.core.settings import Settings
from tests.conftest import ADMIN, ADMIN_KEY, INBOX_SECRET, live_server, unique
from tests.integration.test_delivery_flow import send, settled
from tests.peers.sse import sse


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def token(external_id: str, expires_at: int | None = None) -> str:
    return tokens.recipient_token(INBOX_SECRET, external_id, expires_at)


INBOX_CALLS = [
    ("GET", "/api/inbox/{r}", None),
    ("GET", "/api/inbox/{r}?unread=true", None),
    ("POST", "/api/inbox/{r}/read", {"all": True}),
    ("POST", "/api/inbox/{r}/unread", {"all": True}),
    ("POST", "/api/inbox/{r}/seen", {"all": True}),
    ("POST", "/api/inbox/{r}/archive", {"ids": [1]}),
    ("POST", "/api/inbox/{r}/unarchive", {"all": True}),
    ("GET", "/api/recipients/{r}/preferences", None),
    ("PUT", "/api/recipients/{r}/preferences", {"channels": {"EMAIL": False}}),
]
SERVER_CALLS = [
    ("POST", "/api/notifications", {"to": ["{r}"], "message": "x"}),
    ("GET", "/api/recipients/{r}", None),
    ("PUT", "/api/recipients/{r}", {"name": "x"}),
    ("DELETE", "/api/recipients/{r}", None),
    ("GET", "/api/recipients/{r}/devices", None),
    ("PUT", "/api/topics/t/subscribers", {"recipients": ["{r}"]}),
    ("GET", "/api/categories", None),
    ("PUT", "/api/categories/c", {}),
    ("GET", "/api/dead-letters", None),
    ("POST", "/api/dead-letters/retry", {"all": True}),
    ("GET", "/api/notifications/00000000-0000-0000-0000-000000000000", None),
]


def _fill(value: Any, rid: str) -> Any:
    if isinstance(value, str):
        return value.replace("{r}", rid)
    if isinstance(value, list):
        return [_fill(v, rid) for v in value]
    if isinstance(value, dict):
        return {k: _fill(v, rid) for k, v in value.items()}
    return value


@pytest.mark.parametrize(
    ("method", "path", "body"), INBOX_CALLS, ids=[f"{m} {p}" for m, p, _ in INBOX_CALLS]
)
async def test_token_opens_only_its_own_inbox(
    api: httpx.AsyncClient, method: str, path: str, body: Any
) -> None:
    alice, bob = unique("alice"), unique("bob")
    own = await api.request(method, _fill(path, alice), headers=bearer(token(alice)), json=body)
    assert own.status_code == 200, own.text
    expiring = await api.request(
        method, _fill(path, alice), headers=bearer(token(alice, int(time.time()) + 60)), json=body
    )
    assert expiring.status_code == 200
    other = await api.request(method, _fill(path, bob), headers=bearer(token(alice)), json=body)
    assert (other.status_code, other.json()["error"]) == (403, "forbidden")
    expired = await api.request(
        method, _fill(path, alice), headers=bearer(token(alice, int(time.time()) - 1)), json=body
    )
    assert expired.status_code == 401
    forged = await api.request(
        method,
        _fill(path, alice),
        headers=bearer(tokens.recipient_token("wrong", alice)),
        json=body,
    )
    assert forged.status_code == 403
    by_key = await api.request(method, _fill(path, alice), headers=ADMIN, json=body)
    assert by_key.status_code == 200


@pytest.mark.parametrize(
    ("method", "path", "body"), SERVER_CALLS, ids=[f"{m} {p}" for m, p, _ in SERVER_CALLS]
)
async def test_token_cannot_call_server_endpoints(
    api: httpx.AsyncClient, method: str, path: str, body: Any
) -> None:
    rid = unique("eve")
    response = await api.request(
        method, _fill(path, rid), headers=bearer(token(rid)), json=_fill(body, rid)
    )
    assert (response.status_code, response.json()["error"]) == (403, "forbidden")


async def test_read_unread_seen_archive(api: httpx.AsyncClient, worker: None) -> None:
    rid = unique("reader")
    ids = []
    for n in range(3):
        nid = await send(api, to=[rid], message=f"item {n}", category=None)
        await settled(api, nid, {"sent": 1})
    inbox = (await api.get(f"/api/inbox/{rid}", headers=ADMIN)).json()
    ids = [i["id"] for i in inbox["items"]]
    assert (inbox["unread_count"], inbox["unseen_count"]) == (3, 3)
    own = bearer(token(rid))
    assert (await api.post(f"/api/inbox/{rid}/seen", headers=own, json={"all": True})).json() == {
        "updated": 3,
        "unread_count": 3,
        "unseen_count": 0,
    }
    assert (await api.post(f"/api/inbox/{rid}/read", headers=own, json={"ids": ids[:2]})).json()[
        "unread_count"
    ] == 1
    assert (await api.post(f"/api/inbox/{rid}/unread", headers=own, json={"ids": [ids[0]]})).json()[
        "unread_count"
    ] == 2
    assert (
        await api.post(f"/api/inbox/{rid}/archive", headers=own, json={"ids": [ids[2]]})
    ).json() == {"updated": 1, "unread_count": 1, "unseen_count": 0}
    visible = (await api.get(f"/api/inbox/{rid}", headers=own)).json()
    assert [i["id"] for i in visible["items"]] == ids[:2]
    archived = (await api.get(f"/api/inbox/{rid}", headers=own, params={"archived": "true"})).json()
    assert [i["id"] for i in archived["items"]] == [ids[2]]
    unread = (await api.get(f"/api/inbox/{rid}", headers=own, params={"unread": "true"})).json()
    assert [i["id"] for i in unread["items"]] == [ids[0]]
    assert (
        await api.post(f"/api/inbox/{rid}/shred", headers=own, json={"all": True})
    ).status_code == 404
    # Someone else's item ids change nothing.
    assert (await api.post(f"/api/inbox/{unique()}/read", headers=ADMIN, json={"ids": ids})).json()[
        "updated"
    ] == 0


async def test_cursor_pagination_newest_first(api: httpx.AsyncClient, worker: None) -> None:
    rid = unique("pager")
    for n in range(5):
        await settled(api, await send(api, to=[rid], message=f"n{n}"), {"sent": 1})
    first = (await api.get(f"/api/inbox/{rid}", headers=ADMIN, params={"limit": 2})).json()
    second = (
        await api.get(
            f"/api/inbox/{rid}", headers=ADMIN, params={"limit": 2, "cursor": first["next_cursor"]}
        )
    ).json()
    third = (
        await api.get(
            f"/api/inbox/{rid}", headers=ADMIN, params={"limit": 2, "cursor": second["next_cursor"]}
        )
    ).json()
    bodies = [i["body"] for p in (first, second, third) for i in p["items"]]
    assert bodies == ["n4", "n3", "n2", "n1", "n0"] and third["next_cursor"] is None
    bad = await api.get(f"/api/inbox/{rid}", headers=ADMIN, params={"cursor": "garbage!"})
    assert (bad.status_code, bad.json()["error"], bad.json()["field"]) == (
        400,
        "invalid_parameter",
        "cursor",
    )


def test_a_slow_client_loses_its_backlog_not_the_others() -> None:
    slow = Client(recipient_id=1)
    for n in range(300):
        slow.push(Event("notification", "{}", id=n))
    events = []
    while not slow.queue.empty():
        events.append(slow.queue.get_nowait())
    assert events[0].event == "resync" and len(events) < 300


async def test_stream_delivers_live_and_replays_after_reconnect(
    settings: Settings, pool: db.Pool, worker: None
) -> None:
    rid = unique("live")
    async with (
        live_server(create_app(settings, pool=pool)) as base,
        httpx.AsyncClient(base_url=base) as client,
    ):
        url = f"/api/inbox/{rid}/stream?token={token(rid)}"
        async with sse(client, url) as stream:
            (counts,) = await stream.wait_for("counts")
            assert counts.json() == {"unread_count": 0, "unseen_count": 0}
            nid = (
                await client.post(
                    "/api/notifications", headers=ADMIN, json={"to": [rid], "message": "hello live"}
                )
            ).json()["id"]
            (item,) = await stream.wait_for("notification")
            assert (item.json()["body"], item.json()["notification_id"]) == ("hello live", nid)
            await stream.wait_for("counts", 2)
            assert stream.of("counts")[-1].json() == {"unread_count": 1, "unseen_count": 1}
            await client.post(f"/api/inbox/{rid}/read", headers=ADMIN, json={"all": True})
            (update,) = await stream.wait_for("update")
            assert update.json() == {"action": "read", "ids": [int(item.id or 0)]}
            last_id = stream.messages[-1].id
        # Offline: two more arrive.
        for text in ("missed 1", "missed 2"):
            nid = (
                await client.post(
                    "/api/notifications", headers=ADMIN, json={"to": [rid], "message": text}
                )
            ).json()["id"]
            await settled_http(client, nid)
        async with sse(client, url, headers={"Last-Event-ID": str(last_id)}) as again:
            replayed = await again.wait_for("notification", 2)
            assert [m.json()["body"] for m in replayed] == ["missed 1", "missed 2"]
            (counts,) = await again.wait_for("counts")
            assert counts.json()["unread_count"] == 2
        unauthorized = await client.get(f"/api/inbox/{rid}/stream?token={token(unique())}")
        assert unauthorized.status_code == 403
        # an API key never travels in a URL (proxy logs, browser history)
        key_in_url = await client.get(f"/api/inbox/{rid}/stream?token={ADMIN_KEY}")
        assert key_in_url.status_code == 401 and "recipient token" in key_in_url.json()["detail"]
        # and ?token= is only for the stream
        listing = await client.get(f"/api/inbox/{rid}?token={token(rid)}")
        assert listing.status_code == 401


async def test_replay_after_reconnect_leaves_out_items_archived_meanwhile(
    settings: Settings, pool: db.Pool, worker: None
) -> None:
    """An item that arrived while a stream was away and was archived before it came
    back (another tab, another device, the host app) is not replayed: the reconnecting
    client never showed it, and replaying it would bring an archived item back. The
    counts after the replay leave it out too."""
    rid = unique("archived-away")
    async with (
        live_server(create_app(settings, pool=pool)) as base,
        httpx.AsyncClient(base_url=base) as client,
    ):
        url = f"/api/inbox/{rid}/stream?token={token(rid)}"
        async with sse(client, url) as stream:
            (counts,) = await stream.wait_for("counts")
            last_id = counts.id
        ids = {}
        for text in ("kept", "archived elsewhere", "also kept"):
            nid = (
                await client.post(
                    "/api/notifications", headers=ADMIN, json={"to": [rid], "message": text}
                )
            ).json()["id"]
            await settled_http(client, nid)
        for item in (await client.get(f"/api/inbox/{rid}", headers=ADMIN)).json()["items"]:
            ids[item["body"]] = item["id"]
        archived = await client.post(
            f"/api/inbox/{rid}/archive",
            headers=bearer(token(rid)),
            json={"ids": [ids["archived elsewhere"]]},
        )
        assert archived.json()["updated"] == 1
        async with sse(client, url, headers={"Last-Event-ID": str(last_id)}) as again:
            (counts,) = await again.wait_for("counts")
            replayed = again.of("notification")
            assert [(m.json()["body"], m.id) for m in replayed] == [
                ("kept", str(ids["kept"])),
                ("also kept", str(ids["also kept"])),
            ]
            assert counts.json() == {"unread_count": 2, "unseen_count": 2}


async def test_a_fallback_to_in_app_reaches_the_live_stream(
    settings: Settings, pool: db.Pool, worker: None
) -> None:
    """IN_APP as a fallback is delivered by a deliver run, not by routing: it must
    announce itself to the live streams too."""
    rid = unique("fb-live")
    async with (
        live_server(create_app(settings, pool=pool)) as base,
        httpx.AsyncClient(base_url=base) as client,
        sse(client, f"/api/inbox/{rid}/stream?token={token(rid)}") as stream,
    ):
        await stream.wait_for("counts")
        sent = await client.post(
            "/api/notifications",
            headers=ADMIN,
            json={
                "to": [rid],
                "message": "no phone, no device: the inbox then",
                "channels": ["PUSH"],
                "fallback": {"PUSH": "IN_APP"},
            },
        )
        assert sent.status_code == 202, sent.text
        (item,) = await stream.wait_for("notification")
        assert item.json()["body"] == "no phone, no device: the inbox then"
        await stream.wait_for("counts", 2)
        assert stream.of("counts")[-1].json() == {"unread_count": 1, "unseen_count": 1}
        detail = (await client.get(f"/api/notifications/{sent.json()['id']}", headers=ADMIN)).json()
        by_channel = {d["channel"]: d for d in detail["deliveries"]}
        assert by_channel["PUSH"]["reason"] == "no_device"
        assert by_channel["IN_APP"]["fallback_reason"] == "PUSH no_device"


async def settled_http(client: httpx.AsyncClient, nid: str) -> None:
    import asyncio

    for _ in range(200):
        body = (await client.get(f"/api/notifications/{nid}", headers=ADMIN)).json()
        if body["delivery_counts"].get("sent"):
            return
        await asyncio.sleep(0.05)
    raise AssertionError("not sent")


async def test_close_streams_ends_every_open_stream_and_later_ones(
    settings: Settings, pool: db.Pool
) -> None:
    """When the process stops (SIGTERM), ``close_streams`` ends the open streams, so the
    server's graceful stop does not wait on browsers that never hang up; a stream opened
    after it ends at once, after its counts."""
    from postbell.app.api.main import close_streams

    rid = unique("closing")
    app = create_app(settings, pool=pool)
    async with live_server(app) as base, httpx.AsyncClient(base_url=base) as client:
        url = f"/api/inbox/{rid}/stream?token={token(rid)}"
        async with sse(client, url) as stream:
            await stream.wait_for("counts")
            close_streams(app)
            assert stream._task is not None
            await asyncio.wait_for(stream._task, timeout=15)  # the response ended
        async with sse(client, url) as late:
            await late.wait_for("counts")
            assert late._task is not None
            await asyncio.wait_for(late._task, timeout=15)
