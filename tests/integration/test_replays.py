"""Replays: POST /api/replays and POST /api/notifications/{id}/replay send past
deliveries again through the normal queues — the same delivery id, the replay's id in
X-Postbell-Replay, once per replay (an Idempotency-Key repeat sends nothing more), a
`replay` event and the resulting attempt in the timeline — and refuse bad input
naming the field, changing nothing."""

from __future__ import annotations

import datetime as dt
import json
from typing import Any

import httpx
import pytest

from postbell.app.core import db
from tests.conftest import ADMIN, WEBHOOK_SECRET, query, unique, wait_until
from tests.integration.test_delivery_flow import send, settled
from tests.peers.http import Recorded
from tests.peers.webhooks import WebhookReceiver, verify_signature


def window() -> dict[str, str]:
    now = dt.datetime.now(dt.UTC)
    return {
        "from": (now - dt.timedelta(hours=1)).isoformat(),
        "to": (now + dt.timedelta(minutes=5)).isoformat(),
    }


async def webhook_recipient(api: httpx.AsyncClient, receiver: WebhookReceiver) -> tuple[str, str]:
    rid = unique("rp")
    path = f"/replay/{rid}"
    response = await api.put(
        f"/api/recipients/{rid}", headers=ADMIN, json={"webhook_url": receiver.url_for(path)}
    )
    assert response.status_code in (200, 201), response.text
    return rid, path


def hits(receiver: WebhookReceiver, path: str) -> list[Recorded]:
    with receiver.lock:
        return [r for r in receiver.received if r.path == path]


async def wait_hits(receiver: WebhookReceiver, path: str, n: int) -> list[Recorded]:
    async def check() -> list[Recorded] | None:
        got = hits(receiver, path)
        return got if len(got) >= n else None

    result: list[Recorded] = await wait_until(check)
    return result


async def timeline(api: httpx.AsyncClient, delivery_id: int) -> dict[str, Any]:
    response = await api.get(f"/api/deliveries/{delivery_id}", headers=ADMIN)
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


async def replay(
    api: httpx.AsyncClient, body: dict[str, Any], key: str | None = None
) -> httpx.Response:
    headers = {**ADMIN, **({"Idempotency-Key": key} if key else {})}
    return await api.post("/api/replays", headers=headers, json=body)


async def sent_webhook(
    api: httpx.AsyncClient, receiver: WebhookReceiver, **extra: Any
) -> tuple[str, str, str, int]:
    """A recipient with a webhook, one notification sent to it: (rid, path, nid, delivery id)."""
    rid, path = await webhook_recipient(api, receiver)
    nid = await send(api, to=[rid], message="Quarterly report", channels=["WEBHOOK"], **extra)
    (delivery,) = (await settled(api, nid, {"sent": 1}))["deliveries"]
    await wait_hits(receiver, path, 1)
    return rid, path, nid, int(delivery["id"])


async def test_replay_resends_same_delivery_with_replay_header_once_per_key(
    api: httpx.AsyncClient, worker: None, receiver: WebhookReceiver, pool: db.Pool
) -> None:
    """The receiver sees the delivery again with the same X-Postbell-Delivery, the
    replay's id in X-Postbell-Replay and in the signed body; a second call with the same
    Idempotency-Key answers 200 with the original and writes (so sends) nothing more."""
    rid, path, nid, delivery_id = await sent_webhook(api, receiver)
    key = unique("key")
    body = {"channel": "WEBHOOK", **window(), "statuses": ["sent"], "recipient": rid}
    first = await replay(api, body, key)
    assert first.status_code == 202, first.text
    replay_id = first.json()["id"]
    assert first.json() == {"id": replay_id, "deliveries": 1, "dry_run": False}

    original, again = await wait_hits(receiver, path, 2)
    assert again.headers["X-Postbell-Delivery"] == original.headers["X-Postbell-Delivery"]
    assert again.headers["X-Postbell-Delivery"] == str(delivery_id)
    assert again.headers["X-Postbell-Replay"] == replay_id
    assert "X-Postbell-Replay" not in original.headers
    assert verify_signature(WEBHOOK_SECRET, again.headers, again.body)
    assert again.json()["replay_id"] == replay_id
    assert again.json()["id"] == str(delivery_id)
    await settled(api, nid, {"sent": 1})

    repeat = await replay(api, body, key)
    assert repeat.status_code == 200, repeat.text
    assert repeat.json() == first.json()
    # Nothing was written by the repeat: still one replay event, the delivery sent,
    # no deliver job waiting for it.
    detail = await timeline(api, delivery_id)
    assert detail["status"] == "sent"
    assert [e["kind"] for e in detail["events"]].count("replay") == 1
    waiting = await query(
        pool,
        "SELECT count(*) AS n FROM procrastinate_jobs WHERE status = 'todo'"
        " AND args -> 'ids' @> to_jsonb(ARRAY[%(id)s::bigint])",
        {"id": delivery_id},
    )
    assert waiting == [{"n": 0}]
    assert len(hits(receiver, path)) == 2

    conflict = await replay(api, {**body, "statuses": ["sent", "dead"]}, key)
    assert conflict.status_code == 422, conflict.text
    assert conflict.json()["error"] == "idempotency_conflict"


