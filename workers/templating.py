"""Rendering templated notifications in the workers.

The router renders IN_APP text in the routing transaction: once per template locale
(stored on the notification) when the part shows nothing of the recipient, else per
recipient (stored on each delivery), in batches. Deliver runs render every other
channel at send time with the version the notification pinned, so a retry renders
the same text; renders with equal inputs (``Compiled.cache_key``) are done once per
run. A render that fails fails only its delivery: dead, reason ``template_error``.
"""

from __future__ import annotations

import dataclasses
import json
import uuid
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import structlog
from psycopg.types.json import Jsonb

from postbell.app.core import db, templates
from postbell.app.core.validation import MAX_ID
from postbell.workers.channels.base import Delivery

log = structlog.get_logger("postbell.templates")

#: IN_APP deliveries rendered and written per statement (per-recipient parts)
RENDER_BATCH = 5_000


async def ensure_loaded(conn: db.Conn, pairs: Iterable[tuple[str, int]]) -> None:
    """Compile (once per process) every version named in ``pairs``."""
    wanted = {p for p in pairs if templates.CACHE.get(*p) is None}
    if not wanted:
        return
    keys, versions = zip(*sorted(wanted), strict=True)
    rows = await db.fetch_all(
        conn, "template_versions_load", {"keys": list(keys), "versions": list(versions)}
    )
    for row in rows:
        try:
            templates.CACHE.put(row["key"], row["version"], row["locales"], row["default_locale"])
        except templates.TemplateError as exc:  # saved valid; an engine change could break it
            log.error(
                "template_broken", template=row["key"], version=row["version"], error=str(exc)
            )


def compiled(key: str, version: int) -> templates.Compiled:
    found = templates.CACHE.get(key, version)
    if found is None:
        raise templates.TemplateError(f"template {key!r} version {version} cannot be loaded")
    return found


def recipient_vars(
    row: Mapping[str, Any], metadata_column: str = "metadata"
) -> templates.RecipientVars:
    return templates.RecipientVars(
        external_id=row["external_id"],
        name=row["name"],
        email=row["email"],
        locale=row["locale"],
        timezone=row["timezone"],
        metadata=row[metadata_column] or {},
    )


def error_text(key: str, version: int, exc: BaseException) -> str:
    return f"template {key} v{version}: {exc}"[:1000]


def notification_vars(row: Mapping[str, Any], notification_id: Any) -> dict[str, Any]:
    return {"id": str(notification_id), "category": row["category"], "priority": row["priority"]}


#: The recipient ids ``render_in_app`` looks at when it is given no range: all.
ALL_RECIPIENTS = (0, MAX_ID)
#: No recipient: only a text shared by every recipient is rendered (and stored).
SHARED_ONLY = (0, 0)


async def render_in_app(
    conn: db.Conn, ids: Sequence[uuid.UUID], recipients: tuple[int, int] = ALL_RECIPIENTS
) -> None:
    """The IN_APP text of the batch's templated notifications, in the routing
    transaction (so an inbox never shows an item before its text). ``recipients``:
    the range (after, until] a topic chunk routed, so that a chunk reads its own
    deliveries, not every earlier chunk's again (quadratic in the fan-out). An experiment's
    template variants first, per recipient: their deliveries then hold their own text,
    so the notification's template (if any) renders only the others."""
    rows = await db.fetch_all(conn, "route_templated", {"ids": list(ids)})
    if not rows:
        return
    await ensure_loaded(conn, ((n["template_key"], n["template_version"]) for n in rows))
    for v in rows:
        if v["variant"] is not None:
            try:
                template: templates.Compiled | None = compiled(
                    v["template_key"], v["template_version"]
                )
            except templates.TemplateError:
                template = None
            await _render_each(conn, template, v, recipients, variant=v["variant"])
    notifications = [n for n in rows if n["variant"] is None]
    for n in notifications:
        key, version = n["template_key"], n["template_version"]
        try:
            template = compiled(key, version)
        except templates.TemplateError:
            template = None
        if template is not None and not template.uses_recipient("IN_APP"):
            if n["rendered"]:
                continue  # an earlier chunk of a topic did it
            shared = _render_shared(template, n)
            if shared is not None:
                await db.execute(
                    conn, "route_store_rendered", {"id": n["id"], "rendered": json.dumps(shared)}
                )
                continue
        await _render_each(conn, template, n, recipients)


