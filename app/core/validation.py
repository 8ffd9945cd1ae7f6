"""Checks msgspec's type constraints cannot express, each naming its field."""

from __future__ import annotations

import datetime as dt
import re
import unicodedata
import zoneinfo
from typing import Any
from urllib.parse import urlsplit

import msgspec

from postbell.app.core.addresses import AddressGuard
from postbell.app.core.errors import Invalid

#: The largest id of a bigint column (deliveries, API keys): ids run 1..MAX_ID.
MAX_ID = 2**63 - 1

_EMAIL_RE = re.compile(
    r"^[^@\s<>(),;:\"\[\]]+@[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?)+$"
)
_E164_RE = re.compile(r"^\+[1-9]\d{6,14}$")
_TELEGRAM_CHAT_RE = re.compile(r"^(?:-?[1-9][0-9]{0,18}|@[A-Za-z][A-Za-z0-9_]{3,31})$")
_LOCALE_RE = re.compile(r"^[A-Za-z]{2,3}(?:[-_][A-Za-z0-9]{2,8})*$")


def no_nul(value: str, field: str) -> str:
    """Text for a Postgres text column, which cannot hold NUL characters."""
    if "\x00" in value:
        raise Invalid(f"{field}: contains a NUL character", field=field)
    return value


def external_id(value: str, field: str) -> str:
    """A host app's id of a recipient: printable, no control characters (no NUL, no
    line breaks), so that it reads the same in logs, tokens and the CLI's tables."""
    if any(unicodedata.category(c) == "Cc" for c in value):
        raise Invalid(f"{field}: recipient ids may not contain control characters", field=field)
    return value


def email(value: str, field: str) -> str:
    value = value.strip()
    if len(value) > 320 or not _EMAIL_RE.match(value):
        raise Invalid(f"{field}: not an email address", field=field)
    if not value.isascii():
        # Non-ASCII mailboxes need SMTPUTF8, which few relays and APIs accept.
        raise Invalid(
            f"{field}: only ASCII addresses (write an IDN domain in punycode)", field=field
        )
    return value


def phone(value: str, field: str) -> str:
    if not _E164_RE.match(value):
        raise Invalid(f"{field}: not an E.164 phone number (like +14155550123)", field=field)
    return value


def telegram_chat_id(value: str, field: str) -> str:
    """A chat the Bot API can send to: a numeric id (negative for groups and channels)
    or a public channel's @username."""
    if not _TELEGRAM_CHAT_RE.match(value):
        raise Invalid(
            f"{field}: not a Telegram chat id (a number like 123456789 or -1001234567890,"
            " or @channelname)",
            field=field,
        )
    return value


def locale(value: str, field: str) -> str:
    if not _LOCALE_RE.match(value):
        raise Invalid(f"{field}: not a locale tag (like en or pt-BR)", field=field)
    return value


def timezone(value: str, field: str) -> str:
    try:
        zoneinfo.ZoneInfo(value)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):
        raise Invalid(f"{field}: not an IANA time zone (like Europe/Berlin)", field=field) from None
    return value


def http_url(value: str, field: str) -> str:
    try:
        parts = urlsplit(value)
    except ValueError:
        parts = None
    if parts is None or parts.scheme not in ("http", "https") or not parts.hostname:
        raise Invalid(f"{field}: not an http(s) URL", field=field)
    return value


def webhook_url(value: str, field: str, *, guard: AddressGuard) -> str:
    """An http(s) URL the address guard lets through (see ``core/addresses.py``)."""
    http_url(value, field)
    why = guard.refusal(value)
    if why:
        hint = "" if guard.allow_private else "; set POSTBELL_WEBHOOK_ALLOW_PRIVATE=1 to allow it"
        raise Invalid(f"{field} {why}{hint}", field=field)
    return value


def aware(value: dt.datetime, field: str) -> dt.datetime:
    """A time with an offset, in UTC, within the years postbell and Postgres both
    represent (a far-future offset time such as 9999-12-31T23:59:59-23:59 is year
    10000 in UTC and is refused here, not stored)."""
    if value.tzinfo is None or value.utcoffset() is None:
        raise Invalid(
            f"{field}: give a time zone offset (RFC 3339, like 2030-01-01T09:00:00Z)", field=field
        )
    try:
        utc = value.astimezone(dt.UTC)
    except OverflowError:
        utc = None
    if utc is None or not _EARLIEST <= utc <= _LATEST:
        raise Invalid(f"{field}: out of range (years 1970 to 9998)", field=field)
    return utc


_EARLIEST = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
#: the escape \\u0000 itself, not the text "\\u0000" (whose backslash is escaped)
_JSON_NUL_RE = re.compile(rb"(?<!\\)(?:\\\\)*\\u0000")
_LATEST = dt.datetime(9998, 12, 31, tzinfo=dt.UTC)


def json_value(value: Any, field: str, limit: int) -> None:
    """A JSON value that Postgres's jsonb can store (no NUL in any string: jsonb refuses
    \\u0000) and at most ``limit`` bytes once encoded."""
    encoded = msgspec.json.encode(value)
    if len(encoded) > limit:
        raise Invalid(f"{field}: larger than {limit} bytes as JSON", field=field)
    if _JSON_NUL_RE.search(encoded):
        raise Invalid(f"{field}: a string in it holds NUL (\\u0000)", field=field)


_CONTENT_SID_RE = re.compile(r"^HX[0-9a-fA-F]{32}$")
MAX_TEMPLATE_VARIABLES = 100


def whatsapp_template(metadata: dict[str, Any]) -> None:
    """A notification's WhatsApp template, when its metadata names one:
    ``whatsapp_content_sid`` a Twilio content SID, ``whatsapp_variables`` an object of
    strings (at most 100)."""
    sid = metadata.get("whatsapp_content_sid")
    if sid is not None and not (isinstance(sid, str) and _CONTENT_SID_RE.match(sid)):
        field = "metadata.whatsapp_content_sid"
        raise Invalid(f"{field}: a Twilio content SID (HX and 32 hex digits)", field=field)
    variables = metadata.get("whatsapp_variables")
    if variables is not None:
        field = "metadata.whatsapp_variables"
        if (
            not isinstance(variables, dict)
            or len(variables) > MAX_TEMPLATE_VARIABLES
            or not all(isinstance(v, str) for v in variables.values())
        ):
            raise Invalid(
                f"{field}: an object of at most {MAX_TEMPLATE_VARIABLES} strings,"
                ' like {"1": "Ana"}',
                field=field,
            )
