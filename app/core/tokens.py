"""Signed values: recipient tokens (inbox and preferences) and unsubscribe links.

Every token is an HMAC-SHA256 under ``POSTBELL_INBOX_SECRET``; with several secrets
configured, the first signs and all verify, so secrets rotate. Verification is
constant-time.
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

TokenCheck = Literal["ok", "expired", "bad"]


def recipient_token(secret: str, external_id: str, expires_at: int | None = None) -> str:
    """The token a host app hands its front-end for ``external_id``."""
    if expires_at is None:
        return hmac.new(secret.encode(), external_id.encode(), hashlib.sha256).hexdigest()
    message = f"{external_id}.{expires_at}".encode()
    digest = hmac.new(secret.encode(), message, hashlib.sha256).hexdigest()
    return f"{expires_at}.{digest}"


def check_recipient_token(
    secrets_: Sequence[str], external_id: str, token: str, now: float | None = None
) -> TokenCheck:
    """Verify ``token`` for ``external_id`` against every configured secret, in constant time."""
    match = _RECIPIENT_TOKEN_RE.match(token)
    if not match or not secrets_:
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
    payload = f"{external_id}\n{category}".encode()
    return f"{_b64(payload)}.{_b64(_unsubscribe_mac(secret, payload))}"


def read_unsubscribe_token(secrets_: Sequence[str], token: str) -> tuple[str, str] | None:
    """(external_id, category) of a valid unsubscribe token, else None."""
    try:
        payload_part, _, mac_part = token.partition(".")
        payload, mac = _unb64(payload_part), _unb64(mac_part)
        external_id, _, category = payload.decode().partition("\n")
    except (ValueError, binascii.Error, UnicodeDecodeError):
        return None
    for secret in secrets_:
        if hmac.compare_digest(_unsubscribe_mac(secret, payload), mac) and external_id and category:
            return external_id, category
    return None


def _unsubscribe_mac(secret: str, payload: bytes) -> bytes:
    return hmac.new(secret.encode(), b"unsubscribe\n" + payload, hashlib.sha256).digest()[:16]


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
