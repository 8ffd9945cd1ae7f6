"""GET /api/deliveries/{id}: a delivery with its timeline — attempts, provider feedback,
requeues, cancellation — written by the statements that record those outcomes."""

from __future__ import annotations

from typing import Any

import httpx

from postbell.app.core import db
from tests.conftest import ADMIN, query, unique, wait_until
from tests.integration.test_callbacks import sent_email, sg_event
from tests.integration.test_delivery_flow import send, settled
from tests.peers.smtp import SmtpPeer
from tests.peers.sns import SendGridEventSigner
from tests.peers.webhooks import WebhookReceiver

ATTEMPT_KEYS = ("kind", "outcome", "error_class")


async def timeline(api: httpx.AsyncClient, delivery_id: int) -> dict[str, Any]:
    response = await api.get(f"/api/deliveries/{delivery_id}", headers=ADMIN)
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


def brief(events: list[dict[str, Any]]) -> list[tuple[Any, ...]]:
    return [tuple(e[k] for k in ATTEMPT_KEYS) for e in events]


async def test_retries_then_sent(api: httpx.AsyncClient, worker: None, smtp: SmtpPeer) -> None:
    """Two transient SMTP refusals then a send: three attempts, oldest first, each with
    its outcome, error class, error and the send call's timing."""
    rid = unique("tl")
    address = f"{rid}@example.org"
    smtp.script[address] = ["451 4.7.1 Try again later", "452 4.2.2 Mailbox full"]
    await api.put(f"/api/recipients/{rid}", headers=ADMIN, json={"email": address})
    nid = await send(api, to=[rid], message="Third time lucky", channels=["EMAIL"])
    (delivery,) = (await settled(api, nid, {"sent": 1}))["deliveries"]
    body = await timeline(api, int(delivery["id"]))
    assert (body["id"], body["notification_id"], body["recipient"], body["status"]) == (
        delivery["id"],
        nid,
        rid,
        "sent",
    )
    assert brief(body["events"]) == [
        ("attempt", "failed", "smtp_4xx"),
        ("attempt", "failed", "smtp_4xx"),
        ("attempt", "sent", None),
    ]
    first, _, last = body["events"]
    assert first["error"].startswith("SMTP 451")
    assert last["error"] is None
    assert all(e["started_at"] and e["duration_ms"] >= 0 for e in body["events"])
    assert first["at"] <= last["at"]


async def test_dead_requeued_and_sent(api: httpx.AsyncClient, worker: None, smtp: SmtpPeer) -> None:
    """A permanent refusal (550: the address is invalid), the requeue by an operator,
    then the send."""
    rid = unique("tl")
    address = f"{rid}@example.org"
    smtp.script[address] = ["550 5.1.1 No such user"]
    await api.put(f"/api/recipients/{rid}", headers=ADMIN, json={"email": address})
    nid = await send(api, to=[rid], message="Once more", channels=["EMAIL"])
    (delivery,) = (await settled(api, nid, {"dead": 1}))["deliveries"]
    delivery_id = int(delivery["id"])
    retried = await api.post(f"/api/dead-letters/{delivery_id}/retry", headers=ADMIN)
    assert retried.status_code == 200
    await settled(api, nid, {"sent": 1})
    events = (await timeline(api, delivery_id))["events"]
    assert brief(events) == [
        ("attempt", "dead", "invalid_address"),
        ("requeue", "pending", None),
        ("attempt", "sent", None),
    ]


async def test_provider_feedback_is_on_the_timeline(
    api: httpx.AsyncClient,
    callbacks: httpx.AsyncClient,
    worker: None,
    smtp: SmtpPeer,
    sendgrid_signer: SendGridEventSigner,
) -> None:
    """Signed SendGrid events: 'delivered' then a bounce are both recorded, each saying
    whether it moved the delivery; a replayed callback adds nothing."""
    _, address, delivery_id = await sent_email(api)
    for event in ("delivered", "bounce"):
        body, headers = sendgrid_signer.signed_post([sg_event(event, delivery_id, address)])
        response = await callbacks.post("/api/callbacks/sendgrid", content=body, headers=headers)
        assert response.status_code == 200, response.text
    replay = await callbacks.post("/api/callbacks/sendgrid", content=body, headers=headers)
    assert replay.status_code == 200
    events = (await timeline(api, delivery_id))["events"]
    assert [(e["kind"], e["outcome"]) for e in events] == [
        ("attempt", "sent"),
        ("feedback", "delivered"),
        ("feedback", "bounced"),
    ]
    assert [e["detail"]["provider"] for e in events[1:]] == ["sendgrid", "sendgrid"]
    assert [e["detail"]["applied"] for e in events[1:]] == [True, True]


async def test_in_app_has_no_attempt_rows_and_cancel_is_recorded(
    api: httpx.AsyncClient, worker: None, receiver: WebhookReceiver
) -> None:
    """IN_APP deliveries are stored sent at routing: no timeline rows. Cancelling a
    delivery waiting for its retry records the cancellation."""
    rid = unique("tl")
    nid = await send(api, to=[rid], message="inbox only", channels=["IN_APP"])
    (delivery,) = (await settled(api, nid, {"sent": 1}))["deliveries"]
    assert (await timeline(api, int(delivery["id"])))["events"] == []

    # A webhook receiver answering 503: transient failures keep the delivery failed.
    other = unique("tl")
    path = f"/timeline/{other}"
    receiver.script(path, [503] * 50)
    await api.put(
        f"/api/recipients/{other}", headers=ADMIN, json={"webhook_url": receiver.url_for(path)}
    )
    held = await send(api, to=[other], message="held", channels=["WEBHOOK"])

    async def failed_once() -> int | None:
        body = (await api.get(f"/api/notifications/{held}", headers=ADMIN)).json()
        (d,) = body["deliveries"] or [None]
        return int(d["id"]) if d and d["status"] == "failed" else None

    held_id = await wait_until(failed_once)
    cancel = await api.post(f"/api/notifications/{held}/cancel", headers=ADMIN)
    assert cancel.status_code == 200
    events = (await timeline(api, held_id))["events"]
    receiver.script(path, [])
    assert (events[0]["kind"], events[0]["error_class"]) == ("attempt", "http_5xx")
    assert (events[-1]["kind"], events[-1]["outcome"]) == ("cancel", "cancelled")


async def test_events_go_with_their_delivery(
    api: httpx.AsyncClient, pool: db.Pool, worker: None, smtp: SmtpPeer
) -> None:
    """Deleting a recipient deletes its deliveries, and their timelines with them."""
    rid, _, delivery_id = await sent_email(api)
    assert len((await timeline(api, delivery_id))["events"]) == 1
    assert (await api.delete(f"/api/recipients/{rid}", headers=ADMIN)).status_code == 204
    rows = await query(
        pool, "SELECT count(*) AS n FROM delivery_events WHERE delivery_id = %s", (delivery_id,)
    )
    assert rows[0]["n"] == 0
    assert (await api.get(f"/api/deliveries/{delivery_id}", headers=ADMIN)).status_code == 404


async def test_unknown_and_bad_ids(api: httpx.AsyncClient) -> None:
    missing = await api.get("/api/deliveries/999999999999", headers=ADMIN)
    assert (missing.status_code, missing.json()["error"]) == (404, "not_found")
    assert (await api.get("/api/deliveries/0", headers=ADMIN)).status_code == 400
    assert (await api.get("/api/deliveries/1")).status_code == 401
