"""The email provider peers and callback signers, checked on their own.

SendGridPeer and SesPeer are driven over real local HTTP (aiohttp, httpx); SES
requests are signed by botocore, so the peer's own SigV4 implementation is checked
against AWS's reference signer (and against AWS's published test vectors). SNS and
SendGrid Event Webhook signatures are checked by verifiers that share no code with
the signers.
"""

from __future__ import annotations

import base64
import datetime as dt
import json
from collections.abc import Callable, Iterator
from email.message import EmailMessage
from typing import Any

import aiohttp
import botocore.auth
import httpx
import pytest
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa

from tests.peers.sendgrid import UNAUTHORIZED_MESSAGE, ScriptedFailure, SendGridPeer
from tests.peers.ses import SesFailure, SesPeer, SigV4Error, verify_sigv4
from tests.peers.sns import (
    CERT_PATH,
    SIGNATURE_HEADER,
    TIMESTAMP_HEADER,
    SendGridEventSigner,
    SignatureVersion,
    SnsSigner,
    http_headers,
    sendgrid_event,
    ses_bounce,
    ses_complaint,
    ses_delivery,
    verify,
)

TOPIC = "arn:aws:sns:eu-west-1:123456789012:postbell-ses-events"


@pytest.fixture(scope="module")
def sns() -> Iterator[SnsSigner]:
    peer = SnsSigner()
    peer.start()
    yield peer
    peer.stop()


# -- SendGrid -------------------------------------------------------------------------------


def sg_payload(to: str = "reader@example.org", **overrides: Any) -> dict[str, Any]:
    """A payload shaped as postbell's SendGrid transport builds it."""
    payload: dict[str, Any] = {
        "personalizations": [
            {
                "to": [{"email": to, "name": "Reader"}],
                "custom_args": {"postbell_delivery_id": "42"},
            }
        ],
        "from": {"email": "notify@postbell.test", "name": "Postbell"},
        "subject": "Hello",
        "content": [
            {"type": "text/plain", "value": "Line one"},
            {"type": "text/html", "value": "<p>Line one</p>"},
        ],
        "headers": {"Message-ID": "<42.7@postbell.test>", "X-Postbell-Delivery": "42"},
    }
    payload.update(overrides)
    return payload


DEFAULT = "default"


async def sg_post(
    peer: SendGridPeer, payload: Any, authorization: str | None = DEFAULT
) -> tuple[int, dict[str, str], bytes]:
    """POST to the peer; ``authorization`` is the header's value (None: no header)."""
    headers = {"Content-Type": "application/json"}
    if authorization == DEFAULT:
        headers["Authorization"] = f"Bearer {peer.api_key}"
    elif authorization is not None:
        headers["Authorization"] = authorization
    body = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
    async with (
        aiohttp.ClientSession() as session,
        session.post(f"{peer.url}/v3/mail/send", data=body, headers=headers) as response,
    ):
        return response.status, dict(response.headers), await response.read()


async def test_sendgrid_accepts_a_valid_send(sendgrid: SendGridPeer) -> None:
    status, headers, body = await sg_post(sendgrid, sg_payload("ok@example.org"))
    assert status == 202
    assert body == b""
    assert headers["X-Message-Id"]
    (message,) = sendgrid.messages_to("ok@example.org")
    assert message.x_message_id == headers["X-Message-Id"]
    assert [a.email for a in message.to] == ["ok@example.org"]
    assert message.sender.email == "notify@postbell.test"
    assert message.subject == "Hello"
    assert (message.text, message.html) == ("Line one", "<p>Line one</p>")
    assert message.headers["Message-ID"] == "<42.7@postbell.test>"
    assert message.custom_args == {"postbell_delivery_id": "42"}
    assert sendgrid.env() == {
        "POSTBELL_EMAIL_PROVIDER": "sendgrid",
        "SENDGRID_API_KEY": sendgrid.api_key,
        "SENDGRID_API_URL": sendgrid.url,
        "EMAIL_FROM": "Postbell <notify@postbell.test>",
    }


