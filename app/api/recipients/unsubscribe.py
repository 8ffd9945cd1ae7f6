"""One-click unsubscribe (RFC 8058): the link in an email's List-Unsubscribe header.

The token names a recipient and a category and is signed with the first
POSTBELL_INBOX_SECRET (any configured secret verifies, so secrets rotate). POST opts
the recipient out of that category's EMAIL; GET answers a page with a button that
POSTs, so that link scanners which follow every URL unsubscribe nobody.
"""

from __future__ import annotations

from collections.abc import Sequence

from psycopg.types.json import Jsonb

from postbell.app.core import db
from postbell.app.core.errors import Forbidden
from postbell.app.core.tokens import read_unsubscribe_token


def read_token(secrets: Sequence[str], token: str) -> tuple[str, str]:
    """(external_id, category) of a valid token; Forbidden otherwise."""
    found = read_unsubscribe_token(secrets, token)
    if found is None:
        raise Forbidden("this unsubscribe link is not valid")
    return found


async def unsubscribe(pool: db.Pool, secrets: Sequence[str], token: str) -> tuple[str, str]:
    """Opt the token's recipient out of its category's EMAIL; answer (recipient, category)."""
    external_id, category = read_token(secrets, token)
    params = {
        "external_id": external_id,
        "channels": None,
        "categories": Jsonb({category: {"EMAIL": False}}),
        "topics": None,
        "quiet_hours": None,
        "quiet_hours_set": False,
    }
    async with pool.connection() as conn, conn.transaction():
        await db.execute(conn, "devices_ensure_recipient", params)
        await db.execute(conn, "preferences_put", params)
    return external_id, category
