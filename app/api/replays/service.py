"""Replays: send past deliveries again, once per replay. No HTTP here.

A replay puts each matching delivery back to ``pending`` (attempts from zero, its
``replay_id`` set, a ``replay`` event in its timeline) and defers its deliver jobs
at the replay's priority (``low`` unless asked), in one transaction, in chunks of
``CHUNK`` deliveries, one statement each (the SQL function ``replay()`` of migration
0020). The workers then send it as any pending delivery: the same delivery id, and
on webhooks ``X-Postbell-Replay``. An ``Idempotency-Key`` makes a repeat answer the
original replay and send nothing more. The jobs' inserts wake the workers
(procrastinate's NOTIFY per job: a few hundred for the largest replay).
docs/operations.md has the whole story.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import uuid
from typing import Any

import msgspec

from postbell.app.api.notifications.service import IdempotencyConflict
from postbell.app.api.ops.dead_letters import batch_sizes
from postbell.app.api.replays import repo
from postbell.app.api.replays.schemas import NotificationReplayIn, ReplayAccepted, ReplayIn
from postbell.app.core import db
from postbell.app.core.errors import Invalid, NotFound
from postbell.app.core.settings import Settings

#: Deliveries one replay sends again, at most: a larger match is refused (narrow the
#: range or add a filter, or run several replays) so that one transaction stays short.
MAX_DELIVERIES = 100_000
#: The widest range one replay covers.
MAX_RANGE = dt.timedelta(days=31)
#: Deliveries per statement.
CHUNK = 10_000
MAX_IDEMPOTENCY_KEY = 255


def _request_hash(payload: msgspec.Struct, extra: str = "") -> bytes:
    canonical = msgspec.json.encode(msgspec.to_builtins(payload), order="sorted")
    return hashlib.sha256(canonical + extra.encode()).digest()


def check_range(start: dt.datetime, end: dt.datetime) -> None:
    """``Invalid`` naming the field when [start, end) is empty or wider than MAX_RANGE."""
    if start >= end:
        raise Invalid("from must be before to", field="from")
    if end - start > MAX_RANGE:
        raise Invalid(f"a replay covers at most {MAX_RANGE.days} days; split the range", field="to")


async def replay(
    pool: db.Pool,
    settings: Settings,
    payload: ReplayIn,
    *,
    idempotency_scope: str,
    idempotency_key: str | None,
) -> tuple[ReplayAccepted, bool]:
    """Replay one channel's deliveries created in [from, to) with one of the statuses
    (and the recipient, the category, when given). Answers the replay and whether it
    is new (a dry run: the count, new = True)."""
    if payload.channel == "IN_APP":
        raise Invalid(
            "IN_APP deliveries are the inbox items themselves; they are not sent again",
            field="channel",
        )
    check_range(payload.from_, payload.to)
    return await _run(
        pool,
        settings,
        {
            "channels": [payload.channel],
            "from": payload.from_,
            "to": payload.to,
            "statuses": list(dict.fromkeys(payload.statuses)),
            "recipient": payload.recipient,
            "category": payload.category,
            "priority": payload.priority,
            "notification_id": None,
            "dry_run": payload.dry_run,
        },
        digest=_request_hash(payload),
        idempotency_scope=idempotency_scope,
        idempotency_key=idempotency_key,
        too_large_field="to",
    )


async def replay_notification(
    pool: db.Pool,
    settings: Settings,
    notification_id: uuid.UUID,
    payload: NotificationReplayIn,
    *,
    idempotency_scope: str,
    idempotency_key: str | None,
) -> tuple[ReplayAccepted, bool]:
    """Replay one notification's deliveries on ``channels`` (default: every channel
    it has deliveries on but IN_APP). ``NotFound`` without such a notification."""
    if payload.channels and "IN_APP" in payload.channels:
        raise Invalid(
            "IN_APP deliveries are the inbox items themselves; they are not sent again",
            field="channels",
        )
    async with pool.connection() as conn:
        row = await repo.notification_channels(conn, notification_id)
    if row is None:
        raise NotFound(f"no notification {notification_id}")
    channels = list(dict.fromkeys(payload.channels)) if payload.channels else row["channels"]
    if not channels:
        raise Invalid(
            "this notification has no deliveries a replay sends (IN_APP is never sent again)",
            field="channels",
        )
    return await _run(
        pool,
        settings,
        {
            "channels": channels,
            "from": None,
            "to": None,
            "statuses": list(dict.fromkeys(payload.statuses)),
            "recipient": None,
            "category": None,
            "priority": payload.priority,
            "notification_id": notification_id,
            "dry_run": payload.dry_run,
        },
        digest=_request_hash(payload, str(notification_id)),
        idempotency_scope=idempotency_scope,
        idempotency_key=idempotency_key,
        too_large_field="channels",
    )


async def _run(
    pool: db.Pool,
    settings: Settings,
    params: dict[str, Any],
    *,
    digest: bytes,
    idempotency_scope: str,
    idempotency_key: str | None,
    too_large_field: str,
) -> tuple[ReplayAccepted, bool]:
    if idempotency_key is not None and not 1 <= len(idempotency_key) <= MAX_IDEMPOTENCY_KEY:
        raise Invalid("Idempotency-Key must be 1 to 255 characters", field="Idempotency-Key")
    async with pool.connection() as conn, conn.transaction():
        row = await repo.run(
            conn,
            **params,
            idempotency_key=idempotency_key,
            idempotency_scope=idempotency_scope,
            request_hash=digest if idempotency_key else None,
            idempotency_ttl_hours=settings.idempotency_ttl_hours,
            batch_sizes=batch_sizes(settings),
            chunk=CHUNK,
            max=MAX_DELIVERIES,
        )
        if row["too_large"] and not params["dry_run"]:
            # raised inside the transaction: the replay row is rolled back
            raise Invalid(
                f"{row['deliveries']} deliveries match; a replay sends at most"
                f" {MAX_DELIVERIES}: narrow the range or add a filter",
                field=too_large_field,
            )
    if params["dry_run"]:
        return ReplayAccepted(id=None, deliveries=int(row["deliveries"]), dry_run=True), True
    created = bool(row["created"])
    if not created and bytes(row["request_hash"] or b"") != (digest if idempotency_key else b""):
        raise IdempotencyConflict(
            "this Idempotency-Key was used with a different request", field="Idempotency-Key"
        )
    return ReplayAccepted(id=row["id"], deliveries=int(row["deliveries"])), created
