"""Replayed, stale, forged or malformed provider feedback changes nothing.

For each provider (SendGrid, SES through SNS, Twilio): a second copy of an event is
acknowledged and changes nothing; a signed time outside POSTBELL_CALLBACK_MAX_AGE_SECONDS
is refused; a bounce about an address the host has since replaced leaves the new
address active; a delivery already final keeps its state; hostile bodies and headers
are a 4xx with the JSON error body. Every refusal is checked against a snapshot of
everything a callback could have changed: the deliveries and recipients involved and
the whole provider_events table.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import json
import secrets
import time
from collections.abc import Callable
from typing import Any
from urllib.parse import urlencode

import httpx
import pytest

from postbell.app.api.main import create_app
from postbell.app.core import db
from postbell.app.core.settings import Settings
from tests.conftest import ADMIN, api_client, query, unique
from tests.integration.test_callbacks import (
    PUBLIC_URL,
    sent_email,
    ses_names,
    sg_event,
    status_of,
)
from tests.integration.test_delivery_flow import send, settled
from tests.peers.fake_twilio import TwilioPeer, status_callback_signature
from tests.peers.smtp import SmtpPeer
from tests.peers.sns import (
    CERT_PATH,
    DEFAULT_TOPIC_ARN,
    SIGNATURE_HEADER,
    TIMESTAMP_HEADER,
    SendGridEventSigner,
    SnsSigner,
    http_headers,
    ses_bounce,
    ses_complaint,
    ses_delivery,
    sns_timestamp,
)

DEEP = 100_000


async def snapshot(pool: db.Pool, delivery_ids: list[int], rids: list[str]) -> dict[str, Any]:
    """Everything a callback could change: the deliveries and recipients named, and
    every recorded provider event."""
    deliveries = await query(
        pool,
        "SELECT id, status, reason, updated_at FROM deliveries WHERE id = ANY(%s) ORDER BY id",
        (delivery_ids,),
    )
    recipients = await query(
        pool,
        """SELECT external_id, email, phone, email_inactive_at, phone_inactive_at, updated_at
             FROM recipients WHERE external_id = ANY(%s) ORDER BY external_id""",
        (rids,),
    )
    events = await query(
        pool,
        """SELECT provider, event_key, delivery_id, received_at
             FROM provider_events ORDER BY provider, event_key""",
    )
    return {"deliveries": deliveries, "recipients": recipients, "provider_events": events}


async def recipient(api: httpx.AsyncClient, rid: str) -> dict[str, Any]:
    response = await api.get(f"/api/recipients/{rid}", headers=ADMIN)
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


async def provider_events(pool: db.Pool, provider: str, delivery_id: int) -> list[str]:
    rows = await query(
        pool,
        "SELECT event_key FROM provider_events WHERE provider = %s AND delivery_id = %s",
        (provider, delivery_id),
    )
    return sorted(r["event_key"] for r in rows)


async def as_if_never_applied(pool: db.Pool, delivery_id: int, rid: str) -> None:
    """Put a delivery back at sent and its recipient's addresses back to active.

    No feedback path does this (a delivery never moves back), so today the state
    machine alone would also stop a second copy of an event; with this, only the
    recorded event id can: the tests pin that it does, on its own."""
    await query(
        pool, "UPDATE deliveries SET status = 'sent', reason = NULL WHERE id = %s", (delivery_id,)
    )
    await query(
        pool,
        """UPDATE recipients SET email_inactive_at = NULL, phone_inactive_at = NULL
            WHERE external_id = %s""",
        (rid,),
    )


async def sendgrid_post(
    client: httpx.AsyncClient, body: bytes, headers: dict[str, Any]
) -> httpx.Response:
    return await client.post("/api/callbacks/sendgrid", content=body, headers=headers)


async def sns_post(client: httpx.AsyncClient, document: dict[str, Any]) -> httpx.Response:
    return await client.post(
        "/api/callbacks/ses", content=json.dumps(document), headers=http_headers(document)
    )


def new_phone() -> str:
    return "+1415" + "".join(secrets.choice("0123456789") for _ in range(7))


async def sent_sms(api: httpx.AsyncClient, phone: str) -> tuple[str, int]:
    rid = unique("sms")
    response = await api.put(f"/api/recipients/{rid}", headers=ADMIN, json={"phone": phone})
    assert response.status_code in (200, 201), response.text
    nid = await send(api, to=[rid], message="status?", channels=["SMS"])
    (delivery,) = (await settled(api, nid, {"sent": 1}))["deliveries"]
    return rid, int(delivery["id"])


def twilio_request(
    delivery_id: int | str, params: dict[str, str], *, query_string: str | None = None
) -> dict[str, Any]:
    """The request Twilio makes: the form, signed over the public URL with its ?d=."""
    query_string = query_string if query_string is not None else f"d={delivery_id}"
    path = f"/api/callbacks/twilio?{query_string}"
    return {
        "url": path,
        "content": urlencode(params),
        "headers": {
            "X-Twilio-Signature": status_callback_signature(f"{PUBLIC_URL}{path}", params),
            "Content-Type": "application/x-www-form-urlencoded",
        },
    }


def twilio_status(sid: str, status: str, to: str, code: str | None = None) -> dict[str, str]:
    params = {"MessageSid": sid, "MessageStatus": status, "AccountSid": "AC1", "To": to}
    if code is not None:
        params["ErrorCode"] = code
    return params


def new_sid() -> str:
    return "SM" + secrets.token_hex(16)


def refused(response: httpx.Response, status: int, error: str, field: str | None) -> None:
    """A 4xx with the one JSON error body, naming ``field``."""
    body = response.json()
    assert (response.status_code, set(body), body["error"], body["field"]) == (
        status,
        {"error", "detail", "field"},
        error,
        field,
    ), body
    assert body["detail"]


# -- replays -----------------------------------------------------------------------------


async def test_sendgrid_replayed_event_changes_nothing(
    api: httpx.AsyncClient,
    callbacks: httpx.AsyncClient,
    pool: db.Pool,
    worker: None,
    smtp: SmtpPeer,
    sendgrid_signer: SendGridEventSigner,
) -> None:
    """A bounce is applied once; the same POST again (a retry, or a captured request
    replayed after the host changed the recipient's email) answers 200 "duplicate"
    and leaves the delivery, the address and the recorded events as they were, even
    where the delivery itself could still move."""
    rid, address, delivery_id = await sent_email(api)
    event = sg_event("bounce", delivery_id, address)
    body, headers = sendgrid_signer.signed_post([event])
    first = await sendgrid_post(callbacks, body, headers)
    assert (first.status_code, first.json()) == (200, {"status": "processed"})
    assert await status_of(pool, delivery_id) == ("bounced", "sendgrid:bounce")
    assert (await recipient(api, rid))["email_inactive_at"] is not None
    assert await provider_events(pool, "sendgrid", delivery_id) == [event["sg_event_id"]]

    await as_if_never_applied(pool, delivery_id, rid)
    before = await snapshot(pool, [delivery_id], [rid])
    again = await sendgrid_post(callbacks, body, headers)
    assert (again.status_code, again.json()) == (200, {"status": "duplicate"})
    assert await snapshot(pool, [delivery_id], [rid]) == before

    new_address = f"new-{address}"
    await api.put(f"/api/recipients/{rid}", headers=ADMIN, json={"email": new_address})
    before = await snapshot(pool, [delivery_id], [rid])
    replayed = await sendgrid_post(callbacks, body, headers)
    assert (replayed.status_code, replayed.json()) == (200, {"status": "duplicate"})
    assert await snapshot(pool, [delivery_id], [rid]) == before
    after = await recipient(api, rid)
    assert (after["email"], after["email_inactive_at"]) == (new_address, None)


async def test_sendgrid_retry_racing_the_original_is_applied_once(
    api: httpx.AsyncClient,
    callbacks: httpx.AsyncClient,
    pool: db.Pool,
    worker: None,
    smtp: SmtpPeer,
    sendgrid_signer: SendGridEventSigner,
) -> None:
    """Two copies of one POST at the same time: one is processed, the other waits on
    the event's row and answers duplicate; the event is recorded once."""
    _, address, delivery_id = await sent_email(api)
    event = sg_event("delivered", delivery_id, address)
    body, headers = sendgrid_signer.signed_post([event])
    answers = await asyncio.gather(*(sendgrid_post(callbacks, body, headers) for _ in range(2)))
    assert sorted(a.json()["status"] for a in answers) == ["duplicate", "processed"]
    assert await status_of(pool, delivery_id) == ("delivered", "delivered")
    assert await provider_events(pool, "sendgrid", delivery_id) == [event["sg_event_id"]]


async def test_ses_replayed_message_changes_nothing(
    api: httpx.AsyncClient,
    callbacks: httpx.AsyncClient,
    pool: db.Pool,
    worker: None,
    smtp: SmtpPeer,
    sns: SnsSigner,
) -> None:
    """An SNS notification is applied once per MessageId: the same document again,
    before or after the recipient's email changed, answers duplicate and changes
    nothing, even where the delivery itself could still move."""
    rid, address, delivery_id = await sent_email(api)
    document = sns.notification(
        DEFAULT_TOPIC_ARN, ses_complaint([address], **ses_names(delivery_id))
    )
    first = await sns_post(callbacks, document)
    assert (first.status_code, first.json()) == (200, {"status": "processed"})
    assert await status_of(pool, delivery_id) == ("complained", "ses:complaint/abuse")
    assert await provider_events(pool, "ses", delivery_id) == [document["MessageId"]]
    await as_if_never_applied(pool, delivery_id, rid)
    before = await snapshot(pool, [delivery_id], [rid])
    again = await sns_post(callbacks, document)
    assert (again.status_code, again.json()) == (200, {"status": "duplicate"})
    assert await snapshot(pool, [delivery_id], [rid]) == before

    await api.put(f"/api/recipients/{rid}", headers=ADMIN, json={"email": f"new-{address}"})
    before = await snapshot(pool, [delivery_id], [rid])
    replayed = await sns_post(callbacks, document)
    assert (replayed.status_code, replayed.json()) == (200, {"status": "duplicate"})
    assert await snapshot(pool, [delivery_id], [rid]) == before
    assert (await recipient(api, rid))["email_inactive_at"] is None


async def test_twilio_replayed_callback_changes_nothing(
    api: httpx.AsyncClient,
    callbacks: httpx.AsyncClient,
    pool: db.Pool,
    worker: None,
    twilio: TwilioPeer,
) -> None:
    """A status callback is applied once per MessageSid, MessageStatus and ErrorCode:
    an opt-out (21610) again answers duplicate and changes nothing, even where the
    delivery could still move, and after the host gave the recipient a new phone."""
    phone = new_phone()
    rid, delivery_id = await sent_sms(api, phone)
    sid = new_sid()
    request = twilio_request(delivery_id, twilio_status(sid, "undelivered", phone, "21610"))
    first = await callbacks.post(**request)
    assert (first.status_code, first.json()) == (200, {"status": "processed"})
    assert await status_of(pool, delivery_id) == ("undelivered", "twilio:undelivered:21610")
    assert (await recipient(api, rid))["phone_inactive_at"] is not None
    assert await provider_events(pool, "twilio", delivery_id) == [f"{sid}:undelivered:21610"]
    await as_if_never_applied(pool, delivery_id, rid)
    before = await snapshot(pool, [delivery_id], [rid])
    again = await callbacks.post(**request)
    assert (again.status_code, again.json()) == (200, {"status": "duplicate"})
    assert await snapshot(pool, [delivery_id], [rid]) == before

    new = new_phone()
    await api.put(f"/api/recipients/{rid}", headers=ADMIN, json={"phone": new})
    before = await snapshot(pool, [delivery_id], [rid])
    replayed = await callbacks.post(**request)
    assert (replayed.status_code, replayed.json()) == (200, {"status": "duplicate"})
    assert await snapshot(pool, [delivery_id], [rid]) == before
    after = await recipient(api, rid)
    assert (after["phone"], after["phone_inactive_at"]) == (new, None)


# -- freshness ---------------------------------------------------------------------------


async def test_sendgrid_signed_time_outside_the_window_is_refused(
    api: httpx.AsyncClient,
    callback_settings: Settings,
    pool: db.Pool,
    worker: None,
    smtp: SmtpPeer,
    sendgrid_signer: SendGridEventSigner,
) -> None:
    """With POSTBELL_CALLBACK_MAX_AGE_SECONDS=600, a POST signed 11 minutes ago or 10
    minutes ahead of our clock is refused (403, naming the timestamp header) and
    nothing changes; one signed 9 minutes ago is applied."""
    configured = dataclasses.replace(callback_settings, callback_max_age_seconds=600)
    rid, address, delivery_id = await sent_email(api)
    events = [sg_event("bounce", delivery_id, address)]
    now = int(time.time())
    async with api_client(create_app(configured, pool=pool)) as client:
        before = await snapshot(pool, [delivery_id], [rid])
        for signed_at in (now - 660, now + 600, 1_000_000_000):
            body, headers = sendgrid_signer.signed_post(events, str(signed_at))
            response = await sendgrid_post(client, body, headers)
            refused(response, 403, "forbidden", TIMESTAMP_HEADER)
            assert "POSTBELL_CALLBACK_MAX_AGE_SECONDS" in response.json()["detail"]
            assert await snapshot(pool, [delivery_id], [rid]) == before
        body, headers = sendgrid_signer.signed_post(events, str(now - 540))
        response = await sendgrid_post(client, body, headers)
        assert (response.status_code, response.json()) == (200, {"status": "processed"})
    assert await status_of(pool, delivery_id) == ("bounced", "sendgrid:bounce")


async def test_ses_signed_time_outside_the_window_is_refused(
    api: httpx.AsyncClient,
    callbacks: httpx.AsyncClient,
    callback_settings: Settings,
    pool: db.Pool,
    worker: None,
    smtp: SmtpPeer,
    sns: SnsSigner,
) -> None:
    """An SNS bounce published in 2019, or dated two hours ahead, is refused (403,
    naming Timestamp) and nothing changes; one SNS still retries within its longest
    delivery policy (published 50 minutes ago, under the default 65-minute window) is
    applied."""
    assert callback_settings.callback_max_age_seconds == 3900
    rid, address, delivery_id = await sent_email(api)
    event = ses_bounce([address], **ses_names(delivery_id))
    now = dt.datetime.now(dt.UTC)
    before = await snapshot(pool, [delivery_id], [rid])
    for published in (dt.datetime(2019, 3, 1, 12, 0, tzinfo=dt.UTC), now + dt.timedelta(hours=2)):
        document = sns.notification(DEFAULT_TOPIC_ARN, event, timestamp=sns_timestamp(published))
        response = await sns_post(callbacks, document)
        refused(response, 403, "forbidden", "Timestamp")
        assert await snapshot(pool, [delivery_id], [rid]) == before
    late = sns.notification(
        DEFAULT_TOPIC_ARN, event, timestamp=sns_timestamp(now - dt.timedelta(minutes=50))
    )
    response = await sns_post(callbacks, late)
    assert (response.status_code, response.json()) == (200, {"status": "processed"})
    assert await status_of(pool, delivery_id) == ("bounced", "ses:Permanent/General")


# -- address matching ----------------------------------------------------------------------


async def test_bounce_for_a_replaced_email_leaves_the_new_one_active(
    api: httpx.AsyncClient,
    callbacks: httpx.AsyncClient,
    pool: db.Pool,
    worker: None,
    smtp: SmtpPeer,
    sendgrid_signer: SendGridEventSigner,
    sns: SnsSigner,
) -> None:
    """A first-seen, fresh hard bounce (SendGrid) and complaint (SES) about the old
    address, arriving after the host changed the recipient's email: the deliveries
    record them, the new address stays active and the next email to it is sent."""
    rid, old, sg_delivery = await sent_email(api)
    nid = await send(api, to=[rid], message="second", channels=["EMAIL"])
    (second,) = (await settled(api, nid, {"sent": 1}))["deliveries"]
    ses_delivery_id = int(second["id"])
    new = f"new-{old}"
    await api.put(f"/api/recipients/{rid}", headers=ADMIN, json={"email": new})

    body, headers = sendgrid_signer.signed_post([sg_event("bounce", sg_delivery, old)])
    assert (await sendgrid_post(callbacks, body, headers)).status_code == 200
    complaint = sns.notification(
        DEFAULT_TOPIC_ARN, ses_complaint([old], **ses_names(ses_delivery_id))
    )
    assert (await sns_post(callbacks, complaint)).status_code == 200

    assert await status_of(pool, sg_delivery) == ("bounced", "sendgrid:bounce")
    assert await status_of(pool, ses_delivery_id) == ("complained", "ses:complaint/abuse")
    after = await recipient(api, rid)
    assert (after["email"], after["email_inactive_at"]) == (new, None)
    nid = await send(api, to=[rid], message="to the new address", channels=["EMAIL"])
    (third,) = (await settled(api, nid, {"sent": 1}))["deliveries"]
    assert third["status"] == "sent"


async def test_bounce_matches_the_address_whatever_its_case(
    api: httpx.AsyncClient,
    callbacks: httpx.AsyncClient,
    pool: db.Pool,
    worker: None,
    smtp: SmtpPeer,
    sendgrid_signer: SendGridEventSigner,
) -> None:
    """The provider may report the address in another case than the host stored it:
    a hard bounce for reader@example.org marks Reader@Example.ORG inactive."""
    rid = unique("Case")
    stored = f"{rid}@Example.ORG"
    await api.put(f"/api/recipients/{rid}", headers=ADMIN, json={"email": stored})
    nid = await send(api, to=[rid], message="case", channels=["EMAIL"])
    (delivery,) = (await settled(api, nid, {"sent": 1}))["deliveries"]
    body, headers = sendgrid_signer.signed_post(
        [sg_event("bounce", int(delivery["id"]), stored.lower())]
    )
    assert (await sendgrid_post(callbacks, body, headers)).json() == {"status": "processed"}
    assert (await recipient(api, rid))["email_inactive_at"] is not None


async def test_opt_out_for_a_replaced_phone_leaves_the_new_one_active(
    api: httpx.AsyncClient,
    callbacks: httpx.AsyncClient,
    pool: db.Pool,
    worker: None,
    twilio: TwilioPeer,
) -> None:
    """A first-seen Twilio 21610 whose To is the recipient's previous phone moves its
    delivery to undelivered and leaves the new phone active."""
    old = new_phone()
    rid, delivery_id = await sent_sms(api, old)
    new = new_phone()
    await api.put(f"/api/recipients/{rid}", headers=ADMIN, json={"phone": new})
    request = twilio_request(delivery_id, twilio_status(new_sid(), "undelivered", old, "21610"))
    assert (await callbacks.post(**request)).json() == {"status": "processed"}
    assert await status_of(pool, delivery_id) == ("undelivered", "twilio:undelivered:21610")
    after = await recipient(api, rid)
    assert (after["phone"], after["phone_inactive_at"]) == (new, None)


# -- final states ----------------------------------------------------------------------------


async def test_sendgrid_final_states_are_kept(
    api: httpx.AsyncClient,
    callbacks: httpx.AsyncClient,
    pool: db.Pool,
    worker: None,
    smtp: SmtpPeer,
    sendgrid_signer: SendGridEventSigner,
) -> None:
    """Feedback moves a delivery only forward: bounced then delivered stays bounced;
    delivered then spamreport becomes complained; one POST with delivered and bounce
    ends bounced; a soft bounce (blocked) then a hard bounce stays undelivered, and
    as its delivery did not move the address stays active."""
    _, a_to, a = await sent_email(api)
    _, b_to, b = await sent_email(api)
    _, c_to, c = await sent_email(api)
    d_rid, d_to, d = await sent_email(api)
    steps: list[list[dict[str, Any]]] = [
        [sg_event("bounce", a, a_to), sg_event("delivered", b, b_to)],
        [sg_event("delivered", a, a_to), sg_event("spamreport", b, b_to)],
        [sg_event("delivered", c, c_to), sg_event("bounce", c, c_to)],
        [{**sg_event("bounce", d, d_to), "type": "blocked"}],
        [sg_event("bounce", d, d_to)],
    ]
    for events in steps:
        body, headers = sendgrid_signer.signed_post(events)
        assert (await sendgrid_post(callbacks, body, headers)).json() == {"status": "processed"}
    assert [await status_of(pool, i) for i in (a, b, c, d)] == [
        ("bounced", "sendgrid:bounce"),
        ("complained", "sendgrid:spamreport"),
        ("bounced", "sendgrid:bounce"),
        ("undelivered", "sendgrid:blocked"),
    ]
    assert (await recipient(api, d_rid))["email_inactive_at"] is None


async def test_ses_final_states_are_kept(
    api: httpx.AsyncClient,
    callbacks: httpx.AsyncClient,
    pool: db.Pool,
    worker: None,
    smtp: SmtpPeer,
    sns: SnsSigner,
) -> None:
    """An SES Delivery after a hard bounce leaves the delivery bounced; a complaint
    after a Delivery makes it complained."""
    _, a_to, a = await sent_email(api)
    _, b_to, b = await sent_email(api)
    for event in (
        ses_bounce([a_to], **ses_names(a)),
        ses_delivery([a_to], **ses_names(a)),
        ses_delivery([b_to], **ses_names(b)),
        ses_complaint([b_to], **ses_names(b)),
    ):
        response = await sns_post(callbacks, sns.notification(DEFAULT_TOPIC_ARN, event))
        assert response.json() == {"status": "processed"}
    assert await status_of(pool, a) == ("bounced", "ses:Permanent/General")
    assert await status_of(pool, b) == ("complained", "ses:complaint/abuse")


async def test_twilio_final_states_are_kept(
    api: httpx.AsyncClient,
    callbacks: httpx.AsyncClient,
    pool: db.Pool,
    worker: None,
    twilio: TwilioPeer,
) -> None:
    """Twilio's delivered after undelivered leaves the delivery undelivered; an
    opt-out (21610) for a delivery already delivered does not move it, so the phone
    stays active."""
    a_phone, b_phone = new_phone(), new_phone()
    _, a = await sent_sms(api, a_phone)
    b_rid, b = await sent_sms(api, b_phone)
    sid_a, sid_b = new_sid(), new_sid()
    for delivery_id, params in (
        (a, twilio_status(sid_a, "undelivered", a_phone, "30003")),
        (a, twilio_status(sid_a, "delivered", a_phone)),
        (b, twilio_status(sid_b, "delivered", b_phone)),
        (b, twilio_status(sid_b, "undelivered", b_phone, "21610")),
    ):
        response = await callbacks.post(**twilio_request(delivery_id, params))
        assert response.json() == {"status": "processed"}
    assert await status_of(pool, a) == ("undelivered", "twilio:undelivered:30003")
    assert await status_of(pool, b) == ("delivered", "delivered")
    assert (await recipient(api, b_rid))["phone_inactive_at"] is None


# -- hostile bodies ----------------------------------------------------------------------------


def _deep(inner: bytes = b"") -> bytes:
    return b"[" * DEEP + inner + b"]" * DEEP


def _sg_bounce(delivery_id: int, address: str, **fields: Any) -> dict[str, Any]:
    return {**sg_event("bounce", delivery_id, address), **fields}


SENDGRID_BODIES: list[tuple[str, Callable[[int, str], bytes], int, str, str | None]] = [
    # 100,000 deep where an event object belongs: refused at the first bracket.
    ("deep-array", lambda d, a: _deep(), 422, "invalid", "[0]"),
    (
        "deep-after-a-bounce",
        lambda d, a: b"[" + json.dumps(_sg_bounce(d, a)).encode() + b"," + _deep() + b"]",
        422,
        "invalid",
        "[1]",
    ),
    # ... and inside a field postbell skips: the decoder's depth guard, not a 500.
    (
        "deep-in-an-unknown-field",
        lambda d, a: json.dumps([_sg_bounce(d, a)]).encode()[:-2] + b',"x":' + _deep() + b"}]",
        400,
        "malformed_json",
        None,
    ),
    ("not-json", lambda d, a: b"\xff\xfe[{", 400, "malformed_json", None),
    (
        "truncated",
        lambda d, a: json.dumps([_sg_bounce(d, a)]).encode()[:-3],
        400,
        "malformed_json",
        None,
    ),
    ("an-object", lambda d, a: json.dumps(_sg_bounce(d, a)).encode(), 422, "invalid", None),
    (
        "event-not-a-string",
        lambda d, a: json.dumps([_sg_bounce(d, a), {"event": 5}]).encode(),
        422,
        "invalid",
        "[1].event",
    ),
    (
        "email-not-a-string",
        lambda d, a: json.dumps([_sg_bounce(d, a, email=[a])]).encode(),
        422,
        "invalid",
        "[0].email",
    ),
    (
        "huge-delivery-id",
        lambda d, a: json.dumps(
            [_sg_bounce(d, a), _sg_bounce(d, a, postbell_delivery_id="9" * 30)]
        ).encode(),
        422,
        "invalid",
        "[1].postbell_delivery_id",
    ),
    (
        "huge-integer-delivery-id",
        lambda d, a: json.dumps([_sg_bounce(d, a, postbell_delivery_id=10**30)]).encode(),
        422,
        "invalid",
        "[0].postbell_delivery_id",
    ),
    (
        "float-overflow",
        lambda d, a: (
            json.dumps([_sg_bounce(d, a, postbell_delivery_id=0)])
            .encode()
            .replace(b'"postbell_delivery_id": 0', b'"postbell_delivery_id": 1e400')
        ),
        422,
        "invalid",
        "[0].postbell_delivery_id",
    ),
    (
        "unicode-digits-delivery-id",
        lambda d, a: json.dumps([_sg_bounce(d, a, postbell_delivery_id="١٢")]).encode(),
        422,
        "invalid",
        "[0].postbell_delivery_id",
    ),
    (
        "negative-delivery-id",
        lambda d, a: json.dumps([_sg_bounce(d, a, postbell_delivery_id=f"-{d}")]).encode(),
        422,
        "invalid",
        "[0].postbell_delivery_id",
    ),
    (
        "event-id-too-long",
        lambda d, a: json.dumps([_sg_bounce(d, a, sg_event_id="x" * 500)]).encode(),
        422,
        "invalid",
        "[0].sg_event_id",
    ),
]


@pytest.mark.parametrize(
    ("body", "status", "error", "field"),
    [case[1:] for case in SENDGRID_BODIES],
    ids=[case[0] for case in SENDGRID_BODIES],
)
async def test_sendgrid_hostile_bodies_are_refused(
    api: httpx.AsyncClient,
    callbacks: httpx.AsyncClient,
    pool: db.Pool,
    worker: None,
    smtp: SmtpPeer,
    sendgrid_signer: SendGridEventSigner,
    body: Callable[[int, str], bytes],
    status: int,
    error: str,
    field: str | None,
) -> None:
    """Validly signed and fresh, but not a well-formed array of events (too deep, not
    JSON, the wrong shape, the wrong types, numbers no delivery id can be): a 4xx
    naming the field, and not even the valid bounce beside the bad value is applied."""
    rid, address, delivery_id = await sent_email(api)
    payload = body(delivery_id, address)
    before = await snapshot(pool, [delivery_id], [rid])
    response = await sendgrid_post(callbacks, payload, sendgrid_signer.sign(payload))
    refused(response, status, error, field)
    assert await snapshot(pool, [delivery_id], [rid]) == before


SENDGRID_HEADERS: list[tuple[str, dict[str, bytes], str]] = [
    ("timestamp-superscript-digits", {TIMESTAMP_HEADER: "²²²".encode("latin-1")}, TIMESTAMP_HEADER),
    (
        "timestamp-fullwidth-digits",
        {TIMESTAMP_HEADER: "\uff11\uff17\uff10\uff10\uff10\uff10\uff10\uff10\uff10\uff10".encode()},
        TIMESTAMP_HEADER,
    ),
    ("timestamp-empty", {TIMESTAMP_HEADER: b""}, TIMESTAMP_HEADER),
    ("timestamp-exponent", {TIMESTAMP_HEADER: b"1.7e9"}, TIMESTAMP_HEADER),
    ("timestamp-signed", {TIMESTAMP_HEADER: b"+1700000000"}, TIMESTAMP_HEADER),
    ("timestamp-13-digits", {TIMESTAMP_HEADER: b"9" * 13}, TIMESTAMP_HEADER),
    ("signature-not-base64", {SIGNATURE_HEADER: b"not base64 at all!"}, SIGNATURE_HEADER),
    (
        "signature-latin-1",
        {SIGNATURE_HEADER: "MEUCIQ\u00e9\u00e9==".encode("latin-1")},
        SIGNATURE_HEADER,
    ),
    ("signature-of-nothing", {SIGNATURE_HEADER: b"AAAAAAAAAAAAAAAA"}, SIGNATURE_HEADER),
    ("signature-missing", {SIGNATURE_HEADER: b""}, SIGNATURE_HEADER),
]


@pytest.mark.parametrize(
    ("override", "field"),
    [case[1:] for case in SENDGRID_HEADERS],
    ids=[case[0] for case in SENDGRID_HEADERS],
)
async def test_sendgrid_hostile_headers_are_refused(
    api: httpx.AsyncClient,
    callbacks: httpx.AsyncClient,
    pool: db.Pool,
    worker: None,
    smtp: SmtpPeer,
    sendgrid_signer: SendGridEventSigner,
    override: dict[str, bytes],
    field: str,
) -> None:
    """A timestamp header that is not ASCII digits (superscript or fullwidth digits,
    which str.isdigit takes), or a signature that is not base64 or does not verify:
    403 naming the header, and the bounce in the body is not applied."""
    rid, address, delivery_id = await sent_email(api)
    body, headers = sendgrid_signer.signed_post([sg_event("bounce", delivery_id, address)])
    raw = {k: v.encode() for k, v in headers.items()} | override
    before = await snapshot(pool, [delivery_id], [rid])
    response = await sendgrid_post(callbacks, body, raw)
    refused(response, 403, "forbidden", field)
    assert await snapshot(pool, [delivery_id], [rid]) == before


def _sns_bounce_message(delivery_id: int, address: str, **mail: Any) -> dict[str, Any]:
    event = ses_bounce([address], **ses_names(delivery_id))
    event["mail"].update(mail)
    return event


SNS_DOCUMENTS: list[tuple[str, Callable[[SnsSigner, int, str], bytes], int, str, str | None]] = [
    ("deep-array", lambda s, d, a: _deep(), 422, "invalid", None),
    (
        "deep-in-an-unknown-field",
        lambda s, d, a: b'{"Type": "Notification", "x": ' + _deep() + b"}",
        400,
        "malformed_json",
        None,
    ),
    ("not-json", lambda s, d, a: b"\x00not json", 400, "malformed_json", None),
    ("an-array", lambda s, d, a: b"[]", 422, "invalid", None),
    (
        "type-not-a-string",
        lambda s, d, a: json.dumps(
            {**s.notification(DEFAULT_TOPIC_ARN, _sns_bounce_message(d, a)), "Type": 5}
        ).encode(),
        422,
        "invalid",
        "Type",
    ),
    (
        "message-id-too-long",
        lambda s, d, a: json.dumps(
            {**s.notification(DEFAULT_TOPIC_ARN, _sns_bounce_message(d, a)), "MessageId": "m" * 500}
        ).encode(),
        422,
        "invalid",
        "MessageId",
    ),
    (
        "signed-deep-message",
        lambda s, d, a: json.dumps(s.notification(DEFAULT_TOPIC_ARN, _deep().decode())).encode(),
        422,
        "invalid",
        "Message",
    ),
    (
        "signed-deep-in-the-message",
        lambda s, d, a: json.dumps(
            s.notification(
                DEFAULT_TOPIC_ARN,
                json.dumps(_sns_bounce_message(d, a))[:-1] + ', "x": ' + _deep().decode() + "}",
            )
        ).encode(),
        400,
        "malformed_json",
        "Message",
    ),
    (
        "signed-message-not-json",
        lambda s, d, a: json.dumps(s.notification(DEFAULT_TOPIC_ARN, "Bounce!")).encode(),
        400,
        "malformed_json",
        "Message",
    ),
    (
        "signed-recipients-not-a-list",
        lambda s, d, a: json.dumps(
            s.notification(
                DEFAULT_TOPIC_ARN,
                {
                    **_sns_bounce_message(d, a),
                    "bounce": {"bounceType": "Permanent", "bouncedRecipients": a},
                },
            )
        ).encode(),
        422,
        "invalid",
        "Message.bounce.bouncedRecipients",
    ),
    (
        "signed-huge-delivery-id",
        lambda s, d, a: json.dumps(
            s.notification(
                DEFAULT_TOPIC_ARN,
                _sns_bounce_message(d, a, tags={"postbell_delivery_id": ["9" * 40]}),
            )
        ).encode(),
        422,
        "invalid",
        "Message.mail.tags.postbell_delivery_id",
    ),
    (
        "signed-timestamp-not-a-time",
        lambda s, d, a: json.dumps(
            s.notification(DEFAULT_TOPIC_ARN, _sns_bounce_message(d, a), timestamp="yesterday")
        ).encode(),
        403,
        "forbidden",
        "Timestamp",
    ),
    (
        "signed-timestamp-arabic-digits",
        lambda s, d, a: json.dumps(
            s.notification(
                DEFAULT_TOPIC_ARN,
                _sns_bounce_message(d, a),
                timestamp="٢٠٢٥-01-01T00:00:00.000Z",
            )
        ).encode(),
        403,
        "forbidden",
        "Timestamp",
    ),
    (
        "signature-not-base64",
        lambda s, d, a: json.dumps(
            {**s.notification(DEFAULT_TOPIC_ARN, _sns_bounce_message(d, a)), "Signature": "é!"}
        ).encode(),
        403,
        "forbidden",
        "Signature",
    ),
    (
        "unknown-signature-version",
        lambda s, d, a: json.dumps(
            {
                **s.notification(DEFAULT_TOPIC_ARN, _sns_bounce_message(d, a)),
                "SignatureVersion": "3",
            }
        ).encode(),
        403,
        "forbidden",
        "Signature",
    ),
]


@pytest.mark.parametrize(
    ("document", "status", "error", "field"),
    [case[1:] for case in SNS_DOCUMENTS],
    ids=[case[0] for case in SNS_DOCUMENTS],
)
async def test_ses_hostile_documents_are_refused(
    api: httpx.AsyncClient,
    callbacks: httpx.AsyncClient,
    pool: db.Pool,
    worker: None,
    smtp: SmtpPeer,
    sns: SnsSigner,
    document: Callable[[SnsSigner, int, str], bytes],
    status: int,
    error: str,
    field: str | None,
) -> None:
    """SNS documents that are too deep, not JSON or of the wrong shape (400/422 before
    any signature is checked), and validly signed ones whose Message or Timestamp is
    hostile: a 4xx naming the field, and nothing changes."""
    rid, address, delivery_id = await sent_email(api)
    body = document(sns, delivery_id, address)
    before = await snapshot(pool, [delivery_id], [rid])
    response = await callbacks.post("/api/callbacks/ses", content=body)
    refused(response, status, error, field)
    assert await snapshot(pool, [delivery_id], [rid]) == before


def _twilio_signed(params: dict[str, str], query_string: str) -> dict[str, Any]:
    return twilio_request(0, params, query_string=query_string)


def _twilio_raw(body: bytes, query_string: str = "d=1") -> dict[str, Any]:
    """A request whose body no signature could be computed over (not a form)."""
    return {
        "url": f"/api/callbacks/twilio?{query_string}",
        "content": body,
        "headers": {
            "X-Twilio-Signature": "c2lnbmF0dXJl",
            "Content-Type": "application/x-www-form-urlencoded",
        },
    }


TWILIO_REQUESTS: list[tuple[str, Callable[[int, str], dict[str, Any]], int, str, str | None]] = [
    (
        "body-not-utf-8",
        lambda d, p: _twilio_raw(
            urlencode(twilio_status(new_sid(), "undelivered", p, "21610")).encode() + b"&x=\xff",
            f"d={d}",
        ),
        400,
        "malformed_json",
        None,
    ),
    (
        "percent-encoded-not-utf-8",
        lambda d, p: _twilio_raw(
            b"MessageSid=SM1&MessageStatus=undelivered&ErrorCode=21610&To=%FF", f"d={d}"
        ),
        400,
        "malformed_json",
        None,
    ),
    (
        "too-many-fields",
        lambda d, p: _twilio_signed(
            twilio_status(new_sid(), "undelivered", p, "21610")
            | {f"f{n}": "x" for n in range(120)},
            f"d={d}",
        ),
        400,
        "malformed_json",
        None,
    ),
    (
        "a-field-twice",
        lambda d, p: _twilio_raw(
            f"MessageSid=SM1&MessageStatus=delivered&MessageStatus=undelivered&ErrorCode=21610&To={p}".encode(),
            f"d={d}",
        ),
        400,
        "malformed_json",
        "MessageStatus",
    ),
    (
        "signed-deep-json-body",
        lambda d, p: _twilio_signed({_deep().decode(): ""}, f"d={d}"),
        422,
        "invalid",
        "MessageSid",
    ),
    (
        "signed-deep-bracket-keys",
        lambda d, p: _twilio_signed(
            {
                "MessageSid" + "[a]" * 30_000: new_sid(),
                "MessageStatus": "undelivered",
                "ErrorCode": "21610",
                "To": p,
            },
            f"d={d}",
        ),
        422,
        "invalid",
        "MessageSid",
    ),
    (
        "signed-no-status",
        lambda d, p: _twilio_signed(
            {"MessageSid": new_sid(), "To": p, "ErrorCode": "21610"}, f"d={d}"
        ),
        422,
        "invalid",
        "MessageStatus",
    ),
    (
        "signed-error-code-not-a-number",
        lambda d, p: _twilio_signed(
            twilio_status(new_sid(), "undelivered", p, "21610 OR 1=1"), f"d={d}"
        ),
        422,
        "invalid",
        "ErrorCode",
    ),
    (
        "signed-huge-delivery-id",
        lambda d, p: _twilio_signed(
            twilio_status(new_sid(), "undelivered", p, "21610"), "d=" + "9" * 30
        ),
        422,
        "invalid",
        "d",
    ),
    (
        "signed-delivery-id-not-a-number",
        lambda d, p: _twilio_signed(twilio_status(new_sid(), "undelivered", p, "21610"), f"d={d}x"),
        422,
        "invalid",
        "d",
    ),
    (
        "signed-delivery-id-twice",
        lambda d, p: _twilio_signed(
            twilio_status(new_sid(), "undelivered", p, "21610"), f"d={d}&d={d}"
        ),
        422,
        "invalid",
        "d",
    ),
    (
        "signature-latin-1",
        lambda d, p: {
            **_twilio_signed(twilio_status(new_sid(), "undelivered", p, "21610"), f"d={d}"),
            "headers": {"X-Twilio-Signature": "\u00e9t\u00e9".encode("latin-1")},
        },
        403,
        "forbidden",
        "X-Twilio-Signature",
    ),
]


@pytest.mark.parametrize(
    ("request_for", "status", "error", "field"),
    [case[1:] for case in TWILIO_REQUESTS],
    ids=[case[0] for case in TWILIO_REQUESTS],
)
async def test_twilio_hostile_requests_are_refused(
    api: httpx.AsyncClient,
    callbacks: httpx.AsyncClient,
    pool: db.Pool,
    worker: None,
    twilio: TwilioPeer,
    request_for: Callable[[int, str], dict[str, Any]],
    status: int,
    error: str,
    field: str | None,
) -> None:
    """Form bodies that are not UTF-8, too many fields or a field twice (400), validly
    signed ones of the wrong shape (a JSON body 100,000 deep, 30,000 nested brackets,
    no status, a non-numeric error code, a delivery id no bigint holds) (422), a
    signature that is not ASCII (403): nothing changes, not even the 21610 in them."""
    phone = new_phone()
    rid, delivery_id = await sent_sms(api, phone)
    before = await snapshot(pool, [delivery_id], [rid])
    response = await callbacks.post(**request_for(delivery_id, phone))
    refused(response, status, error, field)
    assert await snapshot(pool, [delivery_id], [rid]) == before


async def test_twilio_query_string_that_is_not_ascii_is_refused(
    callback_settings: Settings, pool: db.Pool
) -> None:
    """Raw non-ASCII bytes in the callback's query string (no HTTP client sends them,
    so the ASGI app is called with them directly): 400 naming d, nothing recorded."""
    app = create_app(callback_settings, pool=pool)
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"MessageSid=SM1&MessageStatus=delivered"}

    async def send_(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": "/api/callbacks/twilio",
        "raw_path": b"/api/callbacks/twilio",
        "query_string": b"d=\xff\xfe",
        "root_path": "",
        "headers": [
            (b"content-type", b"application/x-www-form-urlencoded"),
            (b"x-twilio-signature", b"c2lnbmF0dXJl"),
        ],
        "server": ("testserver", 80),
        "client": ("127.0.0.1", 1),
    }
    async with api_client(app):
        before = await snapshot(pool, [], [])
        await app(scope, receive, send_)
        assert await snapshot(pool, [], []) == before
    (start,) = [m for m in sent if m["type"] == "http.response.start"]
    body = json.loads(
        b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    )
    assert (start["status"], body["error"], body["field"]) == (400, "malformed_json", "d")


