"""postbell for host apps on the same database: notify inside your own transaction.

    import psycopg
    from postbell import notify

    async with await psycopg.AsyncConnection.connect(DATABASE_URL) as conn:
        async with conn.transaction():
            await conn.execute("UPDATE join_requests SET status = 'approved' WHERE id = 42")
            await notify(conn, ["user-7"], {"title": "You're in!", "message": "Welcome!"},
                         channels=["IN_APP", "EMAIL"])

The notification and its routing job are written by the SQL function
``postbell.notify()`` in the caller's transaction: if the transaction rolls back,
there is no notification; if it commits, postbell's workers deliver it.
"""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Mapping, Sequence
from typing import Any

from psycopg import AsyncConnection, Connection
from psycopg.types.json import Jsonb

__all__ = ["notify", "notify_sync"]

_SQL = b"SELECT postbell.notify(%s, %s, %s, %s, %s, %s, %s)"


def _args(
    recipients: Sequence[str],
    body: str | Mapping[str, Any],
    channels: Sequence[str] | None,
    priority: str,
    category: str | None,
    send_at: dt.datetime | None,
    idempotency_key: str | None,
) -> tuple[Any, ...]:
    content = {"message": body} if isinstance(body, str) else dict(body)
    return (
        list(recipients),
        Jsonb(content),
        list(channels) if channels is not None else None,
        priority,
        category,
        send_at,
        idempotency_key,
    )


async def notify(
    conn: AsyncConnection[Any],
    recipients: Sequence[str],
    body: str | Mapping[str, Any],
    *,
    channels: Sequence[str] | None = None,
    priority: str = "normal",
    category: str | None = None,
    send_at: dt.datetime | None = None,
    idempotency_key: str | None = None,
) -> uuid.UUID:
    """Enqueue a notification in ``conn``'s current transaction; answer its id.

    ``body`` is the message text, or ``{"message", "title", "action_url", "metadata",
    "fallback", "expires_at"}`` (or ``{"template", "data", ...}``; with ``"experiment"``
    and ``"variants"`` an A/B experiment, docs/experiments.md). Bad arguments raise
    ``psycopg.errors.InvalidParameterValue`` with a message naming the problem.
    """
    cursor = await conn.execute(
        _SQL, _args(recipients, body, channels, priority, category, send_at, idempotency_key)
    )
    row = await cursor.fetchone()
    assert row is not None
    return uuid.UUID(str(row[0] if isinstance(row, tuple) else next(iter(row.values()))))


def notify_sync(
    conn: Connection[Any],
    recipients: Sequence[str],
    body: str | Mapping[str, Any],
    *,
    channels: Sequence[str] | None = None,
    priority: str = "normal",
    category: str | None = None,
    send_at: dt.datetime | None = None,
    idempotency_key: str | None = None,
) -> uuid.UUID:
    """``notify`` for a synchronous psycopg connection."""
    cursor = conn.execute(
        _SQL, _args(recipients, body, channels, priority, category, send_at, idempotency_key)
    )
    row = cursor.fetchone()
    assert row is not None
    return uuid.UUID(str(row[0] if isinstance(row, tuple) else next(iter(row.values()))))
