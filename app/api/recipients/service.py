"""Recipients: the host app's users and their addresses."""

from __future__ import annotations

from typing import Any

import msgspec
from psycopg.types.json import Jsonb

from postbell.app.api.recipients import repo
from postbell.app.api.recipients.schemas import BulkIn, BulkOut, RecipientIn, RecipientOut
from postbell.app.core import db, validation
from postbell.app.core.addresses import AddressGuard
from postbell.app.core.errors import Invalid, NotFound
from postbell.app.core.settings import Settings

MAX_METADATA_BYTES = 16_384
MAX_EXTERNAL_ID = 255

_CHECKS = {
    "email": validation.email,
    "phone": validation.phone,
    "whatsapp": validation.phone,
    "telegram_chat_id": validation.telegram_chat_id,
    "locale": validation.locale,
    "timezone": validation.timezone,
}
_URLS = ("webhook_url", "slack_webhook_url", "discord_webhook_url", "teams_webhook_url")
FIELDS = tuple(RecipientIn.__struct_fields__)


def external_id(value: str) -> str:
    if not value or len(value) > MAX_EXTERNAL_ID:
        raise NotFound("no such recipient")
    return value


def _clean(
    payload: RecipientIn, *, guard: AddressGuard, prefix: str = ""
) -> tuple[dict[str, Any], set[str]]:
    fields: dict[str, Any] = {}
    present: set[str] = set()
    for name in FIELDS:
        value = getattr(payload, name)
        if value is msgspec.UNSET:
            fields[name] = None
            continue
        present.add(name)
        if isinstance(value, str):
            value = value.strip() or None
        field = f"{prefix}{name}"
        if value is not None and name in _CHECKS:
            value = _CHECKS[name](value, field)
        if value is not None and name in _URLS:
            value = validation.webhook_url(value, field, guard=guard)
        if name == "metadata" and value is not None:
            validation.json_value(value, field, MAX_METADATA_BYTES)
        fields[name] = value
    return fields, present


async def put(
    pool: db.Pool, settings: Settings, external: str, payload: RecipientIn
) -> RecipientOut:
    fields, present = _clean(payload, guard=settings.address_guard)
    async with pool.connection() as conn:
        row = await repo.upsert(conn, external_id(external), fields, present)
    return msgspec.convert(row, RecipientOut)


async def get(pool: db.Pool, external: str) -> RecipientOut:
    async with pool.connection() as conn:
        row = await repo.get(conn, external_id(external))
    if row is None:
        raise NotFound(f"no recipient {external!r}")
    return msgspec.convert(row, RecipientOut)


async def delete(pool: db.Pool, external: str) -> None:
    async with pool.connection() as conn, conn.transaction():
        deleted = await repo.delete(conn, external_id(external))
    if not deleted:
        raise NotFound(f"no recipient {external!r}")


async def bulk(pool: db.Pool, settings: Settings, payload: BulkIn) -> BulkOut:
    """Upsert up to 10,000 recipients in one statement, with PUT's rules per row."""
    rows: list[dict[str, Any]] = []
    seen: set[str] = set()
    for index, item in enumerate(payload.recipients):
        prefix = f"recipients[{index}]."
        if item.external_id in seen:
            raise Invalid(
                f"{prefix}external_id {item.external_id!r} appears twice",
                field=f"{prefix}external_id",
            )
        seen.add(item.external_id)
        fields, present = _clean(item, guard=settings.address_guard, prefix=prefix)
        rows.append({"external_id": item.external_id, **{k: fields[k] for k in present}})
    params = {"rows": Jsonb(rows)}
    async with pool.connection() as conn, conn.transaction():
        created = await db.execute(conn, "recipients_bulk_create", params)
        await db.execute(conn, "recipients_bulk_update", params)
    return BulkOut(created=created, updated=len(rows) - created)