@pytest.mark.parametrize(
    "authorization",
    [
        lambda key: "Bearer SG.wrong",
        lambda key: None,
        lambda key: "Bearer ",
        lambda key: key,
        lambda key: f"Basic {key}",
    ],
    ids=["wrong-key", "no-header", "empty-key", "no-bearer", "basic"],
)
async def test_sendgrid_refuses_a_wrong_or_missing_key(
    sendgrid: SendGridPeer, authorization: Callable[[str], str | None]
) -> None:
    status, _, body = await sg_post(
        sendgrid, sg_payload("nokey@example.org"), authorization(sendgrid.api_key)
    )
    assert status == 401
    assert json.loads(body) == {
        "errors": [{"message": UNAUTHORIZED_MESSAGE, "field": None, "help": None}]
    }
    assert sendgrid.messages_to("nokey@example.org") == []


async def test_sendgrid_merges_each_personalization_into_one_email(sendgrid: SendGridPeer) -> None:
    payload = sg_payload(
        custom_args={"campaign": "c1"},
        personalizations=[
            {"to": [{"email": "p1@example.org"}], "custom_args": {"postbell_delivery_id": "1"}},
            {
                "to": [{"email": "p2@example.org"}],
                "subject": "Own subject",
                "headers": {"X-Postbell-Delivery": "2"},
                "custom_args": {"postbell_delivery_id": "2", "campaign": "c2"},
            },
        ],
    )
    status, _, _ = await sg_post(sendgrid, payload)
    assert status == 202
    (first,) = sendgrid.messages_to("p1@example.org")
    (second,) = sendgrid.messages_to("p2@example.org")
    assert first.custom_args == {"campaign": "c1", "postbell_delivery_id": "1"}
    assert second.custom_args == {"campaign": "c2", "postbell_delivery_id": "2"}
    assert (first.subject, second.subject) == ("Hello", "Own subject")
    assert second.headers["X-Postbell-Delivery"] == "2"
    assert first.headers["X-Postbell-Delivery"] == "42"


def _bad(**overrides: Any) -> dict[str, Any]:
    return sg_payload("bad@example.org", **overrides)


@pytest.mark.parametrize(
    ("payload", "field"),
    [
        (_bad(personalizations=[]), "personalizations"),
        (_bad(personalizations=[{"to": []}]), "personalizations.0.to"),
        (_bad(personalizations=[{"to": [{"email": "not-an-address"}]}]), None),
        ({k: v for k, v in _bad().items() if k != "from"}, "from.email"),
        ({k: v for k, v in _bad().items() if k != "subject"}, "subject"),
        (_bad(content=[]), "content"),
        (_bad(content=[{"type": "text/plain", "value": ""}]), "content.0.value"),
        (
            _bad(
                content=[
                    {"type": "text/html", "value": "<p>x</p>"},
                    {"type": "text/plain", "value": "x"},
                ]
            ),
            "content",
        ),
        (_bad(headers={"Subject": "override"}), "headers.Subject"),
        (_bad(headers={"X-Count": 3}), "headers"),
        (
            _bad(personalizations=[{"to": [{"email": "a@x.org"}], "custom_args": {"id": 7}}]),
            "personalizations.0.custom_args",
        ),
        (
            _bad(personalizations=[{"to": [{"email": "a@x.org"}, {"email": "A@x.org"}]}]),
            "personalizations.0.to",
        ),
        (["not", "an", "object"], None),
    ],
)
async def test_sendgrid_refuses_malformed_payloads(
    sendgrid: SendGridPeer, payload: Any, field: str | None
) -> None:
    before = len(sendgrid.accepted)
    status, _, body = await sg_post(sendgrid, payload)
    assert status == 400
    errors = json.loads(body)["errors"]
    assert errors and all(set(e) == {"message", "field", "help"} for e in errors)
    if field is not None:
        assert field in [e["field"] for e in errors], errors
    assert len(sendgrid.accepted) == before


async def test_sendgrid_lists_every_problem_and_refuses_non_json(sendgrid: SendGridPeer) -> None:
    payload = {"personalizations": [{"to": [{"email": "x"}]}], "content": []}
    status, _, body = await sg_post(sendgrid, payload)
    assert status == 400
    fields = {e["field"] for e in json.loads(body)["errors"]}
    assert {"from.email", "content", "subject", "personalizations.0.to.0.email"} <= fields
    status, _, body = await sg_post(sendgrid, b"{not json")
    assert status == 400
    assert json.loads(body)["errors"][0]["message"] == "Bad Request"


