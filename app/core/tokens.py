"""Signed values: recipient tokens (inbox and preferences), unsubscribe links, and the
click (``/r/``) and open (``/o/``) tokens of experiment emails.

Every token is an HMAC-SHA256 under ``POSTBELL_INBOX_SECRET``; with several secrets
configured, the first signs and all verify, so secrets rotate. Verification is
constant-time.

Domain separation: the plain inbox token signs the external id alone (the recipe
host apps have used from the start). Every other token signs
``"postbell:<purpose>" NUL field NUL field ...``. External ids, category keys and
expiry times never hold NUL (the API and ``postbell.notify()`` refuse control
characters in them), so no external id can make a plain token equal to a signed
value of another purpose, the fields of a value cannot be shifted into one another,
and a token of one purpose is never valid for another.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import re
import time
from collections.abc import Sequence
from typing import Literal

_RECIPIENT_TOKEN_RE = re.compile(r"^(?:(\d{1,12})\.)?([0-9a-f]{64})$")
#: a delivery id as click and open tokens carry it: ASCII digits, a bigint
_DELIVERY_ID_RE = re.compile(r"[1-9][0-9]{0,17}")

# Type-only aliases: a mutant of them changes no behaviour (make mutate skips them).
TokenCheck = Literal["ok", "expired", "bad"]  # pragma: no mutate
Purpose = Literal["inbox", "unsubscribe", "read", "click", "open"]  # pragma: no mutate


def sign(secret: str, purpose: Purpose, *fields: str) -> bytes:
    """HMAC-SHA256 over ``postbell:<purpose>`` and ``fields``, NUL-separated."""
    if any("\x00" in field for field in fields):
        raise ValueError("a signed field may not hold NUL")
    message = "\x00".join([f"postbell:{purpose}", *fields]).encode()
    return hmac.new(secret.encode(), message, hashlib.sha256).digest()


def recipient_token(secret: str, external_id: str, expires_at: int | None = None) -> str:
    """The token a host app hands its front-end for ``external_id``: without an expiry
    ``hex(HMAC-SHA256(secret, external_id))``; with one ``<unix_exp>.<hex(HMAC-SHA256(
    secret, "postbell:inbox" NUL external_id NUL unix_exp))>``."""
    if "\x00" in external_id:
        raise ValueError("an external id may not hold NUL")
    if expires_at is None:
        return hmac.new(secret.encode(), external_id.encode(), hashlib.sha256).hexdigest()
    return f"{expires_at}.{sign(secret, 'inbox', external_id, str(expires_at)).hex()}"


def check_recipient_token(
    secrets_: Sequence[str], external_id: str, token: str, now: float | None = None
) -> TokenCheck:
    """Verify ``token`` for ``external_id`` against every configured secret, in constant time."""
    match = _RECIPIENT_TOKEN_RE.match(token)
    if not match or not secrets_ or "\x00" in external_id:
        return "bad"
    expiry = int(match.group(1)) if match.group(1) else None
    valid = False
    for secret in secrets_:
        expected = recipient_token(secret, external_id, expiry)
        valid |= hmac.compare_digest(expected.encode(), token.encode())
    if not valid:
        return "bad"
    if expiry is not None and expiry < (time.time() if now is None else now):
        return "expired"
    return "ok"


def looks_like_recipient_token(credential: str) -> bool:
    return _RECIPIENT_TOKEN_RE.match(credential) is not None


def unsubscribe_token(secret: str, external_id: str, category: str) -> str:
    """The token of a one-click unsubscribe link: ``recipient`` out of ``category``'s EMAIL."""
    payload = f"{external_id}\x00{category}".encode()
    mac = sign(secret, "unsubscribe", external_id, category)[:16]
    return f"{_b64(payload)}.{_b64(mac)}"


def read_unsubscribe_token(secrets_: Sequence[str], token: str) -> tuple[str, str] | None:
    """(external_id, category) of a valid unsubscribe token, else None."""
    try:
        payload_part, dot, mac_part = token.partition(".")
        payload, mac = _unb64(payload_part), _unb64(mac_part)
        external_id, separator, category = payload.decode().partition("\x00")
    except (ValueError, binascii.Error, UnicodeDecodeError):
        return None
    if not (dot and separator and external_id and category) or "\x00" in category:
        return None
    valid = False
    for secret in secrets_:
        expected = sign(secret, "unsubscribe", external_id, category)[:16]
        valid |= hmac.compare_digest(expected, mac)
    return (external_id, category) if valid else None


def click_token(secret: str, delivery_id: int, url: str) -> str:
    """The token of a tracked link (``/r/{token}``): it redirects to ``url`` only, and
    counts one click for ``delivery_id``."""
    payload = f"{delivery_id}\x00{url}".encode()
    mac = sign(secret, "click", str(delivery_id), url)[:16]
    return f"{_b64(payload)}.{_b64(mac)}"


def read_click_token(secrets_: Sequence[str], token: str) -> tuple[int, str] | None:
    """(delivery_id, url) of a valid click token, else None: a token redirects only to
    the URL it signs, and only to an http(s) one."""
    try:
        payload_part, dot, mac_part = token.partition(".")
        payload, mac = _unb64(payload_part), _unb64(mac_part)
        delivery, separator, url = payload.decode().partition("\x00")
    except (ValueError, binascii.Error, UnicodeDecodeError):
        return None
    if not (dot and separator and _DELIVERY_ID_RE.fullmatch(delivery)):
        return None
    if not url.lower().startswith(("https://", "http://")) or "\x00" in url:
        return None
    valid = False
    for secret in secrets_:
        valid |= hmac.compare_digest(sign(secret, "click", delivery, url)[:16], mac)
    return (int(delivery), url) if valid else None


def open_token(secret: str, delivery_id: int) -> str:
    """The token of an email's open pixel (``/o/{token}``)."""
    mac = sign(secret, "open", str(delivery_id))[:16]
    return f"{delivery_id}.{_b64(mac)}"


def read_open_token(secrets_: Sequence[str], token: str) -> int | None:
    delivery, dot, mac_part = token.partition(".")
    if not (dot and _DELIVERY_ID_RE.fullmatch(delivery)):
        return None
    try:
        mac = _unb64(mac_part)
    except (ValueError, binascii.Error):
        return None
    valid = False
    for secret in secrets_:
        valid |= hmac.compare_digest(sign(secret, "open", delivery)[:16], mac)
    return int(delivery) if valid else None


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
