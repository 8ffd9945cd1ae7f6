"""Accepting and reading notifications. No HTTP here: callers pass values, get values."""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import uuid
from typing import Any

import msgspec
from psycopg.rows import DictRow

from postbell.app.api.notifications import repo
from postbell.app.api.notifications.batches import GroupCommit
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
    decode_pair_cursor,
    decode_time_cursor,
    encode_pair_cursor,
    encode_time_cursor,
)
from postbell.app.api.wakeups import Waker
from postbell.app.core import db, templates, validation
from postbell.app.core.channels import parse_channel, unknown_channel
from postbell.app.core.errors import Conflict, Invalid, InvalidParameter, NotFound
from postbell.app.core.settings import Settings

MAX_METADATA_BYTES = 16_384
#: a template's data, JSON-encoded
MAX_DATA_BYTES = 65_536
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
    if payload.template is not None:
        for name in ("message", "body", "title", "action_url"):
            if getattr(payload, name) is not None:
                raise Invalid(
                    f"give either 'template' or '{name}', not both: the template has the text",
                    field=name,
                )
        validation.json_value(payload.data or {}, "data", MAX_DATA_BYTES)
        text = ""
    else:
        variant_templates = any(v.template is not None for v in payload.variants or ())
        if payload.data is not None and not variant_templates:
            raise Invalid("'data' goes with a 'template'", field="data")
        if payload.data is not None:
            validation.json_value(payload.data, "data", MAX_DATA_BYTES)
        if payload.message is not None and payload.body is not None:
            raise Invalid("give either 'message' or 'body', not both", field="body")
        given = payload.message if payload.message is not None else payload.body
        if given is None and payload.variants:
            # the variants carry the text: the first variant's body stands in
            given = next((v.body for v in payload.variants if v.body and v.body.strip()), None)
            if given is None and variant_templates:
                given = ""  # every text is a variant's (templates render their own)
        if given is None or (not given.strip() and not variant_templates):
            raise Invalid(
                "the notification needs a 'message' (or 'body', or a 'template')", field="message"
            )
        text = given
        validation.no_nul(text, "message" if payload.message is not None else "body")
    if payload.title is not None:
        validation.no_nul(payload.title, "title")
    check_experiment(payload)
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
    batches: GroupCommit | None = None,
) -> tuple[NotificationAccepted, bool]:
    """Write the notification and its routing job in one transaction.

    Answers the accepted notification and whether it is new; an idempotent repeat
    (same key, same request) answers the original and writes nothing. With a
    ``waker``, the workers' wake-up is coalesced with other requests' (app/wakeups.py);
    with ``batches``, a plain notification (no key, template or experiment) shares its
    transaction with the requests accepted at the same moment (batches.py).
    """
    if idempotency_key is not None and not 1 <= len(idempotency_key) <= MAX_IDEMPOTENCY_KEY:
        raise Invalid("Idempotency-Key must be 1 to 255 characters", field="Idempotency-Key")
    text, recipients = check(settings, payload, dt.datetime.now(dt.UTC))
    digest = request_hash(payload) if idempotency_key else None
    fields: dict[str, Any] = {
        "recipients": recipients,
        "topic": payload.topic,
        "title": payload.title,
        "body": text,
        "action_url": payload.action_url,
        "metadata": payload.metadata,
        "channels": list(dict.fromkeys(payload.channels)) if payload.channels else None,
        "priority": payload.priority,
        "category": payload.category,
        "fallback": payload.fallback,
        "send_at": payload.send_at,
        "expires_at": payload.expires_at,
    }
    if batches is not None and waker is not None and _batchable(payload, idempotency_key):
        row = await batches.write(
            _batch_item(fields), lambda: _enqueue_alone(pool, settings, fields)
        )
        if row.get("error"):
            raise _unknown_target(row["error"], payload.category, payload.topic)
        waker.poke()
        return NotificationAccepted(id=row["id"], status=row["status"]), True
    async with pool.connection() as conn, _templated(conn, payload):
        pinned = await _pin_template(conn, payload)
        variants = await _pin_variants(conn, payload)
        category = payload.category or (pinned["category"] if pinned else None)
        await _check_targets(conn, category, payload.topic)
        row = await repo.enqueue(
            conn,
            **(fields | {"category": category}),
            idempotency_scope=idempotency_scope if idempotency_key else None,
            idempotency_key=idempotency_key,
            request_hash=digest,
            idempotency_ttl_hours=settings.idempotency_ttl_hours,
            wakeup=waker is None,
            template_key=pinned["key"] if pinned else None,
            template_version=pinned["version"] if pinned else None,
            template_data=(payload.data or {}) if pinned else None,
        )
        if row["created"] and payload.experiment is not None:
            # the same transaction as the enqueue: routing sees the variants or nothing
            await repo.set_experiment(
                conn,
                row["id"],
                payload.experiment,
                variants,
                data=(payload.data or {})
                if any("template_version" in v for v in variants)
                else None,
            )
    if waker is not None and row["created"]:
        waker.poke()
    if not row["created"] and bytes(row["request_hash"] or b"") != (digest or b""):
        raise IdempotencyConflict(
            "this Idempotency-Key was used with a different request", field="Idempotency-Key"
        )
    return NotificationAccepted(id=row["id"], status=row["status"]), bool(row["created"])