async def test_sendgrid_scripted_failures_come_in_order(sendgrid: SendGridPeer) -> None:
    address = "Flaky@Example.org"
    sendgrid.script(address, 429, ScriptedFailure(429, retry_after="3"), 500, 503, 400, 403)
    seen = []
    for _ in range(6):
        status, headers, body = await sg_post(sendgrid, sg_payload("flaky@example.org"))
        seen.append((status, headers.get("Retry-After"), "X-RateLimit-Reset" in headers))
        assert json.loads(body)["errors"][0]["message"]
    assert seen == [
        (429, None, True),
        (429, "3", True),
        (500, None, False),
        (503, None, False),
        (400, None, False),
        (403, None, False),
    ]
    other, _, _ = await sg_post(sendgrid, sg_payload("steady@example.org"))
    assert other == 202
    status, _, _ = await sg_post(sendgrid, sg_payload("flaky@example.org"))
    assert status == 202
    assert len(sendgrid.messages_to("flaky@example.org")) == 1


async def test_sendgrid_outage_and_return_on_the_same_port() -> None:
    peer = SendGridPeer(api_key="SG.outage")
    peer.start()
    try:
        peer.stop()
        with pytest.raises(aiohttp.ClientConnectionError):
            await sg_post(peer, sg_payload("outage@example.org"))
        peer.start()
        status, _, _ = await sg_post(peer, sg_payload("outage@example.org"))
        assert status == 202
    finally:
        peer.stop()


# -- SES ------------------------------------------------------------------------------------


def mime_message(to: str, message_id: str = "<42.7@postbell.test>") -> bytes:
    message = EmailMessage()
    message["From"] = "Postbell <notify@postbell.test>"
    message["To"] = f"Reader <{to}>"
    message["Subject"] = "Grüße from SES"
    message["Message-ID"] = message_id
    message.set_content("Line one\n")
    message.add_alternative("<p>Line one</p>\n", subtype="html")
    return message.as_bytes()


def ses_raw_payload(to: str, **extra: Any) -> dict[str, Any]:
    """A payload shaped as postbell's SES transport builds it."""
    return {
        "FromEmailAddress": "Postbell <notify@postbell.test>",
        "Destination": {"ToAddresses": [to]},
        "Content": {"Raw": {"Data": base64.b64encode(mime_message(to)).decode()}},
        "EmailTags": [{"Name": "postbell_delivery_id", "Value": "42"}],
        **extra,
    }


def botocore_signed(
    peer: SesPeer,
    body: bytes,
    *,
    key_id: str | None = None,
    secret: str | None = None,
    region: str | None = None,
    service: str = "ses",
    extra_headers: dict[str, str] | None = None,
) -> dict[str, str]:
    """Headers for POSTing ``body`` to the peer, signed by botocore's SigV4Auth."""
    request = AWSRequest(
        method="POST",
        url=peer.endpoint,
        data=body,
        headers={"Content-Type": "application/json", **(extra_headers or {})},
    )
    credentials = Credentials(key_id or peer.access_key_id, secret or peer.secret_access_key)
    SigV4Auth(credentials, service, region or peer.region).add_auth(request)
    return dict(request.headers.items())


async def ses_post(peer: SesPeer, body: bytes, headers: dict[str, str]) -> httpx.Response:
    async with httpx.AsyncClient() as client:
        return await client.post(peer.endpoint, content=body, headers=headers)


def error_type(response: httpx.Response) -> str:
    return response.headers["x-amzn-ErrorType"].split(":")[0]


