"""Provider delivery feedback, signed as the providers sign it.

Amazon SNS (SES bounce/complaint/delivery events reach an HTTPS endpoint through an
SNS topic):

* ``SnsSigner`` holds an RSA key and a self-signed X.509 certificate and serves the
  certificate PEM at ``/SimpleNotificationService-test.pem`` (its ``cert_url``, the
  documents' ``SigningCertURL``). It also answers the documents' ``SubscribeURL`` and
  ``UnsubscribeURL`` (``GET /?Action=ConfirmSubscription|Unsubscribe...``) and counts
  them.
* ``notification()`` / ``subscription_confirmation()`` / ``unsubscribe_confirmation()``
  build complete JSON documents as SNS POSTs them. The signature is RSA PKCS#1 v1.5
  over SNS's string to sign: for each signed field, in a fixed order and only when
  present, ``"<Name>\\n<value>\\n"``. Notification: Message, MessageId, Subject (only if
  the document has one), Timestamp, TopicArn, Type. (Un)SubscriptionConfirmation:
  Message, MessageId, SubscribeURL, Timestamp, Token, TopicArn, Type.
  ``SignatureVersion`` "1" hashes with SHA1, "2" with SHA256.
* ``http_headers()`` gives the headers SNS sends with a document (``x-amz-sns-*``,
  ``Content-Type: text/plain; charset=UTF-8``: the body is JSON all the same).
* ``verify()`` is an independent verifier (its own field table, not the signer's).
* ``ses_bounce()`` / ``ses_complaint()`` / ``ses_delivery()`` make SES event payloads
  (the ``Message`` of a notification), as event publishing (``eventType``, with
  ``mail.tags``) or as identity notifications (``notificationType``, no tags).

SendGrid Event Webhook:

* ``SendGridEventSigner`` holds an ECDSA P-256 key; ``public_key_b64`` is the
  verification key as SendGrid's console shows it (base64 of the DER
  SubjectPublicKeyInfo); ``sign(payload, timestamp)`` answers the
  ``X-Twilio-Email-Event-Webhook-Signature`` (base64 DER ECDSA signature, SHA-256 over
  the timestamp's bytes followed by the body's) and ``...-Timestamp`` headers.
* ``sendgrid_event()`` / ``sendgrid_events()`` build the JSON array SendGrid posts.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import json
import secrets
import time
import uuid
from collections.abc import Mapping
from typing import Any, Literal
from urllib.parse import quote

from aiohttp import web
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.x509.oid import NameOID

from tests.peers.http import HttpPeer

CERT_PATH = "/SimpleNotificationService-test.pem"
DEFAULT_TOPIC_ARN = "arn:aws:sns:eu-west-1:123456789012:postbell-ses-events"
SignatureVersion = Literal["1", "2"]


def sns_timestamp(when: dt.datetime | None = None) -> str:
    """ISO 8601 in UTC with milliseconds, as SNS writes it (``2024-05-02T00:54:06.655Z``)."""
    when = when or dt.datetime.now(dt.UTC)
    return when.strftime("%Y-%m-%dT%H:%M:%S.") + f"{when.microsecond // 1000:03d}Z"


class SnsSigner(HttpPeer):
    """Signs SNS documents and serves the certificate that verifies them."""

    def __init__(self) -> None:
        super().__init__()
        self.key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "sns.amazonaws.com")])
        now = dt.datetime.now(dt.UTC)
        self.certificate = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(self.key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(days=1))
            .not_valid_after(now + dt.timedelta(days=30))
            .sign(self.key, hashes.SHA256())
        )
        self.cert_pem: bytes = self.certificate.public_bytes(serialization.Encoding.PEM)
        self.cert_fetches = 0
        self.confirmations: list[dict[str, str]] = []
        self.unsubscribes: list[dict[str, str]] = []

    @property
    def cert_url(self) -> str:
        """The ``SigningCertURL`` of every document signed here."""
        return f"{self.url}{CERT_PATH}"

    def routes(self, app: web.Application) -> None:
        app.router.add_get(CERT_PATH, self._cert)
        app.router.add_get("/", self._action)

    async def _cert(self, request: web.Request) -> web.Response:
        with self.lock:
            self.cert_fetches += 1
        return web.Response(body=self.cert_pem, content_type="application/x-pem-file")

    async def _action(self, request: web.Request) -> web.Response:
        await self.record(request)
        action = request.query.get("Action")
        params = dict(request.query)
        if action == "ConfirmSubscription":
            with self.lock:
                self.confirmations.append(params)
            arn = f"{params.get('TopicArn', DEFAULT_TOPIC_ARN)}:{uuid.uuid4()}"
            return web.Response(
                text=(
                    "<ConfirmSubscriptionResponse><ConfirmSubscriptionResult><SubscriptionArn>"
                    f"{arn}</SubscriptionArn></ConfirmSubscriptionResult>"
                    "</ConfirmSubscriptionResponse>"
                ),
                content_type="text/xml",
            )
        if action == "Unsubscribe":
            with self.lock:
                self.unsubscribes.append(params)
            return web.Response(text="<UnsubscribeResponse/>", content_type="text/xml")
        return web.Response(status=400, text="<ErrorResponse/>", content_type="text/xml")

    def _sign(
        self, document: dict[str, Any], fields: tuple[str, ...], version: SignatureVersion
    ) -> dict[str, Any]:
        text = "".join(f"{name}\n{document[name]}\n" for name in fields if name in document)
        digest: hashes.HashAlgorithm = hashes.SHA1() if version == "1" else hashes.SHA256()
        signature = self.key.sign(text.encode(), padding.PKCS1v15(), digest)
        return {
            **document,
            "SignatureVersion": version,
            "Signature": base64.b64encode(signature).decode(),
            "SigningCertURL": self.cert_url,
        }

    def notification(
        self,
        topic_arn: str,
        message: Mapping[str, Any] | str,
        subject: str | None = None,
        signature_version: SignatureVersion = "1",
        *,
        message_id: str | None = None,
        timestamp: str | None = None,
    ) -> dict[str, Any]:
        """A signed ``Notification``; a dict ``message`` is sent as its JSON text."""
        document: dict[str, Any] = {
            "Type": "Notification",
            "MessageId": message_id or str(uuid.uuid4()),
            "TopicArn": topic_arn,
        }
        if subject is not None:
            document["Subject"] = subject
        document["Message"] = message if isinstance(message, str) else json.dumps(message)
        document["Timestamp"] = timestamp or sns_timestamp()
        signed = self._sign(
            document,
            ("Message", "MessageId", "Subject", "Timestamp", "TopicArn", "Type"),
            signature_version,
        )
        signed["UnsubscribeURL"] = (
            f"{self.url}/?Action=Unsubscribe&SubscriptionArn="
            f"{quote(topic_arn, safe='')}%3A{uuid.uuid4()}"
        )
        return signed

    def _confirmation(
        self,
        kind: str,
        topic_arn: str,
        subscribe_url: str | None,
        message: str,
        signature_version: SignatureVersion,
    ) -> dict[str, Any]:
        token = secrets.token_hex(64)
        document: dict[str, Any] = {
            "Type": kind,
            "MessageId": str(uuid.uuid4()),
            "Token": token,
            "TopicArn": topic_arn,
            "Message": message,
            "SubscribeURL": subscribe_url
            or (
                f"{self.url}/?Action=ConfirmSubscription&TopicArn={quote(topic_arn, safe='')}"
                f"&Token={token}"
            ),
            "Timestamp": sns_timestamp(),
        }
        return self._sign(
            document,
            ("Message", "MessageId", "SubscribeURL", "Timestamp", "Token", "TopicArn", "Type"),
            signature_version,
        )

    def subscription_confirmation(
        self,
        topic_arn: str,
        subscribe_url: str | None = None,
        signature_version: SignatureVersion = "1",
    ) -> dict[str, Any]:
        """A signed ``SubscriptionConfirmation``. Without ``subscribe_url`` it points at
        this peer, which records the confirmation in ``confirmations``."""
        message = (
            f"You have chosen to subscribe to the topic {topic_arn}.\n"
            "To confirm the subscription, visit the SubscribeURL included in this message."
        )
        return self._confirmation(
            "SubscriptionConfirmation", topic_arn, subscribe_url, message, signature_version
        )

    def unsubscribe_confirmation(
        self,
        topic_arn: str,
        subscribe_url: str | None = None,
        signature_version: SignatureVersion = "1",
    ) -> dict[str, Any]:
        """A signed ``UnsubscribeConfirmation`` (sent after an endpoint unsubscribes)."""
        message = (
            f"You have chosen to deactivate subscription {topic_arn}:{uuid.uuid4()}.\n"
            "To cancel this operation and restore the subscription, visit the SubscribeURL "
            "included in this message."
        )
        return self._confirmation(
            "UnsubscribeConfirmation", topic_arn, subscribe_url, message, signature_version
        )


def http_headers(document: Mapping[str, Any]) -> dict[str, str]:
    """The HTTP headers SNS sends with ``document`` to an HTTP(S) subscriber."""
    headers = {
        "Content-Type": "text/plain; charset=UTF-8",
        "User-Agent": "Amazon Simple Notification Service Agent",
        "x-amz-sns-message-type": str(document["Type"]),
        "x-amz-sns-message-id": str(document["MessageId"]),
        "x-amz-sns-topic-arn": str(document["TopicArn"]),
    }
    if document["Type"] == "Notification":
        headers["x-amz-sns-subscription-arn"] = f"{document['TopicArn']}:{uuid.uuid4()}"
    return headers


#: What SNS signs, per document type, in order (optional fields are skipped if absent).
_SIGNED: dict[str, tuple[tuple[str, bool], ...]] = {
    "Notification": (
        ("Message", True),
        ("MessageId", True),
        ("Subject", False),
        ("Timestamp", True),
        ("TopicArn", True),
        ("Type", True),
    ),
    **{
        kind: (
            ("Message", True),
            ("MessageId", True),
            ("SubscribeURL", True),
            ("Timestamp", True),
            ("Token", True),
            ("TopicArn", True),
            ("Type", True),
        )
        for kind in ("SubscriptionConfirmation", "UnsubscribeConfirmation")
    },
}
_DIGESTS: dict[str, type[hashes.HashAlgorithm]] = {"1": hashes.SHA1, "2": hashes.SHA256}


def verify(document: Mapping[str, Any], cert_pem: bytes) -> bool:
    """True only if ``document`` carries a valid SNS signature by ``cert_pem``'s key.

    Unknown types or signature versions, missing required fields, non-string values,
    a certificate that is not RSA or not currently valid: all False.
    """
    fields = _SIGNED.get(str(document.get("Type")))
    digest = _DIGESTS.get(str(document.get("SignatureVersion")))
    if fields is None or digest is None:
        return False
    lines: list[str] = []
    for name, required in fields:
        value = document.get(name)
        if value is None:
            if required:
                return False
            continue
        if not isinstance(value, str):
            return False
        lines.extend((name, value))
    text = ("\n".join(lines) + "\n").encode()
    try:
        certificate = x509.load_pem_x509_certificate(cert_pem)
        signature = base64.b64decode(str(document.get("Signature", "")), validate=True)
    except (ValueError, binascii.Error):
        return False
    now = dt.datetime.now(dt.UTC)
    if not certificate.not_valid_before_utc <= now <= certificate.not_valid_after_utc:
        return False
    public_key = certificate.public_key()
    if not isinstance(public_key, rsa.RSAPublicKey):
        return False
    try:
        public_key.verify(signature, text, padding.PKCS1v15(), digest())
    except InvalidSignature:
        return False
    return True


# -- SES event payloads (the Message of a notification) -------------------------------------

EventStyle = Literal["event", "notification"]


def _ses_mail(
    recipients: list[str],
    *,
    message_id: str | None,
    header_message_id: str,
    subject: str,
    source: str,
    tags: Mapping[str, str] | None,
    style: EventStyle,
) -> dict[str, Any]:
    timestamp = sns_timestamp()
    headers = [
        {"name": "From", "value": source},
        {"name": "To", "value": ", ".join(recipients)},
        {"name": "Subject", "value": subject},
        {"name": "Message-ID", "value": header_message_id},
        {"name": "MIME-Version", "value": "1.0"},
    ]
    mail: dict[str, Any] = {
        "timestamp": timestamp,
        "source": source,
        "sourceArn": "arn:aws:ses:eu-west-1:123456789012:identity/postbell.test",
        "sendingAccountId": "123456789012",
        "messageId": message_id or f"0102{secrets.token_hex(6)}-{uuid.uuid4()}-000000",
        "destination": list(recipients),
        "headersTruncated": False,
        "headers": headers,
        "commonHeaders": {
            "from": [source],
            "to": list(recipients),
            "messageId": header_message_id,
            "subject": subject,
        },
    }
    if style == "event":
        mail["tags"] = {
            "ses:configuration-set": ["postbell"],
            "ses:source-ip": ["192.0.2.10"],
            "ses:from-domain": ["postbell.test"],
            "ses:caller-identity": ["postbell"],
            **{name: [value] for name, value in (tags or {}).items()},
        }
    else:
        mail["sourceIp"] = "192.0.2.10"
        mail["callerIdentity"] = "postbell"
    return mail


def _ses_event(
    kind: str, style: EventStyle, mail: dict[str, Any], detail: dict[str, Any]
) -> dict[str, Any]:
    key = "eventType" if style == "event" else "notificationType"
    return {key: kind, kind.lower(): detail, "mail": mail}


def ses_bounce(
    recipients: list[str],
    *,
    bounce_type: Literal["Permanent", "Transient", "Undetermined"] = "Permanent",
    bounce_sub_type: str | None = None,
    message_id: str | None = None,
    header_message_id: str = "<postbell-test@postbell.test>",
    subject: str = "Hello",
    source: str = "Postbell <notify@postbell.test>",
    tags: Mapping[str, str] | None = None,
    style: EventStyle = "event",
) -> dict[str, Any]:
    """An SES ``Bounce`` event. ``message_id`` is the SES MessageId (SendEmail's
    answer), ``header_message_id`` the email's Message-ID header, ``tags`` its
    EmailTags (event style only)."""
    sub_type = bounce_sub_type or ("General" if bounce_type != "Transient" else "MailboxFull")
    permanent = bounce_type == "Permanent"
    detail = {
        "bounceType": bounce_type,
        "bounceSubType": sub_type,
        "bouncedRecipients": [
            {
                "emailAddress": address,
                "action": "failed",
                "status": "5.1.1" if permanent else "4.2.2",
                "diagnosticCode": "smtp; 550 5.1.1 user unknown"
                if permanent
                else "smtp; 452 4.2.2 mailbox full",
            }
            for address in recipients
        ],
        "timestamp": sns_timestamp(),
        "feedbackId": f"0102{secrets.token_hex(6)}-{uuid.uuid4()}-000000",
        "reportingMTA": "dsn; a1-23.smtp-out.eu-west-1.amazonses.com",
    }
    mail = _ses_mail(
        recipients,
        message_id=message_id,
        header_message_id=header_message_id,
        subject=subject,
        source=source,
        tags=tags,
        style=style,
    )
    return _ses_event("Bounce", style, mail, detail)


def ses_complaint(
    recipients: list[str],
    *,
    feedback_type: str = "abuse",
    message_id: str | None = None,
    header_message_id: str = "<postbell-test@postbell.test>",
    subject: str = "Hello",
    source: str = "Postbell <notify@postbell.test>",
    tags: Mapping[str, str] | None = None,
    style: EventStyle = "event",
) -> dict[str, Any]:
    """An SES ``Complaint`` event (``complainedRecipients``, ``complaintFeedbackType``)."""
    detail = {
        "complainedRecipients": [{"emailAddress": address} for address in recipients],
        "timestamp": sns_timestamp(),
        "feedbackId": f"0102{secrets.token_hex(6)}-{uuid.uuid4()}-000000",
        "userAgent": "Mozilla/5.0",
        "complaintFeedbackType": feedback_type,
        "arrivalDate": sns_timestamp(),
    }
    mail = _ses_mail(
        recipients,
        message_id=message_id,
        header_message_id=header_message_id,
        subject=subject,
        source=source,
        tags=tags,
        style=style,
    )
    return _ses_event("Complaint", style, mail, detail)


def ses_delivery(
    recipients: list[str],
    *,
    message_id: str | None = None,
    header_message_id: str = "<postbell-test@postbell.test>",
    subject: str = "Hello",
    source: str = "Postbell <notify@postbell.test>",
    tags: Mapping[str, str] | None = None,
    style: EventStyle = "event",
) -> dict[str, Any]:
    """An SES ``Delivery`` event (``delivery.recipients``, ``smtpResponse``)."""
    detail = {
        "timestamp": sns_timestamp(),
        "processingTimeMillis": 546,
        "recipients": list(recipients),
        "smtpResponse": "250 2.6.0 Message received",
        "remoteMtaIp": "192.0.2.20",
        "reportingMTA": "a1-23.smtp-out.eu-west-1.amazonses.com",
    }
    mail = _ses_mail(
        recipients,
        message_id=message_id,
        header_message_id=header_message_id,
        subject=subject,
        source=source,
        tags=tags,
        style=style,
    )
    return _ses_event("Delivery", style, mail, detail)


# -- SendGrid Event Webhook -----------------------------------------------------------------

SIGNATURE_HEADER = "X-Twilio-Email-Event-Webhook-Signature"
TIMESTAMP_HEADER = "X-Twilio-Email-Event-Webhook-Timestamp"
SendGridEventType = Literal[
    "processed", "delivered", "deferred", "bounce", "dropped", "spamreport", "open", "click"
]


class SendGridEventSigner:
    """Signs SendGrid Event Webhook posts with an ECDSA P-256 key of its own."""

    def __init__(self) -> None:
        self.private_key = ec.generate_private_key(ec.SECP256R1())
        self.public_key = self.private_key.public_key()

    @property
    def public_key_der(self) -> bytes:
        """The public key as DER SubjectPublicKeyInfo."""
        return self.public_key.public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )

    @property
    def public_key_b64(self) -> str:
        """The verification key as SendGrid's console shows it: base64 of the DER SPKI."""
        return base64.b64encode(self.public_key_der).decode()

    @property
    def public_key_pem(self) -> str:
        """The same key as PEM (``-----BEGIN PUBLIC KEY-----``)."""
        return self.public_key.public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        ).decode()

    def sign(self, payload: bytes, timestamp: str | None = None) -> dict[str, str]:
        """The signature and timestamp headers for ``payload`` (the exact body bytes).

        ``timestamp`` defaults to now (Unix seconds, as a decimal string). The signature
        is ECDSA with SHA-256 over ``timestamp.encode() + payload``, DER-encoded, base64.
        """
        timestamp = timestamp if timestamp is not None else str(int(time.time()))
        signature = self.private_key.sign(timestamp.encode() + payload, ec.ECDSA(hashes.SHA256()))
        return {
            SIGNATURE_HEADER: base64.b64encode(signature).decode(),
            TIMESTAMP_HEADER: timestamp,
        }

    @staticmethod
    def events(*specs: tuple[SendGridEventType, str], **common: Any) -> list[dict[str, Any]]:
        """Events from ``(event, email)`` pairs, each built by ``sendgrid_event`` with the
        keyword arguments in ``common`` (e.g. ``custom_args={"postbell_delivery_id": "7"}``,
        ``x_message_id=...``)."""
        return [sendgrid_event(event, email, **common) for event, email in specs]

    def signed_post(
        self, events: list[dict[str, Any]], timestamp: str | None = None
    ) -> tuple[bytes, dict[str, str]]:
        """A ready-to-send body (``sendgrid_events(events)``) and its headers, with
        ``Content-Type: application/json`` and ``User-Agent: SendGrid Event API``."""
        body = sendgrid_events(events)
        headers = {
            "Content-Type": "application/json",
            "User-Agent": "SendGrid Event API",
            **self.sign(body, timestamp),
        }
        return body, headers


