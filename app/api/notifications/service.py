"""Accepting and reading notifications. No HTTP here: callers pass values, get values."""

from __future__ import annotations

import datetime as dt
import hashlib
import uuid

import msgspec

from postbell.app.api.notifications import repo
from postbell.app.api.notifications.schemas import (
    Cancelled,
    DeliveryOut,
    NotificationAccepted,
    NotificationIn,
    NotificationOut,
    NotificationPage,
    NotificationSummary,
)
from postbell.app.api.pagination import (
    decode_cursor,
    decode_time_cursor,
    encode_cursor,
    encode_time_cursor,
)
from postbell.app.api.wakeups import Waker
from postbell.app.core import db, validation
from postbell.app.core.channels import parse_channel, unknown_channel
from postbell.app.core.errors import Conflict, Invalid, InvalidParameter, NotFound
from postbell.app.core.settings import Settings

MAX_METADATA_BYTES = 16_384
MAX_IDEMPOTENCY_KEY = 255
#: An expiry further out than this is a typo, not a plan.
MAX_EXPIRY = dt.timedelta(days=3650)


class IdempotencyConflict(Invalid):
    code = "idempotency_conflict"


def request_hash(payload: NotificationIn) -> bytes:
    """A digest of the request that ignores key order and formatting."""
    canonical = msgspec.json.encode(msgspec.to_builtins(payload), order="sorted")
    return hashlib.sha256(canonical).digest()


def check(
    settings: Settings, payload: NotificationIn, now: dt.datetime
) -> tuple[str, list[str] | None]:
    """Rules beyond the types (no database needed); answer the body text and the
    de-duplicated recipients. Raises ``Invalid`` naming the field."""
    if payload.message is not None and payload.body is not None:
        raise Invalid("give either 'message' or 'body', not both", field="body")
    text = payload.message if payload.message is not None else payload.body
    if text is None or not text.strip():
        raise Invalid("the notification needs a 'message' (or 'body')", field="message")
    validation.no_nul(text, "message" if payload.message is not None else "body")
    if payload.title is not None:
        validation.no_nul(payload.title, "title")
    for index, recipient in enumerate(payload.to or ()):
        validation.external_id(recipient, f"to[{index}]")
    if payload.to is not None and payload.topic is not None:
        raise Invalid("give either 'to' or 'topic', not both", field="topic")
    if payload.to is None and payload.topic is None:
        raise Invalid("the notification needs 'to' (recipient ids) or 'topic'", field="to")
    if payload.action_url is not None:
        validation.http_url(payload.action_url, "action_url")
    if payload.metadata is not None:
        validation.json_value(payload.metadata, "metadata", MAX_METADATA_BYTES)
        validation.whatsapp_template(payload.metadata)
    send_at = validation.aware(payload.send_at, "send_at") if payload.send_at else None
    expires_at = validation.aware(payload.expires_at, "expires_at") if payload.expires_at else None
    if send_at is not None:
        if send_at <= now:
            raise Invalid("send_at is in the past", field="send_at")
        if send_at > now + dt.timedelta(days=settings.send_at_horizon_days):
            raise Invalid(
                f"send_at is more than {settings.send_at_horizon_days} days ahead", field="send_at"
            )
    for first, second in (payload.fallback or {}).items():
        if first == second:
            raise Invalid(
                f"fallback.{first}: a channel cannot fall back to itself", field=f"fallback.{first}"
            )
        if payload.channels and first not in payload.channels:
            raise Invalid(
                f"fallback.{first}: {first} is not one of the notification's channels",
                field=f"fallback.{first}",
            )
    if expires_at is not None:
        if expires_at <= (send_at or now):
            raise Invalid("expires_at must be after the send time", field="expires_at")
        if expires_at > now + MAX_EXPIRY:
            raise Invalid("expires_at is more than ten years ahead", field="expires_at")
    return text, list(dict.fromkeys(payload.to)) if payload.to is not None else None


async def accept(
    pool: db.Pool,
    settings: Settings,
    payload: NotificationIn,
    *,
    idempotency_scope: str,
    idempotency_key: str | None,
    waker: Waker | None = None,
) -> tuple[NotificationAccepted, bool]:
    """Write the notification and its routing job in one transaction.

    Answers the accepted notification and whether it is new; an idempotent repeat
    (same key, same request) answers the original and writes nothing. With a
    ``waker``, the workers' wake-up is coalesced with other requests' (app/wakeups.py).
    """
    if idempotency_key is not None and not 1 <= len(idempotency_key) <= MAX_IDEMPOTENCY_KEY:
        raise Invalid("Idempotency-Key must be 1 to 255 characters", field="Idempotency-Key")
    text, recipients = check(settings, payload, dt.datetime.now(dt.UTC))
    digest = request_hash(payload) if idempotency_key else None
    async with pool.connection() as conn:
        await _check_targets(conn, payload)
        row = await repo.enqueue(
            conn,
            recipients=recipients,
            topic=payload.topic,
            title=payload.title,
            body=text,
            action_url=payload.action_url,
            metadata=payload.metadata,
            channels=list(dict.fromkeys(payload.channels)) if payload.channels else None,
            priority=payload.priority,
            category=payload.category,
            fallback=payload.fallback,
            send_at=payload.send_at,
            expires_at=payload.expires_at,
            idempotency_scope=idempotency_scope if idempotency_key else None,
            idempotency_key=idempotency_key,
            request_hash=digest,
            idempotency_ttl_hours=settings.idempotency_ttl_hours,
            wakeup=waker is None,
        )
    if waker is not None and row["created"]:
        waker.poke()
    if not row["created"] and bytes(row["request_hash"] or b"") != (digest or b""):
        raise IdempotencyConflict(
            "this Idempotency-Key was used with a different request", field="Idempotency-Key"
        )
    return NotificationAccepted(id=row["id"], status=row["status"]), bool(row["created"])


