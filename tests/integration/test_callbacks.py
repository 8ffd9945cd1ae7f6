"""Provider delivery feedback: SendGrid Event Webhook, SES through SNS, Twilio status
callbacks — each with a valid and a forged signature. Forged ones answer 403 and
change nothing."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterator
from urllib.parse import urlencode

import httpx
import pytest

from app import db
from app.main import create_app
from app.settings import Settings
from tests.conftest import ADMIN, api_client, query, unique
from tests.integration.test_delivery_flow import send, settled
from tests.peers.fake_twilio import TwilioPeer, status_callback_signature
from tests.peers.feedback import SendGridEventSigner, SnsSigner, sendgrid_events, ses_event
from tests.peers.smtp import SmtpPeer

PUBLIC_URL = "https://postbell.example.org"


@pytest.fixture(scope="module")
def sendgrid_signer() -> SendGridEventSigner:
    return SendGridEventSigner()


@pytest.fixture(scope="module")
def sns() -> Iterator[SnsSigner]:
    peer = SnsSigner().start()
    yield peer
    peer.stop()


@pytest.fixture(scope="module")
async def callbacks(
    settings: Settings, pool: db.Pool, sendgrid_signer: SendGridEventSigner, sns: SnsSigner
) -> AsyncIterator[httpx.AsyncClient]:
    """The API with the callbacks' verification settings (same database as the worker)."""
    import dataclasses

    configured = dataclasses.replace(
        settings,
        sendgrid_webhook_key=sendgrid_signer.public_key_b64,
        sns_cert_url_prefixes=(sns.url + "/",),
    )
    async with api_client(create_app(configured, pool=pool)) as client:
        yield client


async def sent_email(api: httpx.AsyncClient) -> tuple[str, str, int]:
    rid = unique("fb")
    address = f"{rid}@example.org"
    await api.put(f"/api/recipients/{rid}", headers=ADMIN, json={"email": address})
    nid = await send(api, to=[rid], message="feedback", channels=["EMAIL"])
    (delivery,) = (await settled(api, nid, {"sent": 1}))["deliveries"]
    return rid, address, int(delivery["id"])


async def status_of(pool: db.Pool, delivery_id: int) -> tuple[str, str | None]:
    (row,) = await query(
        pool, "SELECT status, reason FROM deliveries WHERE id = %s", (delivery_id,)
    )
    return row["status"], row["reason"]


async def test_sendgrid_events(
    api: httpx.AsyncClient,
    callbacks: httpx.AsyncClient,
    pool: db.Pool,
    worker: None,
    smtp: SmtpPeer,
    sendgrid_signer: SendGridEventSigner,
) -> None:
    _, delivered_to, delivered = await sent_email(api)
    rid, bounced_to, bounced = await sent_email(api)
    body = sendgrid_events(
        ("delivered", delivered, delivered_to),
        ("bounce", bounced, bounced_to),
        ("open", delivered, delivered_to),
    )
    forged = await callbacks.post(
        "/api/callbacks/sendgrid", content=body, headers=SendGridEventSigner().sign(body)
    )
    assert forged.status_code == 403
    assert await status_of(pool, delivered) == ("sent", None)
    response = await callbacks.post(
        "/api/callbacks/sendgrid", content=body, headers=sendgrid_signer.sign(body)
    )
    assert response.status_code == 200, response.text
    assert await status_of(pool, delivered) == ("delivered", "delivered")
    assert await status_of(pool, bounced) == ("bounced", "sendgrid:bounce")
    # A hard bounce makes the address inactive: the next email is skipped.
    again = await send(api, to=[rid], message="still there?", channels=["EMAIL"])
    (skipped,) = (await settled(api, again, {"skipped": 1}))["deliveries"]
    assert skipped["reason"] == "address_inactive"
    tampered = body.replace(b"delivered", b"dropped")
    assert (
        await callbacks.post(
            "/api/callbacks/sendgrid", content=tampered, headers=sendgrid_signer.sign(body)
        )
    ).status_code == 403
    stale = sendgrid_signer.sign(body, timestamp="1000000000")
    assert (
        await callbacks.post("/api/callbacks/sendgrid", content=body, headers=stale)
    ).status_code == 403


async def test_sendgrid_without_a_key_refuses(api: httpx.AsyncClient) -> None:
    body = sendgrid_events(("delivered", 1, "x@example.org"))
    response = await api.post(
        "/api/callbacks/sendgrid", content=body, headers=SendGridEventSigner().sign(body)
    )
    assert (response.status_code, response.json()["error"]) == (403, "forbidden")


