"""Opaque cursors for keyset pagination: ``{"items": [...], "next_cursor": "..." | null}``."""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import re
import uuid

from postbell.app.core.errors import InvalidParameter
from postbell.app.core.validation import MAX_ID

DEFAULT_LIMIT = 50
MAX_LIMIT = 500
_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
#: what a pair cursor's name may be (a channel's name)
_NAME = re.compile(r"[A-Z][A-Z0-9_]{0,63}")


def _pack(raw: str) -> str:
    return base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")


def _unpack(cursor: str) -> str:
    """The text inside a cursor (raises ValueError, binascii.Error or
    UnicodeDecodeError for one that is not base64 of UTF-8)."""
    return base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()


def encode_cursor(kind: str, position: int) -> str:
    return _pack(f"{kind}:{position}")


def decode_cursor(kind: str, cursor: str | None) -> int | None:
    """The position inside ``cursor``, or None for the first page."""
    if not cursor:
        return None
    try:
        raw = _unpack(cursor)
        prefix, _, value = raw.partition(":")
        if prefix != kind:
            raise ValueError(prefix)
        position = int(value)
        if not 0 <= position <= MAX_ID:
            raise ValueError(value)
        return position
    except (ValueError, binascii.Error, UnicodeDecodeError):
        raise InvalidParameter(
            "the cursor is not one this list handed out", field="cursor"
        ) from None


def encode_pair_cursor(kind: str, number: int, name: str) -> str:
    """A cursor for lists ordered by (an id, a name): a notification's deliveries by
    (recipient, channel)."""
    return _pack(f"{kind}:{number}:{name}")


def decode_pair_cursor(kind: str, cursor: str) -> tuple[int, str]:
    """The (id, name) position inside ``cursor``."""
    try:
        raw = _unpack(cursor)
        prefix, number, name = raw.split(":")
        position = int(number)
        if prefix != kind or not 0 <= position <= MAX_ID or not _NAME.fullmatch(name):
            raise ValueError(raw)
        return position, name
    except (ValueError, binascii.Error, UnicodeDecodeError):
        raise InvalidParameter(
            "the cursor is not one this list handed out", field="cursor"
        ) from None


def clamp_limit(limit: int | None) -> int:
    if limit is None:
        return DEFAULT_LIMIT
    return max(1, min(limit, MAX_LIMIT))


def encode_time_cursor(kind: str, at: dt.datetime, row_id: uuid.UUID) -> str:
    """A cursor for lists ordered by (time, uuid): newest-first keyset pages."""
    micros = (at - _EPOCH) // dt.timedelta(microseconds=1)
    return _pack(f"{kind}:{micros}:{row_id.hex}")


def decode_time_cursor(kind: str, cursor: str | None) -> tuple[dt.datetime, uuid.UUID] | None:
    """The (time, id) position inside ``cursor``, or None for the first page."""
    if not cursor:
        return None
    try:
        raw = _unpack(cursor)
        prefix, micros, hex_id = raw.split(":")
        if prefix != kind:
            raise ValueError(prefix)
        at = _EPOCH + dt.timedelta(microseconds=int(micros))
        return at, uuid.UUID(hex=hex_id)
    except (ValueError, binascii.Error, UnicodeDecodeError, OverflowError, OSError):
        raise InvalidParameter(
            "the cursor is not one this list handed out", field="cursor"
        ) from None