def _batchable(payload: NotificationIn, idempotency_key: str | None) -> bool:
    """A request the group commit writes: nothing to pin, lock or wait for."""
    return idempotency_key is None and payload.template is None and payload.experiment is None


def _batch_item(fields: dict[str, Any]) -> dict[str, Any]:
    """``fields`` as one item of enqueue_notifications()' JSON array."""
    item = dict(fields)
    for name in ("send_at", "expires_at"):
        if item[name] is not None:
            item[name] = item[name].isoformat()
    return item


async def _enqueue_alone(pool: db.Pool, settings: Settings, fields: dict[str, Any]) -> DictRow:
    """One request of a batch that failed, written on its own (batches.py): the
    request at fault gets its own error, the others their rows."""
    async with pool.connection() as conn:
        await _check_targets(conn, fields["category"], fields["topic"])
        return await repo.enqueue(
            conn,
            **fields,
            idempotency_scope=None,
            idempotency_key=None,
            request_hash=None,
            idempotency_ttl_hours=settings.idempotency_ttl_hours,
            wakeup=False,
            template_key=None,
            template_version=None,
            template_data=None,
        )


def check_experiment(payload: NotificationIn) -> None:
    """An experiment's rules: a key and two to ten variants together, unique names,
    each variant with either its own text (a title or a body) or a ``template``. With
    a notification ``template``, a variant with neither shows that template, and a
    text variant needs its own body. postbell.notify() checks the same (0022)."""
    if payload.experiment is None and payload.variants is None:
        return
    if payload.experiment is None:
        raise Invalid("'variants' go with an 'experiment' key", field="experiment")
    if not payload.variants:
        raise Invalid("an experiment needs 'variants' (two to ten)", field="variants")
    seen: set[str] = set()
    for index, variant in enumerate(payload.variants):
        where = f"variants[{index}]"
        if variant.name in seen:
            raise Invalid(f"variant name {variant.name!r} is used twice", field=f"{where}.name")
        seen.add(variant.name)
        has_text = variant.title is not None or bool(variant.body and variant.body.strip())
        if variant.template is not None:
            if has_text or variant.body is not None or variant.action_url is not None:
                raise Invalid(
                    "give a variant either a 'template' or its own text, not both",
                    field=f"{where}.template",
                )
        elif payload.template is None and not has_text:
            raise Invalid(
                "a variant needs its own 'title' or 'body' (or a 'template')",
                field=f"{where}.body",
            )
        elif payload.template is not None and has_text and not (variant.body or "").strip():
            raise Invalid(
                "a text variant of a templated notification needs its own 'body'",
                field=f"{where}.body",
            )
        for name in ("title", "body"):
            value = getattr(variant, name)
            if value is not None:
                validation.no_nul(value, f"{where}.{name}")
        if variant.action_url is not None:
            validation.http_url(variant.action_url, f"{where}.action_url")


def _templated(
    conn: db.Conn, payload: NotificationIn
) -> contextlib.AbstractAsyncContextManager[Any]:
    """A transaction when a template is pinned (its row is share-locked until the
    notification is written); else none: the enqueue is one statement."""
    if payload.template is None and payload.experiment is None:
        return contextlib.nullcontext()
    return conn.transaction()


async def _pin_template(conn: db.Conn, payload: NotificationIn) -> DictRow | None:
    """The active version of the notification's template, checked against its data:
    every required key present, every part rendering for a sample recipient. Invalid
    (nothing written) naming the first missing key or the fault."""
    if payload.template is None:
        return None
    return await _pin(conn, payload, payload.template, "template")