async def _check_targets(conn: db.Conn, payload: NotificationIn) -> None:
    if payload.category is None and payload.topic is None:
        return
    found = await repo.target_check(conn, category=payload.category, topic=payload.topic)
    if not found["category_ok"]:
        raise Invalid(
            f"unknown category {payload.category!r}; create it with PUT /api/categories/{{key}}",
            field="category",
        )
    if not found["topic_ok"]:
        raise Invalid(
            f"unknown topic {payload.topic!r}; subscribe recipients to it first", field="topic"
        )


async def cancel(pool: db.Pool, notification_id: uuid.UUID) -> Cancelled:
    """Cancel what has not been sent; Conflict when nothing is left to cancel."""
    async with pool.connection() as conn, conn.transaction():
        # The lock waits for a router working on it, so the deliveries it is writing
        # are seen (and cancelled) by the statements below.
        row = await repo.lock(conn, notification_id)
        if row is None:
            raise NotFound(f"no notification {notification_id}")
        if row["status"] == "cancelled":
            raise Conflict("the notification is already cancelled")
        if row["routed_at"] is None:
            count = await repo.cancel_unrouted(conn, notification_id)
        else:
            count = await repo.cancel_routed(conn, notification_id)
            if not count:
                raise Conflict("nothing left to cancel: every delivery has been sent or has ended")
    return Cancelled(id=notification_id, status="cancelled", cancelled=count)


async def read(
    pool: db.Pool, notification_id: uuid.UUID, *, cursor: str | None, limit: int
) -> NotificationOut:
    after = decode_cursor("d", cursor) or 0
    async with pool.connection() as conn:
        row = await repo.get(conn, notification_id)
        if row is None:
            raise NotFound(f"no notification {notification_id}")
        counts = await repo.delivery_counts(conn, notification_id)
        page = await repo.deliveries_page(conn, notification_id, after, limit + 1)
    more = len(page) > limit
    page = page[:limit]
    return NotificationOut(
        id=row["id"],
        status=row["status"],
        priority=row["priority"],
        category=row["category"],
        title=row["title"],
        body=row["body"],
        action_url=row["action_url"],
        metadata=row["metadata"],
        channels=row["channels"],
        fallback=row["fallback"],
        topic=row["topic"],
        recipient_count=row["recipient_count"],
        send_at=row["send_at"],
        expires_at=row["expires_at"],
        created_at=row["created_at"],
        routed_at=row["routed_at"],
        delivery_counts=counts,
        deliveries=[msgspec.convert(d, DeliveryOut) for d in page],
        next_cursor=encode_cursor("d", page[-1]["id"]) if more and page else None,
    )


NOTIFICATION_STATUSES = ("scheduled", "queued", "routed", "cancelled")


def _time_filter(value: str | None, field: str) -> dt.datetime | None:
    if value is None or value == "":
        return None
    try:
        moment = dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise InvalidParameter(
            f"{field} must be an RFC 3339 time like 2030-01-01T09:00:00Z", field=field
        ) from None
    if moment.tzinfo is None or moment.utcoffset() is None:
        raise InvalidParameter(f"{field} needs a time zone offset", field=field)
    try:
        return validation.aware(moment, field)
    except Invalid as exc:
        raise InvalidParameter(exc.detail, field=field) from None


async def list_page(
    pool: db.Pool,
    *,
    recipient: str | None = None,
    category: str | None = None,
    status: str | None = None,
    channel: str | None = None,
    created_after: str | None = None,
    created_before: str | None = None,
    cursor: str | None = None,
    limit: int,
) -> NotificationPage:
    """Notifications newest first, filtered; each with its delivery counts by status.
    A bad filter raises ``InvalidParameter`` naming it."""
    if status not in (None, "") and status not in NOTIFICATION_STATUSES:
        raise InvalidParameter(
            f"status must be one of {', '.join(NOTIFICATION_STATUSES)}", field="status"
        )
    wanted_channel = None
    if channel not in (None, ""):
        assert channel is not None
        wanted_channel = parse_channel(channel)
        if wanted_channel is None:
            raise InvalidParameter(unknown_channel(channel), field="channel")
    position = decode_time_cursor("n", cursor)
    params = {
        "recipient": recipient or None,
        "category": category or None,
        "status": status or None,
        "channel": wanted_channel,
        "created_after": _time_filter(created_after, "created_after"),
        "created_before": _time_filter(created_before, "created_before"),
        "before_at": position[0] if position else None,
        "before_id": position[1] if position else None,
        "limit": limit + 1,
    }
    async with pool.connection() as conn:
        rows = await repo.list_page(conn, params)
        page = rows[:limit]
        counts = await repo.list_counts(conn, [r["id"] for r in page])
    items = [
        msgspec.convert({**r, "delivery_counts": counts.get(r["id"], {})}, NotificationSummary)
        for r in page
    ]
    more = len(rows) > limit and page
    return NotificationPage(
        items=items,
        next_cursor=encode_time_cursor("n", page[-1]["created_at"], page[-1]["id"])
        if more
        else None,
    )
