"""Push devices of a recipient: register, list, remove."""

from __future__ import annotations

import datetime as dt
from typing import Annotated, Literal

import msgspec

from postbell.app.api.recipients.service import external_id
from postbell.app.api.types import LINE_PATTERN
from postbell.app.core import db
from postbell.app.core.errors import NotFound


class DeviceIn(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """An FCM registration token and the platform it belongs to."""

    token: Annotated[str, msgspec.Meta(min_length=1, max_length=4096, pattern=LINE_PATTERN)]
    platform: Literal["android", "ios", "web"]


class DeviceOut(msgspec.Struct):
    token: str
    platform: str
    created_at: dt.datetime
    last_seen_at: dt.datetime
    disabled_at: dt.datetime | None
    disabled_reason: str | None


class DeviceList(msgspec.Struct):
    items: list[DeviceOut]


async def register(pool: db.Pool, recipient: str, data: DeviceIn) -> DeviceOut:
    """Register (or re-activate) a device; an unknown recipient is created."""
    params = {
        "external_id": external_id(recipient),
        "token": data.token.strip(),
        "platform": data.platform,
    }
    async with pool.connection() as conn, conn.transaction():
        await db.execute(conn, "devices_ensure_recipient", params)
        row = await db.fetch_one(conn, "devices_register", params)
    return msgspec.convert(row, DeviceOut)


async def list_devices(pool: db.Pool, recipient: str) -> DeviceList:
    async with pool.connection() as conn:
        rows = await db.fetch_all(conn, "devices_list", {"external_id": external_id(recipient)})
    return DeviceList(items=[msgspec.convert(r, DeviceOut) for r in rows])


async def remove(pool: db.Pool, recipient: str, token: str) -> None:
    async with pool.connection() as conn:
        deleted = await db.execute(
            conn, "devices_delete", {"external_id": external_id(recipient), "token": token}
        )
    if not deleted:
        raise NotFound(f"recipient {recipient!r} has no such device")
