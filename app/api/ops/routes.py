"""HTTP for operators: the dead-letter queue (admin keys only)."""

from __future__ import annotations

from typing import Annotated, Any

from litestar import Request, get, post
from litestar.params import FromPath, FromQuery, JSONBody, QueryParameter

from postbell.app.api.auth import require_role
from postbell.app.api.ops import dead_letters
from postbell.app.api.pagination import DEFAULT_LIMIT, MAX_LIMIT

_ADMIN = [require_role("admin")]


@get("/api/dead-letters", guards=_ADMIN, tags=["dead letters"])
async def list_dead_letters(
    request: Request[Any, Any, Any],
    channel: FromQuery[str | None] = None,
    reason: FromQuery[str | None] = None,
    older_than: FromQuery[str | None] = None,
    cursor: FromQuery[str | None] = None,
    limit: Annotated[int, QueryParameter(ge=1, le=MAX_LIMIT)] = DEFAULT_LIMIT,
) -> dead_letters.DeadLetterPage:
    """Dead deliveries, oldest first; ``older_than`` takes an age (30m, 2h, 7d) or a time."""
    return await dead_letters.list_page(
        request.app.state.pool,
        channel=channel,
        reason=reason,
        older_than=older_than,
        cursor=cursor,
        limit=limit,
    )


@post(
    "/api/dead-letters/{delivery_id:int}/retry",
    guards=_ADMIN,
    tags=["dead letters"],
    status_code=200,
)
async def retry_dead_letter(
    request: Request[Any, Any, Any], delivery_id: FromPath[int]
) -> dead_letters.Retried:
    """Requeue one dead delivery (back to pending, fresh attempts)."""
    return await dead_letters.retry_one(
        request.app.state.pool, request.app.state.settings, delivery_id
    )


@post("/api/dead-letters/retry", guards=_ADMIN, tags=["dead letters"], status_code=200)
async def retry_dead_letters(
    request: Request[Any, Any, Any], data: JSONBody[dead_letters.RetryIn]
) -> dead_letters.Retried:
    """Requeue many: ``{"ids": [...]}``, a filter (channel, reason, older_than) or all."""
    return await dead_letters.retry_many(request.app.state.pool, request.app.state.settings, data)