# -- the SNS signing certificate's host ------------------------------------------------------


async def test_sns_certificate_from_a_host_that_is_not_amazons_is_refused(
    api: httpx.AsyncClient,
    callback_settings: Settings,
    pool: db.Pool,
    worker: None,
    smtp: SmtpPeer,
    sns: SnsSigner,
) -> None:
    """An attacker's SNS-shaped bounce, signed with its own key and pointing at its own
    certificate on 127.0.0.1 (a host that is not sns.<region>.amazonaws.com and not the
    one SNS_CERT_URL_PREFIXES allows), is refused 403 without its certificate ever
    being fetched: as is the same certificate behind the allowed prefix read as a
    string ('http://127.0.0.1:<port>@127.0.0.1:<attacker>/...' or via 'localhost').
    The same bounce signed by the allowed peer is applied."""
    attacker = SnsSigner()
    attacker.start()
    try:
        # An operator's allow-list, written without a trailing slash.
        configured = dataclasses.replace(callback_settings, sns_cert_url_prefixes=(sns.url,))
        rid, address, delivery_id = await sent_email(api)
        forged = attacker.notification(
            DEFAULT_TOPIC_ARN, ses_bounce([address], **ses_names(delivery_id))
        )
        cert_urls = [
            attacker.cert_url,
            f"{sns.url}@127.0.0.1:{attacker.port}{CERT_PATH}",
            f"{sns.url}:@127.0.0.1:{attacker.port}{CERT_PATH}",
            f"http://localhost:{attacker.port}{CERT_PATH}",
            f"{sns.url}\\@127.0.0.1:{attacker.port}{CERT_PATH}",
            f"https://sns.eu-west-1.amazonaws.com@127.0.0.1:{attacker.port}{CERT_PATH}",
        ]
        async with api_client(create_app(configured, pool=pool)) as client:
            before = await snapshot(pool, [delivery_id], [rid])
            for url in cert_urls:
                response = await sns_post(client, {**forged, "SigningCertURL": url})
                refused(response, 403, "forbidden", "SigningCertURL")
                assert await snapshot(pool, [delivery_id], [rid]) == before, url
            assert attacker.cert_fetches == 0

            legit = sns.notification(
                DEFAULT_TOPIC_ARN, ses_bounce([address], **ses_names(delivery_id))
            )
            response = await sns_post(client, legit)
            assert (response.status_code, response.json()) == (200, {"status": "processed"})
        assert await status_of(pool, delivery_id) == ("bounced", "ses:Permanent/General")
        assert (await recipient(api, rid))["email_inactive_at"] is not None
    finally:
        attacker.stop()
