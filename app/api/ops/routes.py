"""HTTP for operators: liveness and readiness (open), the dead-letter queue (admin keys)."""

from __future__ import annotations

from typing import Annotated, Any

from litestar import Request, Router, get, post
from litestar.params import JSONBody, QueryParameter

from postbell.app.api.auth import require_role
from postbell.app.api.deps import AppSettings, Pool
from postbell.app.api.ops import dead_letters as service
from postbell.app.api.ops.health import health as health_check
from postbell.app.api.ops.health import ready
from postbell.app.api.pagination import DEFAULT_LIMIT, MAX_LIMIT
from postbell.app.api.types import CursorParam, FilterParam, IdParam


@get("/")
async def list_dead_letters(
    pool: Pool,
    channel: FilterParam = None,
    reason: FilterParam = None,
    older_than: FilterParam = None,
    cursor: CursorParam = None,
    limit: Annotated[int, QueryParameter(ge=1, le=MAX_LIMIT)] = DEFAULT_LIMIT,
) -> service.DeadLetterPage:
    """Dead deliveries, oldest first; ``older_than`` takes an age (30m, 2h, 7d) or a time."""
    return await service.list_page(
        pool, channel=channel, reason=reason, older_than=older_than, cursor=cursor, limit=limit
    )


@post("/{delivery_id:int}/retry", status_code=200)
async def retry_dead_letter(
    pool: Pool, settings: AppSettings, delivery_id: IdParam
) -> service.Retried:
    """Requeue one dead delivery (back to pending, fresh attempts)."""
    return await service.retry_one(pool, settings, delivery_id)


@post("/retry", status_code=200)
async def retry_dead_letters(
    pool: Pool, settings: AppSettings, data: JSONBody[service.RetryIn]
) -> service.Retried:
    """Requeue many: ``{"ids": [...]}``, a filter (channel, reason, older_than) or all."""
    return await service.retry_many(pool, settings, data)


@get("/api", include_in_schema=False)
async def api_index(request: Request[Any, Any, Any]) -> dict[str, Any]:
    """Where things are: the docs, the probes and every endpoint (no credential needed;
    it shows no data)."""
    routes = sorted(
        f"{method} {route.path_format}"
        for route in request.app.routes
        if route.path.startswith("/api/")
        for method in sorted(getattr(route, "methods", ()))
        if method not in ("HEAD", "OPTIONS")
    )
    return {
        "service": "postbell",
        "docs": "/schema",
        "openapi": "/schema/openapi.json",
        "health": "/health",
        "ready": "/ready",
        "auth": "Authorization: Bearer <API key or recipient token>",
        "endpoints": routes,
    }


health = Router(path="/", tags=["ops"], route_handlers=[health_check, ready])
index = Router(path="/", route_handlers=[api_index])
dead_letters = Router(
    path="/api/dead-letters",
    guards=[require_role("admin")],
    tags=["dead letters"],
    route_handlers=[list_dead_letters, retry_dead_letter, retry_dead_letters],
)
