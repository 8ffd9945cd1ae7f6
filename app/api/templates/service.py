"""Templates: save (validated, versioned), read, list, roll back, delete, preview.

No HTTP here: callers pass values and get values (the CLI previews through the same
engine, app/core/templates.py). Every save compiles each locale x channel field and
renders it against the example data and a sample recipient; a fault answers 422
naming ``locales.<locale>.<channel>.<field>`` and the line.
"""

from __future__ import annotations

import base64
import binascii
import uuid
from typing import Any

import msgspec
from psycopg.rows import DictRow

from postbell.app.api.pagination import decode_cursor, encode_cursor
from postbell.app.api.templates import repo
from postbell.app.api.templates.schemas import (
    PreviewIn,
    PreviewOut,
    TemplateIn,
    TemplateList,
    TemplateOut,
    TemplateSummary,
    VersionList,
    VersionSummary,
)
from postbell.app.core import db, templates, validation
from postbell.app.core.errors import Conflict, Invalid, InvalidParameter, NotFound

#: example_data and a notification's data, JSON-encoded
MAX_DATA_BYTES = 65_536


def normalized(payload: TemplateIn) -> dict[str, Any]:
    """The stored form: locale tags in one spelling (de-AT), no two alike."""
    locales: dict[str, dict[str, dict[str, str]]] = {}
    for tag, parts in payload.locales.items():
        norm = templates.normalize_locale(tag)
        if norm in locales:
            raise Invalid(f"locale {tag!r} is given twice (as {norm})", field=f"locales.{tag}")
        locales[norm] = {channel: dict(part) for channel, part in parts.items()}
    return {
        "category": payload.category,
        "description": payload.description,
        "default_locale": templates.normalize_locale(payload.default_locale),
        "example_data": payload.example_data,
        "example_recipient": (
            {k: v for k, v in msgspec.to_builtins(payload.example_recipient).items()}
            if payload.example_recipient is not None
            else None
        ),
        "locales": locales,
    }


def invalid(exc: templates.TemplateError, prefix: str = "") -> Invalid:
    return Invalid(f"{prefix}{exc}", field=exc.path if exc.locale else None)


def compile_checked(fields: dict[str, Any]) -> templates.Compiled:
    """Validate a template's content; Invalid naming the field at fault."""
    validation.json_value(fields["example_data"], "example_data", MAX_DATA_BYTES)
    try:
        return templates.validate(
            fields["locales"],
            fields["default_locale"],
            fields["example_data"],
            fields["example_recipient"],
        )
    except templates.TemplateError as exc:
        raise invalid(exc) from None


def _out(row: DictRow) -> TemplateOut:
    return TemplateOut(
        key=row["key"],
        version=row["version"],
        active_version=row["active_version"],
        latest_version=row["latest_version"],
        category=row["category"],
        description=row["description"],
        default_locale=row["default_locale"],
        locales=row["locales"],
        example_data=row["example_data"],
        example_recipient=row["example_recipient"],
        required_data=list(row["required_data"]),
        created_at=row["created_at"],
    )


async def put(pool: db.Pool, key: str, payload: TemplateIn) -> tuple[TemplateOut, bool]:
    """Save a new version and make it active; answers it and whether it is new. The
    same content as the active version makes no new one (so a push is idempotent)."""
    fields = normalized(payload)
    compiled = compile_checked(fields)
    async with pool.connection() as conn, conn.transaction():
        if fields["category"] and not await repo.category_exists(conn, fields["category"]):
            raise Invalid(
                f"unknown category {fields['category']!r}; "
                "create it with PUT /api/categories/{key}",
                field="category",
            )
        current = await repo.get(conn, key)
        if (
            current is not None
            and current["version"] == current["latest_version"]
            and all(current[name] == fields[name] for name in templates.CONTENT_FIELDS)
        ):
            return _out(current), False
        row = await repo.put(conn, key, required_data=compiled.required_data(), **fields)
    templates.CACHE.put(key, row["version"], fields["locales"], fields["default_locale"])
    return _out(row), True


async def get(pool: db.Pool, key: str, version: int | None = None) -> TemplateOut:
    async with pool.connection() as conn:
        row = await repo.get(conn, key, version)
    if row is None:
        what = f"version {version} of template {key!r}" if version else f"template {key!r}"
        raise NotFound(f"no {what}")
    return _out(row)


def _key_cursor(cursor: str | None) -> str:
    if not cursor:
        return ""
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
    except (ValueError, binascii.Error, UnicodeDecodeError):
        raw = ""
    if not raw.startswith("t:"):
        raise InvalidParameter("the cursor is not one this list handed out", field="cursor")
    return raw[2:]