async def test_ses_accepts_a_botocore_signed_raw_email(ses: SesPeer) -> None:
    body = json.dumps(ses_raw_payload("raw@example.org")).encode()
    headers = botocore_signed(ses, body)
    async with (
        aiohttp.ClientSession() as session,
        session.post(ses.endpoint, data=body, headers=headers) as response,
    ):
        assert response.status == 200, await response.text()
        answer = await response.json()
    (message,) = ses.messages_to("raw@example.org")
    assert answer == {"MessageId": message.ses_message_id}
    assert message.kind == "Raw"
    assert message.subject == "Grüße from SES"
    assert message.to == ["raw@example.org"]
    assert message.sender == "Postbell <notify@postbell.test>"
    assert message.message_id == "<42.7@postbell.test>"
    assert message.text == "Line one\n"
    assert message.html == "<p>Line one</p>\n"
    assert message.tags == {"postbell_delivery_id": "42"}
    assert ses.env()["SES_ENDPOINT_URL"] == ses.url
    assert ses.env()["AWS_REGION"] == "eu-west-1"


async def test_ses_accepts_simple_content(ses: SesPeer) -> None:
    payload = {
        "FromEmailAddress": "notify@postbell.test",
        "Destination": {"ToAddresses": ["simple@example.org"]},
        "Content": {
            "Simple": {
                "Subject": {"Data": "Hi"},
                "Body": {"Text": {"Data": "plain"}, "Html": {"Data": "<b>html</b>"}},
            }
        },
    }
    body = json.dumps(payload).encode()
    response = await ses_post(ses, body, botocore_signed(ses, body))
    assert response.status_code == 200, response.text
    (message,) = ses.messages_to("simple@example.org")
    assert (message.kind, message.subject, message.text, message.html) == (
        "Simple",
        "Hi",
        "plain",
        "<b>html</b>",
    )


async def test_ses_refuses_a_tampered_body(ses: SesPeer) -> None:
    body = json.dumps(ses_raw_payload("tamper@example.org")).encode()
    headers = botocore_signed(ses, body)
    tampered = body.replace(b"tamper@example.org", b"tamper@example.net")
    response = await ses_post(ses, tampered, headers)
    assert response.status_code == 403
    assert error_type(response) == "SignatureDoesNotMatch"
    assert response.json()["message"].startswith(
        "The request signature we calculated does not match the signature you provided."
    )
    assert ses.messages_to("tamper@example.net") == []


@pytest.mark.parametrize(
    ("signing", "expected"),
    [
        ({"secret": "not-the-secret"}, "SignatureDoesNotMatch"),
        ({"region": "us-east-1"}, "SignatureDoesNotMatch"),
        ({"service": "email"}, "SignatureDoesNotMatch"),
        ({"key_id": "AKIDUNKNOWN"}, "UnrecognizedClientException"),
        ({"extra_headers": {"X-Amz-Content-SHA256": "0" * 64}}, "SignatureDoesNotMatch"),
    ],
)
async def test_ses_refuses_wrong_credentials_and_scopes(
    ses: SesPeer, signing: dict[str, Any], expected: str
) -> None:
    body = json.dumps(ses_raw_payload("wrong@example.org")).encode()
    response = await ses_post(ses, body, botocore_signed(ses, body, **signing))
    assert response.status_code == 403
    assert error_type(response) == expected
    assert "message" in response.json()
    assert ses.messages_to("wrong@example.org") == []


@pytest.mark.parametrize("minutes", [-6, 6])
async def test_ses_refuses_a_skewed_date(
    ses: SesPeer, monkeypatch: pytest.MonkeyPatch, minutes: int
) -> None:
    skewed = dt.datetime.now(dt.UTC).replace(tzinfo=None) + dt.timedelta(minutes=minutes)
    monkeypatch.setattr(botocore.auth, "get_current_datetime", lambda *a, **k: skewed)
    body = json.dumps(ses_raw_payload("late@example.org")).encode()
    response = await ses_post(ses, body, botocore_signed(ses, body))
    assert response.status_code == 403
    assert error_type(response) == "InvalidSignatureException"
    assert "Signature" in response.json()["message"]


async def test_ses_refuses_an_unsigned_request(ses: SesPeer) -> None:
    body = json.dumps(ses_raw_payload("unsigned@example.org")).encode()
    response = await ses_post(ses, body, {"Content-Type": "application/json"})
    assert response.status_code == 403
    assert error_type(response) == "MissingAuthenticationTokenException"


