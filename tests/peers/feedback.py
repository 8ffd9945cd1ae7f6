"""Test-side signers for provider callbacks, made as the providers make them.

* ``SnsSigner``: an RSA key and self-signed certificate, served at
  ``/SimpleNotificationService-test.pem``; signs SNS documents (Notification,
  SubscriptionConfirmation) with SignatureVersion 1 (SHA1) or 2 (SHA256) over SNS's
  canonical string; also answers ``/confirm`` as a SubscribeURL would.
* ``SendGridEventSigner``: an ECDSA P-256 key; ``public_key_b64`` is what SendGrid's
  console shows (base64 DER); ``sign(body, timestamp)`` gives the two headers.
"""

from __future__ import annotations

import base64
import datetime as dt
import json
import secrets
import time
import uuid
from typing import Any

from aiohttp import web
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.x509.oid import NameOID

from tests.peers.http import HttpPeer

TOPIC = "arn:aws:sns:eu-west-1:123456789012:postbell-ses-events"


class SnsSigner(HttpPeer):
    def __init__(self) -> None:
        super().__init__()
        self.key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "sns.amazonaws.com")])
        now = dt.datetime.now(dt.UTC)
        cert = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(self.key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(days=1))
            .not_valid_after(now + dt.timedelta(days=1))
            .sign(self.key, hashes.SHA256())
        )
        self.cert_pem = cert.public_bytes(serialization.Encoding.PEM)
        self.confirmations = 0

    @property
    def cert_url(self) -> str:
        return f"{self.url}/SimpleNotificationService-test.pem"

    def routes(self, app: web.Application) -> None:
        async def cert(_: web.Request) -> web.Response:
            return web.Response(body=self.cert_pem, content_type="application/x-pem-file")

        async def confirm(_: web.Request) -> web.Response:
            with self.lock:
                self.confirmations += 1
            return web.Response(text="<ConfirmSubscriptionResponse/>")

        app.router.add_get("/SimpleNotificationService-test.pem", cert)
        app.router.add_get("/confirm", confirm)

    def _sign(self, doc: dict[str, Any], fields: tuple[str, ...], version: str) -> dict[str, Any]:
        text = "".join(f"{f}\n{doc[f]}\n" for f in fields if f in doc)
        digest = hashes.SHA1() if version == "1" else hashes.SHA256()
        signature = self.key.sign(text.encode(), padding.PKCS1v15(), digest)
        return {
            **doc,
            "SignatureVersion": version,
            "Signature": base64.b64encode(signature).decode(),
            "SigningCertURL": self.cert_url,
        }

    def notification(
        self, message: dict[str, Any] | str, *, subject: str | None = None, version: str = "1"
    ) -> dict[str, Any]:
        doc: dict[str, Any] = {
            "Type": "Notification",
            "MessageId": str(uuid.uuid4()),
            "TopicArn": TOPIC,
            "Message": message if isinstance(message, str) else json.dumps(message),
            "Timestamp": dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.000Z"),
            "UnsubscribeURL": f"{self.url}/unsubscribe",
        }
        if subject is not None:
            doc["Subject"] = subject
        return self._sign(
            doc, ("Message", "MessageId", "Subject", "Timestamp", "TopicArn", "Type"), version
        )

    def subscription_confirmation(self) -> dict[str, Any]:
        doc = {
            "Type": "SubscriptionConfirmation",
            "MessageId": str(uuid.uuid4()),
            "TopicArn": TOPIC,
            "Token": secrets.token_hex(16),
            "Message": "You have chosen to subscribe...",
            "SubscribeURL": f"{self.url}/confirm",
            "Timestamp": dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.000Z"),
        }
        return self._sign(
            doc,
            ("Message", "MessageId", "SubscribeURL", "Timestamp", "Token", "TopicArn", "Type"),
            "2",
        )


def ses_event(kind: str, delivery_id: int, address: str, **detail: Any) -> dict[str, Any]:
    """An SES event as SES event publishing sends it (tags carry our delivery id)."""
    mail = {
        "messageId": secrets.token_hex(8),
        "destination": [address],
        "headers": [{"name": "Message-ID", "value": f"<{delivery_id}@postbell.test>"}],
        "tags": {"postbell_delivery_id": [str(delivery_id)]},
    }
    event: dict[str, Any] = {"eventType": kind, "mail": mail}
    if kind == "Bounce":
        event["bounce"] = {
            "bounceType": detail.get("bounce_type", "Permanent"),
            "bounceSubType": "General",
            "bouncedRecipients": [{"emailAddress": address}],
        }
    elif kind == "Complaint":
        event["complaint"] = {
            "complainedRecipients": [{"emailAddress": address}],
            "complaintFeedbackType": "abuse",
        }
    elif kind == "Delivery":
        event["delivery"] = {"recipients": [address]}
    return event


class SendGridEventSigner:
    def __init__(self) -> None:
        self.key = ec.generate_private_key(ec.SECP256R1())
        der = self.key.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        self.public_key_b64 = base64.b64encode(der).decode()

    def sign(self, body: bytes, timestamp: str | None = None) -> dict[str, str]:
        timestamp = timestamp or str(int(time.time()))
        signature = self.key.sign(timestamp.encode() + body, ec.ECDSA(hashes.SHA256()))
        return {
            "X-Twilio-Email-Event-Webhook-Signature": base64.b64encode(signature).decode(),
            "X-Twilio-Email-Event-Webhook-Timestamp": timestamp,
            "Content-Type": "application/json",
        }


def sendgrid_events(*events: tuple[str, int, str]) -> bytes:
    """[(event, delivery id, email)] as SendGrid posts them (custom args at top level)."""
    now = int(time.time())
    return json.dumps(
        [
            {
                "email": email,
                "timestamp": now,
                "event": kind,
                "sg_event_id": secrets.token_hex(8),
                "sg_message_id": secrets.token_hex(8),
                "postbell_delivery_id": str(delivery_id),
                **({"type": "bounce", "reason": "550 5.1.1 unknown"} if kind == "bounce" else {}),
            }
            for kind, delivery_id, email in events
        ]
    ).encode()
