"""One-click unsubscribe (RFC 8058): the link in an email's List-Unsubscribe header.

The token names a recipient and a category and is signed with the first
POSTBELL_INBOX_SECRET (any configured secret verifies, so secrets rotate). POST opts
the recipient out of that category's EMAIL; GET answers a page with a button that
POSTs, so that link scanners which follow every URL unsubscribe nobody.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
from collections.abc import Sequence

from psycopg.types.json import Jsonb

from postbell.app.core import db
from postbell.app.core.errors import Forbidden


def unsubscribe_token(secret: str, external_id: str, category: str) -> str:
    payload = f"{external_id}\n{category}".encode()
    mac = hmac.new(secret.encode(), b"unsubscribe\n" + payload, hashlib.sha256).digest()[:16]
    return f"{_b64(payload)}.{_b64(mac)}"


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def read_token(secrets: Sequence[str], token: str) -> tuple[str, str]:
    """(external_id, category) of a valid token; Forbidden otherwise."""
    try:
        payload_part, _, mac_part = token.partition(".")
        payload, mac = _unb64(payload_part), _unb64(mac_part)
        external_id, _, category = payload.decode().partition("\n")
    except (ValueError, binascii.Error, UnicodeDecodeError):
        raise Forbidden("this unsubscribe link is not valid") from None
    for secret in secrets:
        expected = hmac.new(secret.encode(), b"unsubscribe\n" + payload, hashlib.sha256).digest()[
            :16
        ]
        if hmac.compare_digest(expected, mac) and external_id and category:
            return external_id, category
    raise Forbidden("this unsubscribe link is not valid")


async def unsubscribe(pool: db.Pool, secrets: Sequence[str], token: str) -> tuple[str, str]:
    """Opt the token's recipient out of its category's EMAIL; answer (recipient, category)."""
    external_id, category = read_token(secrets, token)
    params = {
        "external_id": external_id,
        "channels": None,
        "categories": Jsonb({category: {"EMAIL": False}}),
        "quiet_hours": None,
        "quiet_hours_set": False,
    }
    async with pool.connection() as conn, conn.transaction():
        await db.execute(conn, "devices_ensure_recipient", params)
        await db.execute(conn, "preferences_put", params)
    return external_id, category