@pytest.mark.parametrize(
    ("payload", "expected"),
    [
        ({"Destination": {"ToAddresses": ["x@example.org"]}}, "BadRequestException"),
        (
            ses_raw_payload("tag@example.org", EmailTags=[{"Name": "id", "Value": "4 2"}]),
            "BadRequestException",
        ),
        (
            {
                "Destination": {"ToAddresses": ["long@example.org"]},
                "Content": {
                    "Raw": {
                        "Data": base64.b64encode(
                            b"From: a@postbell.test\r\nTo: long@example.org\r\n\r\n" + b"x" * 1200
                        ).decode()
                    }
                },
            },
            "MessageRejected",
        ),
    ],
)
async def test_ses_refuses_malformed_requests(
    ses: SesPeer, payload: dict[str, Any], expected: str
) -> None:
    body = json.dumps(payload).encode()
    response = await ses_post(ses, body, botocore_signed(ses, body))
    assert response.status_code == 400
    assert error_type(response) == expected
    assert response.json()["message"]


async def test_ses_scripted_failures_come_in_order(ses: SesPeer) -> None:
    ses.script(
        "flaky@example.org",
        400,
        429,
        500,
        503,
        "SendingPausedException",
        SesFailure("LimitExceededException", message="Daily message quota exceeded."),
    )
    seen = []
    for _ in range(6):
        body = json.dumps(ses_raw_payload("flaky@example.org")).encode()
        response = await ses_post(ses, body, botocore_signed(ses, body))
        seen.append((response.status_code, error_type(response)))
        assert response.headers["x-amzn-RequestId"]
        if error_type(response) == "MessageRejected":
            assert response.json()["message"].startswith("Email address is not verified.")
    assert seen == [
        (400, "MessageRejected"),
        (429, "TooManyRequestsException"),
        (500, "InternalFailure"),
        (503, "ServiceUnavailable"),
        (400, "SendingPausedException"),
        (400, "LimitExceededException"),
    ]
    body = json.dumps(ses_raw_payload("flaky@example.org")).encode()
    response = await ses_post(ses, body, botocore_signed(ses, body))
    assert response.status_code == 200
    assert len(ses.messages_to("flaky@example.org")) == 1


def _vector_headers(**headers: str) -> dict[str, list[str]]:
    return {name.replace("_", "-"): [value] for name, value in headers.items()}


@pytest.mark.parametrize(
    ("method", "query", "headers", "service", "signed", "signature"),
    [
        # AWS Signature V4 test suite: get-vanilla, post-vanilla; and the IAM ListUsers
        # example of AWS's SigV4 documentation.
        (
            "GET",
            "",
            _vector_headers(host="example.amazonaws.com", x_amz_date="20150830T123600Z"),
            "service",
            "host;x-amz-date",
            "5fa00fa31553b73ebf1942676e86291e8372ff2a2260956d9b8aae1d763fbf31",
        ),
        (
            "POST",
            "",
            _vector_headers(host="example.amazonaws.com", x_amz_date="20150830T123600Z"),
            "service",
            "host;x-amz-date",
            "5da7c1a2acd57cee7505fc6676e4e544621c30862966e37dddb68e92efbe5d6b",
        ),
        (
            "GET",
            "Action=ListUsers&Version=2010-05-08",
            _vector_headers(
                host="iam.amazonaws.com",
                x_amz_date="20150830T123600Z",
                content_type="application/x-www-form-urlencoded; charset=utf-8",
            ),
            "iam",
            "content-type;host;x-amz-date",
            "5d672d79c15b13162d9279b0855cfba6789a8edb4c82c400e06b5924a6f2b5d7",
        ),
    ],
)
def test_sigv4_verifier_matches_aws_published_vectors(
    method: str,
    query: str,
    headers: dict[str, list[str]],
    service: str,
    signed: str,
    signature: str,
) -> None:
    credential = f"AKIDEXAMPLE/20150830/us-east-1/{service}/aws4_request"
    authorization = f"AWS4-HMAC-SHA256 Credential={credential}, SignedHeaders={signed}, Signature="

    def check(signature: str) -> str:
        return verify_sigv4(
            method=method,
            raw_path="/",
            raw_query=query,
            headers={**headers, "authorization": [authorization + signature]},
            body=b"",
            credentials={"AKIDEXAMPLE": "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY"},
            region="us-east-1",
            service=service,
            now=dt.datetime(2015, 8, 30, 12, 38, tzinfo=dt.UTC),
        )

    assert check(signature) == "AKIDEXAMPLE"
    with pytest.raises(SigV4Error):
        check(signature[:-1] + "0")


