"""Signature and freshness checks for provider callbacks. Each answers True (or a
value) only for a request the provider signed; anything else is refused (403) before
a byte of it is used.

Every value read here comes from the network. Header values arrive as latin-1
text, so "digits" means ASCII digits: ``str.isdigit`` also takes superscripts, which
``int`` refuses, and other scripts' digits, which it reads. A URL is read once,
strictly, so that this check and the HTTP client that fetches it cannot read two
different hosts out of it.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import functools
import re
from collections.abc import Mapping
from typing import Any
from urllib.parse import SplitResult, urlsplit

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa

from postbell.app.core.settings import CALLBACK_CLOCK_SKEW_SECONDS, sendgrid_public_key

SENDGRID_SIGNATURE = "X-Twilio-Email-Event-Webhook-Signature"
SENDGRID_TIMESTAMP = "X-Twilio-Email-Event-Webhook-Timestamp"
_UNIX_TIME = re.compile(r"[0-9]{1,12}")
_BASE64 = re.compile(r"[A-Za-z0-9+/]{4,2048}={0,2}")
#: SNS writes its Timestamp as ISO 8601 in UTC with milliseconds: 2024-05-02T00:54:06.655Z
_SNS_TIME = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}(\.[0-9]{1,6})?Z")
_SNS_HOST = re.compile(r"sns\.[a-z0-9-]+\.amazonaws\.com(\.cn)?")
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
_DEFAULT_PORTS = {"http": 80, "https": 443}


def fresh(signed_at: float, *, now: float, max_age: float) -> bool:
    """A signed time no older than ``max_age`` seconds and at most the allowed clock
    skew ahead of ``now``."""
    return now - max_age <= signed_at <= now + CALLBACK_CLOCK_SKEW_SECONDS


@functools.lru_cache(maxsize=4)
def load_sendgrid_key(value: str) -> ec.EllipticCurvePublicKey:
    """The verification key, parsed once (settings checked it at start)."""
    key: ec.EllipticCurvePublicKey = sendgrid_public_key(value)
    return key


def sendgrid_timestamp(headers: Mapping[str, str]) -> int | None:
    """The signed Unix time of a SendGrid Event Webhook POST; None unless it is 1-12
    ASCII digits."""
    value = headers.get(SENDGRID_TIMESTAMP, "")
    return int(value) if _UNIX_TIME.fullmatch(value) else None


def sendgrid(key: ec.EllipticCurvePublicKey, headers: Mapping[str, str], body: bytes) -> bool:
    """ECDSA (P-256, SHA-256) over timestamp + body, SendGrid's Event Webhook scheme."""
    signature = headers.get(SENDGRID_SIGNATURE, "")
    timestamp = headers.get(SENDGRID_TIMESTAMP, "")
    if not _BASE64.fullmatch(signature) or not _UNIX_TIME.fullmatch(timestamp):
        return False
    try:
        key.verify(
            base64.b64decode(signature, validate=True),
            timestamp.encode() + body,
            ec.ECDSA(hashes.SHA256()),
        )
    except (InvalidSignature, ValueError, binascii.Error):
        return False
    return True


def sns_timestamp(value: str) -> float | None:
    """An SNS ``Timestamp`` (the time SNS published the message; every retry of it
    carries the same one) as a Unix time; None when it is not in SNS's format."""
    if not _SNS_TIME.fullmatch(value):
        return None
    try:
        return dt.datetime.fromisoformat(value[:-1] + "+00:00").timestamp()
    except ValueError:  # in the format, but no such date (month 13)
        return None


def _plain_url(url: str) -> SplitResult | None:
    """``url`` split, when it reads the same to every parser: printable ASCII with no
    spaces or backslashes, http(s), a host, no credentials (no '@' at all), a valid
    port, no fragment. Anything else is None."""
    if not url.isascii() or not url.isprintable() or any(c in url for c in " \\@"):
        return None
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError on a bad port
    except ValueError:
        return None
    if parts.scheme not in _DEFAULT_PORTS or not parts.hostname or parts.fragment:
        return None
    return parts


def _origin(parts: SplitResult) -> tuple[str, str, int]:
    return parts.scheme, parts.hostname or "", parts.port or _DEFAULT_PORTS[parts.scheme]


def _under(parts: SplitResult, prefix: str) -> bool:
    """Whether ``parts`` has the scheme, host and port of ``prefix`` and a path under
    its path (a prefix compared as a URL, never as a string: 'http://h:80' must not
    allow 'http://h:8080' or 'http://h:80@elsewhere')."""
    allowed = _plain_url(prefix)
    if allowed is None or _origin(allowed) != _origin(parts):
        return False
    base = allowed.path.rstrip("/") + "/"
    return parts.path.startswith(base) and "/../" not in parts.path + "/"


def sns_url_ok(url: str, allowed_prefixes: tuple[str, ...], *, certificate: bool) -> bool:
    """Where a signing certificate (``certificate``: an https ``.pem`` path, no query)
    or a SubscribeURL may live: an Amazon SNS host (``sns.<region>.amazonaws.com``,
    or ``.com.cn``) over https on its default port, or under one of
    ``allowed_prefixes`` (SNS_CERT_URL_PREFIXES, for emulators), compared as URLs."""
    parts = _plain_url(url)
    if parts is None:
        return False
    if certificate and (parts.query or not parts.path.endswith(".pem")):
        return False
    if parts.scheme == "https" and parts.port is None and _SNS_HOST.fullmatch(parts.hostname or ""):
        return True
    return any(_under(parts, prefix) for prefix in allowed_prefixes)


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
    signature = str(message.get("Signature") or "")
    if text is None or version not in ("1", "2") or not _BASE64.fullmatch(signature):
        return False
    try:
        public_key = x509.load_pem_x509_certificate(cert_pem).public_key()
        decoded = base64.b64decode(signature, validate=True)
    except (ValueError, binascii.Error):
        return False
    if not isinstance(public_key, rsa.RSAPublicKey):
        return False
    digest = hashes.SHA1() if version == "1" else hashes.SHA256()  # noqa: S303 - SNS's v1 scheme
    try:
        public_key.verify(decoded, text, padding.PKCS1v15(), digest)
    except InvalidSignature:
        return False
    return True


def twilio(auth_token: str, url: str, params: Mapping[str, str], signature: str) -> bool:
    """HMAC-SHA1 over the URL Twilio called and its sorted form fields (X-Twilio-Signature)."""
    if not _BASE64.fullmatch(signature):
        return False
    from twilio.request_validator import RequestValidator

    return bool(RequestValidator(auth_token).validate(url, dict(params), signature))