async def test_ses_through_sns(
    api: httpx.AsyncClient,
    callbacks: httpx.AsyncClient,
    pool: db.Pool,
    worker: None,
    smtp: SmtpPeer,
    sns: SnsSigner,
) -> None:
    _, to_1, delivered = await sent_email(api)
    rid, to_2, complained = await sent_email(api)
    _, to_3, soft = await sent_email(api)
    for event, version in (
        (ses_event("Delivery", delivered, to_1), "1"),
        (ses_event("Complaint", complained, to_2), "2"),
        (ses_event("Bounce", soft, to_3, bounce_type="Transient"), "1"),
    ):
        response = await callbacks.post(
            "/api/callbacks/ses", content=json.dumps(sns.notification(event, version=version))
        )
        assert (response.status_code, response.json()) == (200, {"status": "processed"})
    assert await status_of(pool, delivered) == ("delivered", "delivered")
    assert await status_of(pool, complained) == ("complained", "ses:complaint/abuse")
    assert await status_of(pool, soft) == ("undelivered", "ses:Transient/General")
    recipient = (await api.get(f"/api/recipients/{rid}", headers=ADMIN)).json()
    assert recipient["email_inactive_at"] is not None


async def test_ses_forged_or_foreign_is_refused(
    api: httpx.AsyncClient,
    callbacks: httpx.AsyncClient,
    pool: db.Pool,
    worker: None,
    smtp: SmtpPeer,
    sns: SnsSigner,
) -> None:
    _, address, delivery_id = await sent_email(api)
    document = sns.notification(ses_event("Bounce", delivery_id, address))
    forged = {**document, "Message": json.dumps(ses_event("Bounce", delivery_id + 1, address))}
    assert (
        await callbacks.post("/api/callbacks/ses", content=json.dumps(forged))
    ).status_code == 403
    foreign_cert = {**document, "SigningCertURL": "https://evil.example.org/cert.pem"}
    assert (
        await callbacks.post("/api/callbacks/ses", content=json.dumps(foreign_cert))
    ).status_code == 403
    assert (await callbacks.post("/api/callbacks/ses", content=b"not json")).status_code == 403
    assert await status_of(pool, delivery_id) == ("sent", None)


async def test_sns_subscription_is_confirmed(callbacks: httpx.AsyncClient, sns: SnsSigner) -> None:
    before = sns.confirmations
    response = await callbacks.post(
        "/api/callbacks/ses", content=json.dumps(sns.subscription_confirmation())
    )
    assert response.json() == {"status": "subscribed"}
    assert sns.confirmations == before + 1


async def test_twilio_status_callbacks(
    api: httpx.AsyncClient, pool: db.Pool, worker: None, twilio: TwilioPeer
) -> None:
    rids = [unique("tw"), unique("tw")]
    for n, rid in enumerate(rids):
        await api.put(
            f"/api/recipients/{rid}", headers=ADMIN, json={"phone": f"+1415555{7000 + n}"}
        )
    nid = await send(api, to=rids, message="status?", channels=["SMS"])
    deliveries = {
        d["recipient"]: d["id"] for d in (await settled(api, nid, {"sent": 2}))["deliveries"]
    }
    delivered, opted_out = deliveries[rids[0]], deliveries[rids[1]]

    async def callback(
        delivery_id: int, params: dict[str, str], *, sign_as: str | None = None
    ) -> httpx.Response:
        path = f"/api/callbacks/twilio?d={delivery_id}"
        url = f"{PUBLIC_URL}{path}"
        signature = (
            status_callback_signature(url, params, sign_as)
            if sign_as
            else status_callback_signature(url, params)
        )
        return await api.post(
            path,
            content=urlencode(params),
            headers={
                "X-Twilio-Signature": signature,
                "Content-Type": "application/x-www-form-urlencoded",
            },
        )

    params = {"MessageSid": "SM1", "MessageStatus": "delivered", "AccountSid": "AC1"}
    assert (await callback(delivered, params, sign_as="not-the-auth-token")).status_code == 403
    assert await status_of(pool, delivered) == ("sent", None)
    assert (await callback(delivered, params)).status_code == 200
    assert await status_of(pool, delivered) == ("delivered", "delivered")
    failed = {"MessageSid": "SM2", "MessageStatus": "undelivered", "ErrorCode": "21610"}
    assert (await callback(opted_out, failed)).status_code == 200
    assert await status_of(pool, opted_out) == ("undelivered", "twilio:undelivered:21610")
    assert (await api.get(f"/api/recipients/{rids[1]}", headers=ADMIN)).json()[
        "phone_inactive_at"
    ] is not None
    # Another delivery id in the URL than the one signed: refused.
    path = f"/api/callbacks/twilio?d={delivered}"
    wrong = status_callback_signature(f"{PUBLIC_URL}/api/callbacks/twilio?d={opted_out}", params)
    response = await api.post(
        path,
        content=urlencode(params),
        headers={"X-Twilio-Signature": wrong, "Content-Type": "application/x-www-form-urlencoded"},
    )
    assert response.status_code == 403


async def test_callbacks_need_no_api_key_but_a_signature(api: httpx.AsyncClient) -> None:
    for provider in ("sendgrid", "ses", "twilio"):
        response = await api.post(f"/api/callbacks/{provider}", content=b"{}")
        assert response.status_code == 403, provider
