"""HTTP for topic subscriptions."""

from __future__ import annotations

from typing import Annotated, Any

from litestar import Request, delete, get, put
from litestar.params import FromPath, FromQuery, JSONBody, QueryParameter

from postbell.app.api.auth import require_role
from postbell.app.api.pagination import DEFAULT_LIMIT, MAX_LIMIT
from postbell.app.api.topics import service

_SEND = [require_role("send")]


@put("/api/topics/{key:str}/subscribers", guards=_SEND, tags=["topics"])
async def subscribe(
    request: Request[Any, Any, Any], key: FromPath[str], data: JSONBody[service.SubscribersIn]
) -> service.Changed:
    """Subscribe up to 10,000 recipients per call; unknown ids are created."""
    return await service.subscribe(request.app.state.pool, key, data)


@delete("/api/topics/{key:str}/subscribers", guards=_SEND, tags=["topics"], status_code=200)
async def unsubscribe(
    request: Request[Any, Any, Any], key: FromPath[str], data: JSONBody[service.SubscribersIn]
) -> service.Changed:
    return await service.unsubscribe(request.app.state.pool, key, data)


@get("/api/topics/{key:str}/subscribers", guards=_SEND, tags=["topics"])
async def list_subscribers(
    request: Request[Any, Any, Any],
    key: FromPath[str],
    cursor: FromQuery[str | None] = None,
    limit: Annotated[int, QueryParameter(ge=1, le=MAX_LIMIT)] = DEFAULT_LIMIT,
) -> service.SubscriberPage:
    return await service.page(request.app.state.pool, key, cursor=cursor, limit=limit)