async def _pin_variants(conn: db.Conn, payload: NotificationIn) -> list[dict[str, Any]]:
    """The experiment's variants as stored: each template variant with the active
    version of its template pinned (``template_version``), checked as a notification's
    template is; Invalid naming ``variants[i].template`` for an unknown one."""
    stored: list[dict[str, Any]] = []
    for index, variant in enumerate(payload.variants or ()):
        item = msgspec.to_builtins(variant)
        if variant.template is not None:
            row = await _pin(conn, payload, variant.template, f"variants[{index}].template")
            item["template_version"] = row["version"]
        stored.append(item)
    return stored


async def _pin(conn: db.Conn, payload: NotificationIn, key: str, field: str) -> DictRow:
    """The active version of template ``key`` (share-locked), checked against the
    notification's data and channels; ``field`` names where the key was given."""
    row = await repo.template(conn, key)
    if row is None:
        raise Invalid(
            f"unknown template {key!r}; save it with PUT /api/templates/{{key}}", field=field
        )
    data = payload.data or {}
    missing = templates.missing_data(row["required_data"], data)
    if missing is not None:
        raise Invalid(
            f"data lacks {missing!r}, which template {row['key']!r} requires",
            field=f"data.{missing}",
        )
    reserved = sorted(set(data) & templates.RESERVED)
    if reserved:
        raise Invalid(f"data may not use the reserved name {reserved[0]!r}", field="data")
    compiled = templates.CACHE.get(row["key"], row["version"])
    try:
        if compiled is None:
            compiled = templates.CACHE.put(
                row["key"], row["version"], row["locales"], row["default_locale"]
            )
        in_template: set[str] = {c for (_, c) in compiled.parts}
        wanted: list[str] = list(payload.channels) if payload.channels else sorted(in_template)
        for channel in dict.fromkeys(wanted):
            usable = [loc for loc in compiled.locales if compiled.part_channel(loc, channel)]
            if not usable:
                if field != "template":  # a variant's: name the variant
                    raise Invalid(
                        f"template {row['key']!r} (version {row['version']}) has no {channel}"
                        " part (nor an IN_APP one to use)",
                        field=field,
                    )
                raise templates.TemplateError(
                    f"the template has no {channel} part (nor an IN_APP one to use)"
                )
            for locale in usable:
                compiled.render(
                    channel,
                    templates.sample_recipient(locale, row["example_recipient"]),
                    data,
                    {"id": "", "category": payload.category, "priority": payload.priority},
                    unsubscribe_url="https://example.org/unsubscribe",
                    locale=locale,
                )
    except templates.TemplateError as exc:
        raise Invalid(
            f"data does not fit template {row['key']!r} (version {row['version']}): {exc}",
            field="data",
        ) from None
    return row


async def _check_targets(conn: db.Conn, category: str | None, topic: str | None) -> None:
    if category is None and topic is None:
        return
    found = await repo.target_check(conn, category=category, topic=topic)
    if not found["category_ok"]:
        raise _unknown_target("unknown_category", category, topic)
    if not found["topic_ok"]:
        raise _unknown_target("unknown_topic", category, topic)


def _unknown_target(error: str, category: str | None, topic: str | None) -> Invalid:
    """The 422 for a notification whose category or topic does not exist."""
    if error == "unknown_category":
        return Invalid(
            f"unknown category {category!r}; create it with PUT /api/categories/{{key}}",
            field="category",
        )
    return Invalid(f"unknown topic {topic!r}; subscribe recipients to it first", field="topic")


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
    async with pool.connection() as conn:
        row = await repo.get(conn, notification_id)
        if row is None:
            raise NotFound(f"no notification {notification_id}")
        after = await _delivery_cursor(conn, notification_id, cursor)
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
        next_cursor=encode_pair_cursor("r", page[-1]["recipient_id"], page[-1]["channel"])
        if more and page
        else None,
        template=row["template_key"],
        template_version=row["template_version"],
        data=row["template_data"],
        experiment=row["experiment"],
        variants=row["variants"],
    )


async def _delivery_cursor(
    conn: db.Conn, notification_id: uuid.UUID, cursor: str | None
) -> tuple[int, str]:
    """Where a page of the notification's deliveries starts: after the (recipient,
    channel) in ``cursor``. A cursor handed out before the pages were in that order
    (a delivery id) continues from that delivery's place."""
    if not cursor:
        return (0, "")
    try:
        return decode_pair_cursor("r", cursor)
    except InvalidParameter:
        delivery_id = decode_cursor("d", cursor)  # raises for what is neither
        assert delivery_id is not None
        position = await repo.delivery_position(conn, notification_id, delivery_id)
        if position is None:
            raise
        return position


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
    template: str | None = None,
    workflow: str | None = None,
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
        "template": template or None,
        "workflow": workflow or None,
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
