"""Races made deterministic: the other side is held inside its transaction (or inside
a slow provider) while the race is run, so a check-then-act in place of a constraint,
or an outcome recorded over a final state, fails these tests every time."""

from __future__ import annotations

import asyncio
import uuid

import httpx
import msgspec

from postbell.app.api.notifications.schemas import NotificationIn
from postbell.app.api.notifications.service import request_hash
from postbell.app.core import db
from tests.conftest import ADMIN, query, unique, wait_until
from tests.integration.test_delivery_flow import send, settled
from tests.peers.smtp import SmtpPeer
from tests.peers.webhooks import WebhookReceiver


async def _waiting_on_a_lock(pool: db.Pool) -> bool:
    rows = await query(
        pool,
        "SELECT count(*) AS n FROM pg_stat_activity"
        " WHERE datname = current_database() AND wait_event_type = 'Lock'",
    )
    return bool(rows[0]["n"])


async def test_an_idempotent_repeat_inside_the_critical_window_gets_the_original(
    api: httpx.AsyncClient, pool: db.Pool
) -> None:
    """The first request is inside its transaction (its row written, not committed)
    when the repeat arrives: the repeat waits on the unique index and answers 200 with
    the original id. A check-then-insert would see no row and make a second one."""
    key = unique("idem-race")
    body = {"to": [unique("i")], "message": "only once"}
    digest = request_hash(msgspec.convert(body, NotificationIn))
    async with pool.connection() as held, held.transaction():
        cursor = await held.execute(
            "SELECT id FROM enqueue_notification(%s, NULL, NULL, 'only once', NULL, NULL, NULL,"
            " 'normal', NULL, NULL, NULL, NULL, 'admin', %s, %s, interval '1 day')",
            (body["to"], key, digest),
        )
        row = await cursor.fetchone()
        assert row is not None
        original = str(row["id"])
        repeat = asyncio.create_task(
            api.post("/api/notifications", headers={**ADMIN, "Idempotency-Key": key}, json=body)
        )
        await wait_until(lambda: _waiting_on_a_lock(pool))
        assert not repeat.done()
    answer = await repeat
    assert (answer.status_code, answer.json()["id"]) == (200, original)
    rows = await query(
        pool, "SELECT count(*) AS n FROM notifications WHERE idempotency_key = %s", (key,)
    )
    assert rows[0]["n"] == 1


async def test_a_late_outcome_never_overwrites_a_final_delivery(
    api: httpx.AsyncClient, pool: db.Pool, worker: None, receiver: WebhookReceiver
) -> None:
    """A webhook is inside a slow receiver when its notification is cancelled: the
    send's outcome (sent) arrives after the delivery became final (cancelled) and must
    not overwrite it. Likewise a delivery marked delivered by feedback mid-send."""
    rid, path = unique("late"), f"/late/{uuid.uuid4().hex}"
    receiver.delay[path] = 1.5
    await api.put(
        f"/api/recipients/{rid}", headers=ADMIN, json={"webhook_url": receiver.url_for(path)}
    )
    nid = await send(api, to=[rid], message="late", channels=["WEBHOOK"])
    await wait_until(lambda: _arrived(receiver, path))  # sent, not yet answered
    cancelled = await api.post(f"/api/notifications/{nid}/cancel", headers=ADMIN)
    assert cancelled.json()["cancelled"] == 1
    (delivery,) = await query(pool, "SELECT id FROM deliveries WHERE notification_id = %s", (nid,))
    await wait_until(lambda: _no_job_carries(pool, delivery["id"]))  # the run recorded
    rows = await query(
        pool, "SELECT status, attempts FROM deliveries WHERE id = %s", (delivery["id"],)
    )
    assert rows == [{"status": "cancelled", "attempts": 0}]


async def _arrived(receiver: WebhookReceiver, path: str) -> bool:
    return bool(receiver.at(path))


async def _no_job_carries(pool: db.Pool, delivery_id: int) -> bool:
    rows = await query(
        pool,
        "SELECT count(*) AS n FROM procrastinate_jobs"
        " WHERE task_name = 'postbell.deliver' AND args -> 'ids' @> %s::jsonb",
        (f"[{delivery_id}]",),
    )
    return rows[0]["n"] == 0


async def test_a_bounce_marks_only_the_address_it_was_sent_to(
    api: httpx.AsyncClient, pool: db.Pool, worker: None, smtp: SmtpPeer
) -> None:
    """A 550 for the old address arrives after the host changed the recipient's email:
    the delivery is dead, and the new address stays active."""
    rid = unique("moved")
    old, new = f"{rid}-old@example.org", f"{rid}-new@example.org"
    await api.put(f"/api/recipients/{rid}", headers=ADMIN, json={"email": old})
    smtp.fail_next(old, "550 5.1.1 no such user")
    gate = smtp.hold(old)
    try:
        nid = await send(api, to=[rid], message="moving", channels=["EMAIL"])
        await wait_until(lambda: _waiting(smtp, old))  # inside the relay, mid-send
        await api.put(f"/api/recipients/{rid}", headers=ADMIN, json={"email": new})
    finally:
        gate.set()
    body = await settled(api, nid, {"dead": 1})
    assert body["deliveries"][0]["reason"] == "invalid_address"
    recipient = (await api.get(f"/api/recipients/{rid}", headers=ADMIN)).json()
    assert (recipient["email"], recipient["email_inactive_at"]) == (new, None)


async def _waiting(smtp: SmtpPeer, address: str) -> bool:
    return address in smtp.waiting
