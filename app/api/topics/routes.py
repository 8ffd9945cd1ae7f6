"""HTTP for topic subscriptions."""

from __future__ import annotations

from typing import Annotated

from litestar import Router, delete, get, put
from litestar.params import JSONBody, QueryParameter

from postbell.app.api.auth import require_role
from postbell.app.api.deps import Pool
from postbell.app.api.pagination import DEFAULT_LIMIT, MAX_LIMIT
from postbell.app.api.topics import service
from postbell.app.api.types import CursorParam, KeyParam


@put("/")
async def subscribe(
    pool: Pool, key: KeyParam, data: JSONBody[service.SubscribersIn]
) -> service.Changed:
    """Subscribe up to 10,000 recipients per call; unknown ids are created."""
    return await service.subscribe(pool, key, data)


@delete("/", status_code=200)
async def unsubscribe(
    pool: Pool, key: KeyParam, data: JSONBody[service.SubscribersIn]
) -> service.Changed:
    return await service.unsubscribe(pool, key, data)


@get("/")
async def list_subscribers(
    pool: Pool,
    key: KeyParam,
    cursor: CursorParam = None,
    limit: Annotated[int, QueryParameter(ge=1, le=MAX_LIMIT)] = DEFAULT_LIMIT,
) -> service.SubscriberPage:
    return await service.page(pool, key, cursor=cursor, limit=limit)


router = Router(
    path="/api/topics/{key:str}/subscribers",
    guards=[require_role("send")],
    tags=["topics"],
    route_handlers=[subscribe, unsubscribe, list_subscribers],
)
