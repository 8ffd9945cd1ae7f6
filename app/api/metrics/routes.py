"""HTTP for /metrics: Prometheus text, for an admin key or POSTBELL_METRICS_TOKEN."""

from __future__ import annotations

from typing import Any

from litestar import Request, Response, Router, get
from litestar.connection import ASGIConnection
from litestar.handlers.base import BaseRouteHandler

from postbell.app.api.auth import KeyPrincipal, MetricsPrincipal, TokenPrincipal
from postbell.app.api.deps import Pool
from postbell.app.api.metrics import service
from postbell.app.core.errors import Forbidden, Unauthorized

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


async def metrics_reader(
    connection: ASGIConnection[Any, Any, Any, Any], _: BaseRouteHandler
) -> None:
    """Guard: the metrics token, or an admin key; send keys and recipient tokens get 403.
    OPTIONS (the Allow header) carries no credential and shows no data, as elsewhere."""
    if connection.scope.get("method") == "OPTIONS":
        return
    principal = connection.user
    if isinstance(principal, MetricsPrincipal):
        return
    if isinstance(principal, KeyPrincipal) and principal.role == "admin":
        return
    if isinstance(principal, KeyPrincipal | TokenPrincipal):
        raise Forbidden("/metrics needs an admin key or POSTBELL_METRICS_TOKEN")
    raise Unauthorized("missing credential")


@get("/metrics", media_type=CONTENT_TYPE)
async def metrics(request: Request[Any, Any, Any], pool: Pool) -> Response[bytes]:
    """Prometheus text: queues, deliveries by channel and status, time to send, dead
    letters, provider errors (all from Postgres), and this process's HTTP requests."""
    body = await service.render(pool, request.app.state.services.http_metrics)
    return Response(body, media_type=CONTENT_TYPE)


router = Router(path="/", guards=[metrics_reader], tags=["ops"], route_handlers=[metrics])
