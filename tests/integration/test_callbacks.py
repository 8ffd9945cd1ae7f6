"""Provider delivery feedback: SendGrid Event Webhook, SES through SNS, Twilio status
callbacks — each with a valid and a forged signature. Forged ones answer 403 and
change nothing."""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import urlencode

import httpx

from postbell.app.api.main import create_app
from postbell.app.core import db
from postbell.app.core.settings import Settings
from tests.conftest import ADMIN, api_client, query, unique
from tests.integration.test_delivery_flow import send, settled
from tests.peers.fake_twilio import TwilioPeer, status_callback_signature
from tests.peers.smtp import SmtpPeer
from tests.peers.sns import (
    DEFAULT_TOPIC_ARN,
    SendGridEventSigner,
    SendGridEventType,
    SignatureVersion,
    SnsSigner,
    http_headers,
    sendgrid_event,
    ses_bounce,
    ses_complaint,
    ses_delivery,
)

PUBLIC_URL = "https://postbell.example.org"


def sg_event(event: SendGridEventType, delivery_id: int, email: str) -> dict[str, Any]:
    """A SendGrid event about one delivery: postbell's custom arg comes back in it."""
    return sendgrid_event(event, email, custom_args={"postbell_delivery_id": str(delivery_id)})


def ses_names(delivery_id: int) -> dict[str, Any]:
    """How an SES event names a delivery: the EmailTag and the Message-ID postbell set."""
    return {
        "tags": {"postbell_delivery_id": str(delivery_id)},
        "header_message_id": f"<{delivery_id}@postbell.test>",
    }


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
    """Signed events move deliveries (delivered, hard bounce; opens are ignored); a
    signature by another key, a tampered body or a stale timestamp is refused."""
    _, delivered_to, delivered = await sent_email(api)
    rid, bounced_to, bounced = await sent_email(api)
    events = [
        sg_event("delivered", delivered, delivered_to),
        sg_event("bounce", bounced, bounced_to),
        sg_event("open", delivered, delivered_to),
    ]
    body, headers = sendgrid_signer.signed_post(events)
    forged_body, forged_headers = SendGridEventSigner().signed_post(events)
    assert forged_body == body
    forged = await callbacks.post("/api/callbacks/sendgrid", content=body, headers=forged_headers)
    assert forged.status_code == 403
    assert await status_of(pool, delivered) == ("sent", None)
    response = await callbacks.post("/api/callbacks/sendgrid", content=body, headers=headers)
    assert response.status_code == 200, response.text
    assert await status_of(pool, delivered) == ("delivered", "delivered")
    assert await status_of(pool, bounced) == ("bounced", "sendgrid:bounce")
    # A hard bounce makes the address inactive: the next email is skipped.
    again = await send(api, to=[rid], message="still there?", channels=["EMAIL"])
    (skipped,) = (await settled(api, again, {"skipped": 1}))["deliveries"]
    assert skipped["reason"] == "address_inactive"
    tampered = body.replace(b"delivered", b"dropped")
    assert tampered != body
    assert (
        await callbacks.post("/api/callbacks/sendgrid", content=tampered, headers=headers)
    ).status_code == 403
    _, stale = sendgrid_signer.signed_post(events, timestamp="1000000000")
    assert (
        await callbacks.post("/api/callbacks/sendgrid", content=body, headers=stale)
    ).status_code == 403


async def test_sendgrid_without_a_key_refuses(api: httpx.AsyncClient) -> None:
    """Without SENDGRID_WEBHOOK_PUBLIC_KEY no event can be verified: all are refused."""
    body, headers = SendGridEventSigner().signed_post([sg_event("delivered", 1, "x@example.org")])
    response = await api.post("/api/callbacks/sendgrid", content=body, headers=headers)
    assert (response.status_code, response.json()["error"]) == (403, "forbidden")