# -- SNS ------------------------------------------------------------------------------------


@pytest.mark.parametrize("version", ["1", "2"])
def test_sns_notification_round_trips_and_any_change_breaks_it(
    sns: SnsSigner, version: SignatureVersion
) -> None:
    event = ses_bounce(["gone@example.org"], header_message_id="<42.7@postbell.test>")
    document = sns.notification(
        TOPIC, event, subject="Amazon SES Email Event Notification", signature_version=version
    )
    assert document["Type"] == "Notification"
    assert document["SignatureVersion"] == version
    assert document["SigningCertURL"] == f"{sns.url}{CERT_PATH}"
    assert json.loads(document["Message"]) == event
    assert document["UnsubscribeURL"].startswith(f"{sns.url}/?Action=Unsubscribe")
    assert dt.datetime.fromisoformat(document["Timestamp"].replace("Z", "+00:00"))
    assert verify(document, sns.cert_pem)
    for field in ("Message", "MessageId", "Subject", "Timestamp", "TopicArn"):
        assert not verify({**document, field: document[field] + "x"}, sns.cert_pem), field
    assert not verify({**document, "Type": "SubscriptionConfirmation"}, sns.cert_pem)
    other = "2" if version == "1" else "1"
    assert not verify({**document, "SignatureVersion": other}, sns.cert_pem)
    assert not verify({**document, "SignatureVersion": "3"}, sns.cert_pem)
    assert not verify(document, SnsSigner().cert_pem)  # another key


def test_sns_notification_signature_matches_an_independent_string_to_sign(
    sns: SnsSigner,
) -> None:
    document = sns.notification(TOPIC, "plain text\nwith lines", signature_version="2")
    assert "Subject" not in document
    text = (
        f"Message\n{document['Message']}\nMessageId\n{document['MessageId']}\n"
        f"Timestamp\n{document['Timestamp']}\nTopicArn\n{TOPIC}\nType\nNotification\n"
    )
    public_key = x509.load_pem_x509_certificate(sns.cert_pem).public_key()
    assert isinstance(public_key, rsa.RSAPublicKey)
    public_key.verify(
        base64.b64decode(document["Signature"]), text.encode(), padding.PKCS1v15(), hashes.SHA256()
    )
    assert not verify({**document, "Subject": "added later"}, sns.cert_pem)


async def test_sns_subscription_confirmation_and_certificate_are_served(sns: SnsSigner) -> None:
    document = sns.subscription_confirmation(TOPIC)
    assert document["Type"] == "SubscriptionConfirmation"
    assert {"Message", "MessageId", "SubscribeURL", "Timestamp", "Token", "TopicArn"} <= set(
        document
    )
    assert verify(document, sns.cert_pem)
    for field in ("SubscribeURL", "Token"):
        assert not verify({**document, field: document[field] + "x"}, sns.cert_pem)
    explicit = sns.subscription_confirmation(TOPIC, "https://sns.example/confirm", "2")
    assert explicit["SubscribeURL"] == "https://sns.example/confirm"
    assert verify(explicit, sns.cert_pem)
    assert verify(sns.unsubscribe_confirmation(TOPIC), sns.cert_pem)

    async with aiohttp.ClientSession() as session:
        async with session.get(document["SigningCertURL"]) as response:
            assert response.status == 200
            pem = await response.read()
        async with session.get(document["SubscribeURL"]) as response:
            assert response.status == 200
            assert "<SubscriptionArn>" in await response.text()
    assert pem == sns.cert_pem
    assert verify(document, pem)
    assert sns.confirmations[-1]["Token"] == document["Token"]
    assert sns.cert_fetches >= 1

    headers = http_headers(document)
    assert headers["x-amz-sns-message-type"] == "SubscriptionConfirmation"
    assert headers["x-amz-sns-message-id"] == document["MessageId"]
    assert headers["Content-Type"].startswith("text/plain")