def _render_shared(template: templates.Compiled, n: Mapping[str, Any]) -> dict[str, Any] | None:
    """One render per template locale; None when any fails (then per recipient, so
    exactly the deliveries it fails for end dead)."""
    rendered: dict[str, Any] = {}
    for locale in template.locales:
        if template.part_channel(locale, "IN_APP") is None:
            continue
        try:
            out = template.render(
                "IN_APP",
                templates.sample_recipient(locale),
                n["template_data"] or {},
                notification_vars(n, n["id"]),
                locale=locale,
            )
        except templates.TemplateError:
            return None
        rendered[locale.lower()] = dict(out.fields)
    return {"default": template.default_locale.lower(), "locales": rendered}


async def _render_each(
    conn: db.Conn,
    template: templates.Compiled | None,
    n: Mapping[str, Any],
    recipients: tuple[int, int],
    variant: str | None = None,
) -> None:
    """Per recipient: the notification's IN_APP deliveries still without text, or
    those of one template ``variant`` of its experiment."""
    key, version = n["template_key"], n["template_version"]
    after, until = recipients
    if variant is None:
        rows = await db.fetch_all(
            conn, "route_unrendered_in_app", {"id": n["id"], "after": after, "until": until}
        )
    else:
        rows = await db.fetch_all(
            conn,
            "route_unrendered_variant_in_app",
            {"id": n["id"], "variant": variant, "after": after, "until": until},
        )
    done: dict[tuple[Any, ...], tuple[dict[str, str] | None, str | None]] = {}
    for start in range(0, len(rows), RENDER_BATCH):
        ids: list[int] = []
        contents: list[Jsonb | None] = []
        errors: list[str | None] = []
        for row in rows[start : start + RENDER_BATCH]:
            recipient = recipient_vars(row)
            if template is None:
                result: tuple[dict[str, str] | None, str | None] = (
                    None,
                    error_text(key, version, templates.TemplateError("cannot be loaded")),
                )
            else:
                cache_key = template.cache_key("IN_APP", recipient)
                found = done.get(cache_key)
                if found is None:
                    try:
                        out = template.render(
                            "IN_APP",
                            recipient,
                            n["template_data"] or {},
                            notification_vars(n, n["id"]),
                        )
                        found = (dict(out.fields), None)
                    except templates.TemplateError as exc:
                        found = (None, error_text(key, version, exc))
                    done[cache_key] = found
                result = found
            ids.append(row["id"])
            contents.append(Jsonb(result[0]) if result[0] is not None else None)
            errors.append(result[1])
        await db.execute(
            conn, "route_set_content", {"ids": ids, "contents": contents, "errors": errors}
        )
    failed = sum(1 for v in done.values() if v[1] is not None)
    if failed:
        log.warning(
            "template_failed",
            notification_id=str(n["id"]),
            template=key,
            version=version,
            channel="IN_APP",
        )


class SendRenderer:
    """Renders one deliver run's templated deliveries, each distinct input once."""

    def __init__(self, channel: str, unsubscribe: Any = None) -> None:
        self.channel = channel
        self.unsubscribe = unsubscribe  # EmailChannel's Unsubscribe, for EMAIL
        self.done: dict[tuple[Any, ...], templates.Rendered | templates.TemplateError] = {}

    async def load(self, conn: db.Conn, rows: Sequence[Mapping[str, Any]]) -> None:
        await ensure_loaded(
            conn,
            ((r["template_key"], r["template_version"]) for r in rows if r["template_key"]),
        )

    def apply(self, delivery: Delivery, row: Mapping[str, Any]) -> Delivery:
        """``delivery`` with the template's text for its channel and recipient.
        Raises ``TemplateError`` (the delivery's outcome: dead, template_error)."""
        key, version = row["template_key"], row["template_version"]
        template = compiled(key, version)
        recipient = recipient_vars(row, "recipient_metadata")
        unsubscribe_url = None
        if (
            self.channel == "EMAIL"
            and self.unsubscribe is not None
            and delivery.category
            and not delivery.category_required
        ):
            unsubscribe_url = self.unsubscribe.url(recipient.external_id, delivery.category)
        cache_key = (key, version, *template.cache_key(self.channel, recipient))
        found = self.done.get(cache_key)
        if found is None:
            try:
                found = template.render(
                    self.channel,
                    recipient,
                    row["template_data"] or {},
                    notification_vars(row, row["notification_id"]),
                    unsubscribe_url=unsubscribe_url,
                )
            except templates.TemplateError as exc:
                found = exc
            self.done[cache_key] = found
        if isinstance(found, templates.TemplateError):
            raise found
        fields = found.fields
        if self.channel == "EMAIL":
            title: str | None = fields.get("subject") or ""
            body = fields.get("text") or ""
        else:
            title = found.get("title")
            body = fields.get("body") or ""
        return dataclasses.replace(
            delivery,
            title=title,
            body=body,
            action_url=found.get("action_url"),
            rendered=fields,
            content_key=cache_key,
        )