async def test_timeline_shows_replay_and_its_attempt(
    api: httpx.AsyncClient, worker: None, receiver: WebhookReceiver
) -> None:
    """The timeline: the first attempt, the replay (its id, the status the delivery
    had), the resulting attempt naming the replay; the delivery names its last replay.
    A replay goes out at low priority unless asked otherwise (here: high)."""
    rid, path, _nid, delivery_id = await sent_webhook(api, receiver)
    response = await replay(
        api, {"channel": "WEBHOOK", **window(), "recipient": rid, "priority": "high"}
    )
    assert response.status_code == 202, response.text
    replay_id = response.json()["id"]
    await wait_hits(receiver, path, 2)

    async def resent() -> dict[str, Any] | None:
        detail = await timeline(api, delivery_id)
        return detail if len(detail["events"]) == 3 and detail["status"] == "sent" else None

    detail = await wait_until(resent)
    assert detail["replay_id"] == replay_id
    assert detail["attempts"] == 1
    assert [(e["kind"], e["outcome"]) for e in detail["events"]] == [
        ("attempt", "sent"),
        ("replay", "pending"),
        ("attempt", "sent"),
    ]
    assert detail["events"][1]["detail"] == {"replay_id": replay_id, "previous_status": "sent"}
    assert detail["events"][2]["detail"] == {"replay_id": replay_id}
    assert detail["events"][0]["detail"] is None


async def test_dry_run_counts_and_changes_nothing(
    api: httpx.AsyncClient, worker: None, receiver: WebhookReceiver, pool: db.Pool
) -> None:
    """dry_run answers how many deliveries a replay would send again (200, no id) and
    changes nothing: no replay row, no event, no send."""
    rid, path, _nid, delivery_id = await sent_webhook(api, receiver)
    before = await query(pool, "SELECT count(*) AS n FROM replays")
    response = await replay(
        api, {"channel": "WEBHOOK", **window(), "recipient": rid, "dry_run": True}
    )
    assert response.status_code == 200, response.text
    assert response.json() == {"id": None, "deliveries": 1, "dry_run": True}
    assert await query(pool, "SELECT count(*) AS n FROM replays") == before
    detail = await timeline(api, delivery_id)
    assert (detail["status"], detail["replay_id"], len(detail["events"])) == ("sent", None, 1)
    assert len(hits(receiver, path)) == 1


async def test_filters_pick_only_matching_deliveries(
    api: httpx.AsyncClient, worker: None, receiver: WebhookReceiver
) -> None:
    """Filters: the category, the recipient, the statuses (a dead delivery only with
    "dead"), the range; a dead delivery replayed to a receiver that is back is sent."""
    category = unique("cat").replace("-", "_")
    put = await api.put(f"/api/categories/{category}", headers=ADMIN, json={"name": "Reports"})
    assert put.status_code in (200, 201), put.text
    in_category = await sent_webhook(api, receiver, category=category)
    await sent_webhook(api, receiver)  # same window, no category: never picked below
    dead_rid, dead_path = await webhook_recipient(api, receiver)
    receiver.script(dead_path, [410])
    dead_nid = await send(api, to=[dead_rid], message="Gone", channels=["WEBHOOK"])
    await settled(api, dead_nid, {"dead": 1})

    async def count(**filters: Any) -> int:
        response = await replay(api, {"channel": "WEBHOOK", **window(), "dry_run": True, **filters})
        assert response.status_code == 200, response.text
        return int(response.json()["deliveries"])

    assert await count(category=category) == 1
    assert await count(recipient=in_category[0]) == 1
    assert await count(recipient=in_category[0], statuses=["dead"]) == 0
    assert await count(recipient=dead_rid, statuses=["dead"]) == 1
    assert await count(recipient=dead_rid, statuses=["sent"]) == 0
    past = {"from": "2020-01-01T00:00:00Z", "to": "2020-01-02T00:00:00Z"}
    assert await count(recipient=dead_rid, **past) == 0
    assert await count(channel="EMAIL", recipient=dead_rid) == 0

    response = await replay(
        api, {"channel": "WEBHOOK", **window(), "category": category, "statuses": ["sent"]}
    )
    assert response.json()["deliveries"] == 1
    await wait_hits(receiver, in_category[1], 2)
    response = await replay(
        api, {"channel": "WEBHOOK", **window(), "recipient": dead_rid, "statuses": ["dead"]}
    )
    assert response.json()["deliveries"] == 1
    await settled(api, dead_nid, {"sent": 1})