def test_ses_event_payloads_have_the_fields_ses_sends() -> None:
    permanent = ses_bounce(
        ["a@example.org"],
        message_id="0102abc-1",
        header_message_id="<1.1@postbell.test>",
        tags={"postbell_delivery_id": "1"},
    )
    assert permanent["eventType"] == "Bounce"
    assert permanent["bounce"]["bounceType"] == "Permanent"
    assert permanent["bounce"]["bouncedRecipients"][0]["emailAddress"] == "a@example.org"
    assert permanent["mail"]["messageId"] == "0102abc-1"
    assert {"name": "Message-ID", "value": "<1.1@postbell.test>"} in permanent["mail"]["headers"]
    assert permanent["mail"]["tags"]["postbell_delivery_id"] == ["1"]

    transient = ses_bounce(["b@example.org"], bounce_type="Transient", style="notification")
    assert transient["notificationType"] == "Bounce"
    assert transient["bounce"]["bounceType"] == "Transient"
    assert "tags" not in transient["mail"]

    complaint = ses_complaint(["c@example.org"])
    assert complaint["eventType"] == "Complaint"
    assert complaint["complaint"]["complainedRecipients"] == [{"emailAddress": "c@example.org"}]

    delivery = ses_delivery(["d@example.org"], header_message_id="<4.4@postbell.test>")
    assert delivery["eventType"] == "Delivery"
    assert delivery["delivery"]["recipients"] == ["d@example.org"]
    assert delivery["mail"]["commonHeaders"]["messageId"] == "<4.4@postbell.test>"


# -- SendGrid Event Webhook -----------------------------------------------------------------


def test_sendgrid_event_signature_verifies_with_the_console_key() -> None:
    signer = SendGridEventSigner()
    events = signer.events(
        ("delivered", "a@example.org"),
        ("bounce", "b@example.org"),
        custom_args={"postbell_delivery_id": "42"},
        x_message_id="W86EgYT6SQKk0lRflfLRsA",
    )
    body, headers = signer.signed_post(events)
    timestamp = headers[TIMESTAMP_HEADER]
    assert timestamp.isdigit()

    key = serialization.load_der_public_key(base64.b64decode(signer.public_key_b64))
    assert isinstance(key, ec.EllipticCurvePublicKey)
    assert isinstance(key.curve, ec.SECP256R1)
    signature = base64.b64decode(headers[SIGNATURE_HEADER])
    key.verify(signature, timestamp.encode() + body, ec.ECDSA(hashes.SHA256()))
    for forged in (timestamp.encode() + body + b" ", b"1" + timestamp.encode() + body):
        with pytest.raises(InvalidSignature):
            key.verify(signature, forged, ec.ECDSA(hashes.SHA256()))
    pem_key = serialization.load_pem_public_key(signer.public_key_pem.encode())
    assert pem_key.public_numbers() == key.public_numbers()  # type: ignore[union-attr]

    fixed = signer.sign(b"[]", "1700000000")
    assert fixed[TIMESTAMP_HEADER] == "1700000000"
    key.verify(
        base64.b64decode(fixed[SIGNATURE_HEADER]), b"1700000000[]", ec.ECDSA(hashes.SHA256())
    )

    parsed = json.loads(body)
    assert [e["event"] for e in parsed] == ["delivered", "bounce"]
    assert all(e["postbell_delivery_id"] == "42" for e in parsed)
    assert all(e["sg_message_id"].startswith("W86EgYT6SQKk0lRflfLRsA.") for e in parsed)
    assert parsed[1]["type"] == "bounce" and parsed[1]["reason"]
    assert all(isinstance(e["timestamp"], int) and e["sg_event_id"] for e in parsed)


def test_sendgrid_event_fields_can_be_overridden() -> None:
    event = sendgrid_event("dropped", "d@example.org", reason="Unsubscribed Address")
    assert event["event"] == "dropped"
    assert event["reason"] == "Unsubscribed Address"
    assert sendgrid_event("deferred", "e@example.org")["attempt"] == "1"
    assert sendgrid_event("spamreport", "f@example.org", timestamp=5)["timestamp"] == 5
