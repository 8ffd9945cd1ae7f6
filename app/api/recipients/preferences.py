"""A recipient's notification preferences: channel switches, category x channel
switches, topic mutes, quiet hours. Readable and writable with the recipient's own
token."""

from __future__ import annotations

import datetime as dt
import re
from typing import Annotated

import msgspec
from msgspec import UNSET, UnsetType
from psycopg.types.json import Jsonb

from postbell.app.api.recipients.service import external_id
from postbell.app.api.types import LINE_PATTERN, Key
from postbell.app.core import db, validation
from postbell.app.core.channels import CHANNELS, ChannelName, unknown_channel
from postbell.app.core.errors import Invalid
from postbell.app.core.workflow_steps import DigestSetting

_CLOCK_RE = re.compile(r"^([01]\d|2[0-3]):[0-5]\d$")


class QuietHours(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """Local wall-clock times; the window may span midnight (22:00 to 07:00)."""

    start: Annotated[str, msgspec.Meta(max_length=5)]
    end: Annotated[str, msgspec.Meta(max_length=5)]
    #: IANA zone; defaults to the recipient's timezone, then UTC
    timezone: Annotated[str, msgspec.Meta(max_length=64, pattern=LINE_PATTERN)] | None = None


class PreferencesIn(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """What to change; what is left out stays as it was (quiet_hours: null clears)."""

    channels: dict[ChannelName, bool] | UnsetType = UNSET
    categories: dict[Key, dict[ChannelName, bool]] | UnsetType = UNSET
    #: per topic: false mutes every channel, {"EMAIL": false} one; null forgets it
    topics: dict[Key, bool | dict[str, bool] | None] | UnsetType = UNSET
    quiet_hours: QuietHours | UnsetType | None = UNSET
    #: per category, the frequency of digests with "window": "preference"; null clears
    digest: dict[Key, DigestSetting | None] | UnsetType = UNSET


class PreferencesOut(msgspec.Struct):
    channels: dict[str, bool]
    categories: dict[str, dict[str, bool]]
    quiet_hours: QuietHours | None
    updated_at: dt.datetime | None
    digest: dict[str, DigestSetting] = msgspec.field(default_factory=dict)
    topics: dict[str, bool | dict[str, bool]] = {}


EMPTY = PreferencesOut(channels={}, categories={}, quiet_hours=None, updated_at=None)


def _check_topics(topics: dict[str, bool | dict[str, bool] | None]) -> None:
    # Channel names are checked here, not by the type, so that the error names the
    # topic (topics.community-42) instead of the whole map.
    for topic, switches in topics.items():
        if isinstance(switches, dict):
            for channel in switches:
                if channel not in CHANNELS:
                    raise Invalid(
                        f"topics.{topic}: {unknown_channel(channel)}", field=f"topics.{topic}"
                    )


async def get(pool: db.Pool, recipient: str) -> PreferencesOut:
    async with pool.connection() as conn:
        row = await db.fetch_one(conn, "preferences_get", {"external_id": external_id(recipient)})
    return msgspec.convert(row, PreferencesOut) if row else EMPTY


async def put(pool: db.Pool, recipient: str, data: PreferencesIn) -> PreferencesOut:
    quiet: dict[str, str | None] | None = None
    if isinstance(data.quiet_hours, QuietHours):
        for end in ("start", "end"):
            if not _CLOCK_RE.match(getattr(data.quiet_hours, end)):
                raise Invalid(
                    f"quiet_hours.{end}: give a time like 22:00", field=f"quiet_hours.{end}"
                )
        if data.quiet_hours.timezone is not None:
            validation.timezone(data.quiet_hours.timezone, "quiet_hours.timezone")
        quiet = msgspec.to_builtins(data.quiet_hours)
    if data.topics is not UNSET:
        _check_topics(data.topics)
    params = {
        "external_id": external_id(recipient),
        "channels": Jsonb(data.channels) if data.channels is not UNSET else None,
        "categories": Jsonb(data.categories) if data.categories is not UNSET else None,
        "topics": Jsonb(data.topics) if data.topics is not UNSET else None,
        "quiet_hours": Jsonb(quiet) if quiet is not None else None,
        "quiet_hours_set": data.quiet_hours is not UNSET,
    }
    async with pool.connection() as conn, conn.transaction():
        await db.execute(conn, "devices_ensure_recipient", params)
        row = await db.fetch_one(conn, "preferences_put", params)
        if data.digest is not UNSET:
            await db.execute(
                conn,
                "digest_preferences_put",
                {
                    "external_id": params["external_id"],
                    "categories": list(data.digest),
                    "settings": [
                        Jsonb(msgspec.to_builtins(s)) if s is not None else None
                        for s in data.digest.values()
                    ],
                },
            )
        digest = await db.fetch_one(conn, "digest_preferences_get", params)
    assert row is not None
    return msgspec.convert({**row, "digest": digest["digest"] if digest else {}}, PreferencesOut)
