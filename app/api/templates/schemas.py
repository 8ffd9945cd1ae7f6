"""Payloads of /api/templates (msgspec Structs: decoded, validated and documented)."""

from __future__ import annotations

import datetime as dt
from typing import Annotated, Any

import msgspec

from postbell.app.api.types import LINE_PATTERN, Description, ExternalId, Key, Short
from postbell.app.core.channels import ChannelName
from postbell.app.core.templates import MAX_SOURCE

#: A BCP 47 tag as Babel knows it: en, de, de-AT, pt_BR, zh-Hant-TW
LocaleTag = Annotated[
    str,
    msgspec.Meta(
        min_length=2, max_length=35, pattern=r"^[A-Za-z]{2,3}([-_][A-Za-z0-9]{2,8}){0,3}$"
    ),
]
#: One field's Jinja2 source
FieldSource = Annotated[str, msgspec.Meta(max_length=MAX_SOURCE)]
FieldName = Annotated[str, msgspec.Meta(min_length=1, max_length=40, pattern=LINE_PATTERN)]
Part = dict[FieldName, FieldSource]


class ExampleRecipient(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """The sample recipient a template is validated and previewed with (each field
    left out takes a default: "Alex Example", the locale validated, UTC)."""

    external_id: ExternalId | None = None
    name: Short | None = None
    email: Short | None = None
    locale: LocaleTag | None = None
    timezone: Annotated[str, msgspec.Meta(max_length=64, pattern=LINE_PATTERN)] | None = None
    metadata: dict[str, Any] | None = None


class TemplateIn(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """A template: per locale, one part per channel, each field a Jinja2 template."""

    default_locale: LocaleTag
    locales: Annotated[dict[LocaleTag, dict[ChannelName, Part]], msgspec.Meta(min_length=1)]
    #: The category of notifications that use the template and name none
    category: Key | None = None
    description: Description | None = None
    #: What the template is validated against on save (and previewed with by default)
    example_data: dict[str, Any] = msgspec.field(default_factory=dict)
    example_recipient: ExampleRecipient | None = None


class TemplateOut(msgspec.Struct):
    key: str
    #: the version shown (GET: the active one)
    version: int
    active_version: int
    latest_version: int
    category: str | None
    description: str | None
    default_locale: str
    locales: dict[str, dict[str, dict[str, str]]]
    example_data: dict[str, Any]
    example_recipient: dict[str, Any] | None
    #: the data keys a notification with this template must carry
    required_data: list[str]
    #: when this version was saved
    created_at: dt.datetime


class TemplateSummary(msgspec.Struct):
    key: str
    version: int
    latest_version: int
    category: str | None
    description: str | None
    default_locale: str
    locales: list[str]
    required_data: list[str]
    created_at: dt.datetime
    updated_at: dt.datetime


class TemplateList(msgspec.Struct):
    items: list[TemplateSummary]
    next_cursor: str | None


class VersionSummary(msgspec.Struct):
    version: int
    active: bool
    category: str | None
    default_locale: str
    locales: list[str]
    required_data: list[str]
    created_at: dt.datetime


class VersionList(msgspec.Struct):
    items: list[VersionSummary]
    next_cursor: str | None


class PreviewIn(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """What to render: a channel, in a locale (else the recipient's, else the
    template's default), with ``data`` (else the template's example data), for a
    stored recipient (else the sample recipient), of a version (else the active one)."""

    channel: ChannelName
    locale: LocaleTag | None = None
    data: dict[str, Any] | None = None
    recipient: ExternalId | None = None
    version: Annotated[int, msgspec.Meta(ge=1, le=2_147_483_647)] | None = None


class PreviewOut(msgspec.Struct):
    key: str
    version: int
    locale: str
    channel: str
    #: the rendered fields (EMAIL: subject, html, text)
    fields: dict[str, str]