def sendgrid_event(
    event: SendGridEventType,
    email: str,
    *,
    x_message_id: str | None = None,
    custom_args: Mapping[str, str] | None = None,
    timestamp: int | None = None,
    smtp_id: str | None = None,
    **fields: Any,
) -> dict[str, Any]:
    """One SendGrid event object.

    ``sg_message_id`` is ``x_message_id`` (the ``X-Message-Id`` mail/send answered)
    followed by a ``.``-suffix, as SendGrid writes it; custom args appear as top-level
    string fields; ``fields`` add or override anything (e.g. ``reason``). Bounces get
    ``type: "bounce"``, ``status``, ``reason``; drops a ``reason``; deferrals a
    ``response`` and ``attempt``; deliveries a ``response``.
    """
    base = x_message_id or secrets.token_urlsafe(16)
    item: dict[str, Any] = {
        "email": email,
        "timestamp": timestamp if timestamp is not None else int(time.time()),
        "smtp-id": smtp_id or f"<{base}@geopod-ismtpd-1>",
        "event": event,
        "category": [],
        "sg_event_id": base64.urlsafe_b64encode(secrets.token_bytes(16)).decode().rstrip("="),
        "sg_message_id": f"{base}.recvd-5f8b7c6d4-abcde-1-{secrets.token_hex(4).upper()}-0.0",
    }
    if event == "bounce":
        item.update(
            type="bounce",
            status="5.1.1",
            reason="550 5.1.1 The email account that you tried to reach does not exist.",
            bounce_classification="Invalid Address",
        )
    elif event == "dropped":
        item.update(reason="Bounced Address", status="5.0.0")
    elif event == "deferred":
        item.update(response="452 4.2.2 mailbox full, try again later", attempt="1")
    elif event == "delivered":
        item.update(response="250 2.0.0 OK", tls=1)
    item.update({name: str(value) for name, value in (custom_args or {}).items()})
    item.update(fields)
    return item


def sendgrid_events(events: list[dict[str, Any]]) -> bytes:
    """The body SendGrid posts: a JSON array of event objects."""
    return json.dumps(events, separators=(",", ":")).encode()