async def test_notification_replay(
    api: httpx.AsyncClient, worker: None, receiver: WebhookReceiver
) -> None:
    """POST /api/notifications/{id}/replay sends its deliveries again (not IN_APP);
    an unknown notification is 404, IN_APP named is 422."""
    rid, path = await webhook_recipient(api, receiver)
    nid = await send(api, to=[rid], message="Both", channels=["IN_APP", "WEBHOOK"])
    await settled(api, nid, {"sent": 2})
    await wait_hits(receiver, path, 1)
    response = await api.post(f"/api/notifications/{nid}/replay", headers=ADMIN)
    assert response.status_code == 202, response.text
    assert response.json()["deliveries"] == 1
    (_, again) = await wait_hits(receiver, path, 2)
    assert again.headers["X-Postbell-Replay"] == response.json()["id"]
    await settled(api, nid, {"sent": 2})

    dry = await api.post(
        f"/api/notifications/{nid}/replay",
        headers=ADMIN,
        json={"channels": ["WEBHOOK"], "dry_run": True},
    )
    assert dry.status_code == 200 and dry.json()["deliveries"] == 1, dry.text
    unknown = await api.post(
        "/api/notifications/00000000-0000-4000-8000-000000000000/replay", headers=ADMIN
    )
    assert unknown.status_code == 404, unknown.text
    in_app = await api.post(
        f"/api/notifications/{nid}/replay", headers=ADMIN, json={"channels": ["IN_APP"]}
    )
    assert (in_app.status_code, in_app.json()["field"]) == (422, "channels")


BAD = [
    ("from after to", {"from": "2026-01-02T00:00:00Z", "to": "2026-01-01T00:00:00Z"}, "from"),
    ("range too wide", {"from": "2026-01-01T00:00:00Z", "to": "2026-03-01T00:00:00Z"}, "to"),
    ("unknown channel", {"channel": "PIGEON"}, "channel"),
    ("IN_APP", {"channel": "IN_APP"}, "channel"),
    ("unknown status", {"statuses": ["sent", "lost"]}, "statuses[1]"),
    ("skipped is not replayed", {"statuses": ["skipped"]}, "statuses[0]"),
    ("no statuses", {"statuses": []}, "statuses"),
    ("time without zone", {"from": "2026-01-01T00:00:00"}, "from"),
    ("not a time", {"to": "yesterday"}, "to"),
    ("unknown priority", {"priority": "asap"}, "priority"),
    ("unknown field", {"channels": ["WEBHOOK"]}, "channels"),
]


@pytest.mark.parametrize(("case", "change", "field"), BAD, ids=[c[0] for c in BAD])
async def test_bad_input_is_422_naming_the_field_and_changes_nothing(
    api: httpx.AsyncClient, pool: db.Pool, case: str, change: dict[str, Any], field: str
) -> None:
    before = await query(pool, "SELECT count(*) AS n FROM replays")
    body = {"channel": "WEBHOOK", "from": "2026-01-01T00:00:00Z", "to": "2026-01-01T01:00:00Z"}
    response = await replay(api, {**body, **change})
    assert response.status_code == 422, response.text
    assert response.json()["field"] == field, response.json()
    assert await query(pool, "SELECT count(*) AS n FROM replays") == before


async def test_malformed_and_missing_body(api: httpx.AsyncClient) -> None:
    malformed = await api.post(
        "/api/replays", headers={**ADMIN, "Content-Type": "application/json"}, content=b"{"
    )
    assert malformed.status_code == 400, malformed.text
    missing = await api.post("/api/replays", headers=ADMIN, content=json.dumps({}))
    assert missing.status_code == 422, missing.text


async def test_sql_function_in_a_console_transaction(
    api: httpx.AsyncClient, worker: None, receiver: WebhookReceiver, settings: Any
) -> None:
    """postbell.replay() from a SQL console (search_path without postbell): a dry run
    counts, the replay sends again at commit, and a repeat with its idempotency key
    answers the original (created false) and sends nothing more."""
    import psycopg

    rid, path, nid, delivery_id = await sent_webhook(api, receiver)
    sql = (
        "SELECT id, deliveries, created FROM postbell.replay(ARRAY['WEBHOOK'],"
        " now() - interval '1 hour', now() + interval '5 minutes',"
        " p_recipient => %s, p_dry_run => %s, p_idempotency_key => %s)"
    )
    key = unique("sqlkey")
    async with await psycopg.AsyncConnection.connect(settings.database_url) as conn:
        await conn.execute("SET search_path = public")
        dry = await (await conn.execute(sql, (rid, True, None))).fetchone()
        assert dry == (None, 1, False)
        first = await (await conn.execute(sql, (rid, False, key))).fetchone()
        await conn.commit()
        again = await (await conn.execute(sql, (rid, False, key))).fetchone()
        await conn.commit()
    assert first is not None and first[1:] == (1, True)
    assert again == (first[0], 1, False)
    (_, resent) = await wait_hits(receiver, path, 2)
    assert resent.headers["X-Postbell-Replay"] == str(first[0])
    await settled(api, nid, {"sent": 1})
    detail = await timeline(api, delivery_id)
    assert [e["kind"] for e in detail["events"]].count("replay") == 1
