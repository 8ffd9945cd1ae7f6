"""HTTP for templates (admin key): translate, call the service, answer."""

from __future__ import annotations

from typing import Annotated

from litestar import Router, delete, get, post, put
from litestar.openapi import ResponseSpec
from litestar.params import JSONBody, Parameter, QueryParameter

from postbell.app.api.auth import require_role
from postbell.app.api.deps import Pool
from postbell.app.api.errors import ErrorBody
from postbell.app.api.pagination import DEFAULT_LIMIT, MAX_LIMIT
from postbell.app.api.templates import service
from postbell.app.api.templates.schemas import (
    PreviewIn,
    PreviewOut,
    TemplateIn,
    TemplateList,
    TemplateOut,
    VersionList,
)
from postbell.app.api.types import CursorParam, KeyParam

VersionParam = Annotated[int, Parameter(ge=1, le=2_147_483_647)]
LimitParam = Annotated[int, QueryParameter(ge=1, le=MAX_LIMIT)]
_INVALID = {422: ResponseSpec(ErrorBody, description="Names the locale, channel, field and line")}


@put("/{key:str}", responses=_INVALID)
async def put_template(pool: Pool, key: KeyParam, data: JSONBody[TemplateIn]) -> TemplateOut:
    """Save a new version of the template and make it active. Every locale x channel
    field is compiled and rendered against `example_data`; a fault answers 422 naming
    it. The same content as the active version makes no new version."""
    out, _ = await service.put(pool, key, data)
    return out


@get("/")
async def list_templates(
    pool: Pool, cursor: CursorParam = None, limit: LimitParam = DEFAULT_LIMIT
) -> TemplateList:
    """Every template (its active version), by key."""
    return await service.list_all(pool, cursor=cursor, limit=limit)


@get("/{key:str}")
async def get_template(pool: Pool, key: KeyParam) -> TemplateOut:
    """The template's active version."""
    return await service.get(pool, key)


@get("/{key:str}/versions")
async def list_versions(
    pool: Pool, key: KeyParam, cursor: CursorParam = None, limit: LimitParam = DEFAULT_LIMIT
) -> VersionList:
    """Every version of the template, newest first."""
    return await service.versions(pool, key, cursor=cursor, limit=limit)


@get("/{key:str}/versions/{version:int}")
async def get_version(pool: Pool, key: KeyParam, version: VersionParam) -> TemplateOut:
    """One version of the template, whole."""
    return await service.get(pool, key, version)


@post("/{key:str}/versions/{version:int}/activate", status_code=200)
async def activate_version(pool: Pool, key: KeyParam, version: VersionParam) -> TemplateOut:
    """Make a version the active one (a roll back); notifications already accepted
    keep the version they pinned."""
    return await service.activate(pool, key, version)


@delete(
    "/{key:str}",
    status_code=204,
    responses={409: ResponseSpec(ErrorBody, description="A scheduled notification uses it")},
)
async def delete_template(pool: Pool, key: KeyParam) -> None:
    """Delete the template; 409 while a scheduled notification will render it."""
    await service.delete(pool, key)


@post("/{key:str}/preview", status_code=200, responses=_INVALID)
async def preview_template(pool: Pool, key: KeyParam, data: JSONBody[PreviewIn]) -> PreviewOut:
    """Render one channel as a recipient would get it (nothing is sent)."""
    return await service.preview(pool, key, data)


router = Router(
    path="/api/templates",
    guards=[require_role("admin")],
    tags=["templates"],
    route_handlers=[
        put_template,
        list_templates,
        get_template,
        list_versions,
        get_version,
        activate_version,
        delete_template,
        preview_template,
    ],
)