async def list_all(pool: db.Pool, *, cursor: str | None, limit: int) -> TemplateList:
    after = _key_cursor(cursor)
    async with pool.connection() as conn:
        rows = await repo.list_page(conn, after, limit + 1)
    more = len(rows) > limit
    rows = rows[:limit]
    next_cursor = None
    if more and rows:
        next_cursor = base64.urlsafe_b64encode(f"t:{rows[-1]['key']}".encode()).decode()
    return TemplateList(
        items=[msgspec.convert(r, TemplateSummary) for r in rows], next_cursor=next_cursor
    )


async def versions(pool: db.Pool, key: str, *, cursor: str | None, limit: int) -> VersionList:
    before = decode_cursor("v", cursor) or 2_147_483_647
    async with pool.connection() as conn:
        rows = await repo.versions(conn, key, before, limit + 1)
        if not rows and await repo.get(conn, key) is None:
            raise NotFound(f"no template {key!r}")
    more = len(rows) > limit
    rows = rows[:limit]
    return VersionList(
        items=[msgspec.convert(r, VersionSummary) for r in rows],
        next_cursor=encode_cursor("v", rows[-1]["version"]) if more and rows else None,
    )


async def activate(pool: db.Pool, key: str, version: int) -> TemplateOut:
    """Make ``version`` the one new notifications render with (a roll back, or forward)."""
    async with pool.connection() as conn, conn.transaction():
        if not await repo.activate(conn, key, version):
            raise NotFound(f"no version {version} of template {key!r}")
        row = await repo.get(conn, key)
    assert row is not None
    return _out(row)


async def delete(pool: db.Pool, key: str) -> None:
    """Delete a template; Conflict while a scheduled notification will render it or
    a workflow's current version names it. Its versions stay for the notifications
    (and workflow runs) already accepted."""
    async with pool.connection() as conn, conn.transaction():
        if not await repo.lock(conn, key):
            raise NotFound(f"no template {key!r}")
        used = await repo.scheduled_use(conn, key)
        if used is not None:
            raise Conflict(
                f"template {key!r} is used by scheduled notification {used['id']}; "
                "cancel it first (POST /api/notifications/{id}/cancel)"
            )
        workflow = await repo.workflow_use(conn, key)
        if workflow is not None:
            raise Conflict(
                f"template {key!r} is named by workflow {workflow['key']!r}; "
                "change its send steps first (PUT /api/workflows/{key})"
            )
        await repo.delete(conn, key)


def compiled_of(row: DictRow) -> templates.Compiled:
    """The compiled form of a stored version (cached per process; version 0, a file
    not saved yet, is compiled afresh)."""
    if not row["version"]:
        try:
            return templates.Compiled(row["locales"], row["default_locale"])
        except templates.TemplateError as exc:
            raise invalid(exc) from None
    found = templates.CACHE.get(row["key"], row["version"])
    if found is None:
        found = templates.CACHE.put(
            row["key"], row["version"], row["locales"], row["default_locale"]
        )
    return found


def _recipient_vars(row: DictRow) -> templates.RecipientVars:
    return templates.RecipientVars(
        external_id=row["external_id"],
        name=row["name"],
        email=row["email"],
        locale=row["locale"],
        timezone=row["timezone"],
        metadata=row["metadata"] or {},
    )


async def preview(pool: db.Pool, key: str, payload: PreviewIn) -> PreviewOut:
    """Render one channel of a template, as a recipient would get it. Nothing is sent
    or written; a fault answers 422 naming the field and line."""
    async with pool.connection() as conn:
        row = await repo.get(conn, key, payload.version)
        if row is None:
            raise NotFound(
                f"no template {key!r}" + (f" version {payload.version}" if payload.version else "")
            )
        stored = await repo.recipient(conn, payload.recipient) if payload.recipient else None
    if payload.recipient and stored is None:
        raise NotFound(f"no recipient {payload.recipient!r}")
    return render_preview(row, payload, _recipient_vars(stored) if stored is not None else None)


def render_preview(
    row: Any, payload: PreviewIn, recipient: templates.RecipientVars | None
) -> PreviewOut:
    """The preview of a stored (or file) version; shared by the API and the CLI."""
    compiled = compiled_of(row)
    data = payload.data if payload.data is not None else row["example_data"]
    locale = templates.normalize_locale(payload.locale) if payload.locale else None
    if recipient is None:
        recipient = templates.sample_recipient(
            locale or row["default_locale"], row["example_recipient"]
        )
    chosen = compiled.locale_for(locale or recipient.locale, payload.channel)
    try:
        rendered = compiled.render(
            payload.channel,
            recipient,
            data,
            {"id": str(uuid.UUID(int=0)), "category": row["category"], "priority": "normal"},
            unsubscribe_url="https://example.org/unsubscribe?token=preview",
            locale=chosen,
        )
    except templates.TemplateError as exc:
        raise invalid(exc) from None
    return PreviewOut(
        key=row["key"],
        version=row["version"],
        locale=rendered.locale,
        channel=payload.channel,
        fields=dict(rendered.fields),
    )
