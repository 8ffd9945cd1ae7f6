"""Signature checks for provider callbacks. Each answers True only for a request the
provider signed; anything else is refused (403) before a byte of it is used."""

from __future__ import annotations

import base64
import binascii
import re
import time
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlsplit

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa

SENDGRID_TOLERANCE_SECONDS = 600
_SNS_HOST = re.compile(r"^sns\.[a-z0-9-]+\.amazonaws\.com(\.cn)?$")
_SNS_FIELDS = {
    "Notification": ("Message", "MessageId", "Subject", "Timestamp", "TopicArn", "Type"),
    "SubscriptionConfirmation": (
        "Message",
        "MessageId",
        "SubscribeURL",
        "Timestamp",
        "Token",
        "TopicArn",
        "Type",
    ),
    "UnsubscribeConfirmation": (
        "Message",
        "MessageId",
        "SubscribeURL",
        "Timestamp",
        "Token",
        "TopicArn",
        "Type",
    ),
}


def load_sendgrid_key(value: str) -> ec.EllipticCurvePublicKey:
    """The verification key as SendGrid shows it (base64 DER), or as PEM."""
    data = value.encode() if "BEGIN PUBLIC KEY" in value else base64.b64decode(value)
    key = (
        serialization.load_pem_public_key(data)
        if data.startswith(b"-----")
        else serialization.load_der_public_key(data)
    )
    if not isinstance(key, ec.EllipticCurvePublicKey):
        raise ValueError("not an elliptic-curve public key")
    return key


def sendgrid(key: ec.EllipticCurvePublicKey, headers: Mapping[str, str], body: bytes) -> bool:
    """ECDSA (P-256, SHA-256) over timestamp + body, SendGrid's Event Webhook scheme."""
    signature = headers.get("X-Twilio-Email-Event-Webhook-Signature", "")
    timestamp = headers.get("X-Twilio-Email-Event-Webhook-Timestamp", "")
    if not signature or not timestamp.isdigit():
        return False
    if abs(time.time() - int(timestamp)) > SENDGRID_TOLERANCE_SECONDS:
        return False
    try:
        key.verify(
            base64.b64decode(signature), timestamp.encode() + body, ec.ECDSA(hashes.SHA256())
        )
    except (InvalidSignature, ValueError, binascii.Error):
        return False
    return True


def sns_url_ok(url: str, extra_prefixes: tuple[str, ...], *, certificate: bool) -> bool:
    """Only Amazon's SNS hosts over https (plus prefixes an operator allows, for
    emulators): where a signing certificate (``.pem``) or a SubscribeURL may live."""
    if any(url.startswith(prefix) for prefix in extra_prefixes):
        return True
    parts = urlsplit(url)
    if parts.scheme != "https" or not _SNS_HOST.match(parts.hostname or ""):
        return False
    return parts.path.endswith(".pem") if certificate else True


def sns_string_to_sign(message: Mapping[str, Any]) -> bytes | None:
    fields = _SNS_FIELDS.get(str(message.get("Type")))
    if fields is None:
        return None
    lines = []
    for name in fields:
        if name in message and message[name] is not None:
            lines.append(f"{name}\n{message[name]}\n")
        elif name != "Subject":
            return None
    return "".join(lines).encode()


def sns(message: Mapping[str, Any], cert_pem: bytes) -> bool:
    """RSA PKCS#1 v1.5 over SNS's canonical string; SHA1 (version 1) or SHA256 (version 2)."""
    text = sns_string_to_sign(message)
    version = str(message.get("SignatureVersion"))
    if text is None or version not in ("1", "2"):
        return False
    try:
        public_key = x509.load_pem_x509_certificate(cert_pem).public_key()
        signature = base64.b64decode(str(message.get("Signature", "")))
    except (ValueError, binascii.Error):
        return False
    if not isinstance(public_key, rsa.RSAPublicKey):
        return False
    digest = hashes.SHA1() if version == "1" else hashes.SHA256()  # noqa: S303 - SNS's v1 scheme
    try:
        public_key.verify(signature, text, padding.PKCS1v15(), digest)
    except InvalidSignature:
        return False
    return True


def twilio(auth_token: str, url: str, params: Mapping[str, str], signature: str) -> bool:
    from twilio.request_validator import RequestValidator

    return bool(RequestValidator(auth_token).validate(url, dict(params), signature))