async def test_ses_through_sns(
    api: httpx.AsyncClient,
    callbacks: httpx.AsyncClient,
    pool: db.Pool,
    worker: None,
    smtp: SmtpPeer,
    sns: SnsSigner,
) -> None:
    """SNS-signed SES events (signature versions 1 and 2): a delivery, a complaint
    (the address becomes inactive) and a soft bounce (undelivered)."""
    _, to_1, delivered = await sent_email(api)
    rid, to_2, complained = await sent_email(api)
    _, to_3, soft = await sent_email(api)
    events: list[tuple[dict[str, Any], SignatureVersion]] = [
        (ses_delivery([to_1], **ses_names(delivered)), "1"),
        (ses_complaint([to_2], **ses_names(complained)), "2"),
        (
            ses_bounce(
                [to_3], bounce_type="Transient", bounce_sub_type="General", **ses_names(soft)
            ),
            "1",
        ),
    ]
    for event, version in events:
        document = sns.notification(DEFAULT_TOPIC_ARN, event, signature_version=version)
        response = await callbacks.post(
            "/api/callbacks/ses", content=json.dumps(document), headers=http_headers(document)
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
    """A Message changed after signing or a certificate from elsewhere: 403; not JSON
    at all: 400. The delivery does not move."""
    _, address, delivery_id = await sent_email(api)
    document = sns.notification(DEFAULT_TOPIC_ARN, ses_bounce([address], **ses_names(delivery_id)))
    forged = {
        **document,
        "Message": json.dumps(ses_bounce([address], **ses_names(delivery_id + 1))),
    }
    assert (
        await callbacks.post("/api/callbacks/ses", content=json.dumps(forged))
    ).status_code == 403
    foreign_cert = {**document, "SigningCertURL": "https://evil.example.org/cert.pem"}
    assert (
        await callbacks.post("/api/callbacks/ses", content=json.dumps(foreign_cert))
    ).status_code == 403
    not_json = await callbacks.post("/api/callbacks/ses", content=b"not json")
    assert (not_json.status_code, not_json.json()["error"]) == (400, "malformed_json")
    # Validly signed by SNS, but from a topic postbell was not told to trust.
    other = sns.notification(
        "arn:aws:sns:eu-west-1:999999999999:someone-else",
        ses_bounce([address], **ses_names(delivery_id)),
    )
    response = await callbacks.post(
        "/api/callbacks/ses", content=json.dumps(other), headers=http_headers(other)
    )
    assert response.status_code == 403 and "SNS_TOPIC_ARNS" in response.json()["detail"]
    assert await status_of(pool, delivery_id) == ("sent", None)


async def test_ses_without_trusted_topics_refuses(
    api: httpx.AsyncClient, sns: SnsSigner, settings: Settings, pool: db.Pool
) -> None:
    """Without SNS_TOPIC_ARNS no SNS message is trusted, not even a validly signed
    subscription confirmation: it is not visited."""
    import dataclasses

    unconfigured = dataclasses.replace(settings, sns_cert_url_prefixes=(sns.url + "/",))
    before = len(sns.confirmations)
    document = sns.subscription_confirmation(DEFAULT_TOPIC_ARN)
    async with api_client(create_app(unconfigured, pool=pool)) as client:
        response = await client.post(
            "/api/callbacks/ses", content=json.dumps(document), headers=http_headers(document)
        )
    assert response.status_code == 403
    assert "SNS_TOPIC_ARNS" in response.json()["detail"]
    assert len(sns.confirmations) == before


async def test_sns_subscription_is_confirmed(callbacks: httpx.AsyncClient, sns: SnsSigner) -> None:
    """A signed SubscriptionConfirmation is confirmed by visiting its SubscribeURL."""
    before = len(sns.confirmations)
    document = sns.subscription_confirmation(DEFAULT_TOPIC_ARN, signature_version="2")
    response = await callbacks.post(
        "/api/callbacks/ses", content=json.dumps(document), headers=http_headers(document)
    )
    assert response.json() == {"status": "subscribed"}
    assert len(sns.confirmations) == before + 1
    assert sns.confirmations[-1]["Token"] == document["Token"]


async def test_twilio_status_callbacks(
    api: httpx.AsyncClient, pool: db.Pool, worker: None, twilio: TwilioPeer
) -> None:
    """Signed status callbacks move SMS deliveries (delivered; undelivered with its
    ErrorCode, 21610 marking the phone it names inactive); a signature by another
    token, or over another delivery's URL, is refused."""
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
    failed = {
        "MessageSid": "SM2",
        "MessageStatus": "undelivered",
        "ErrorCode": "21610",
        "To": "+14155557001",
    }
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
