"""HTTP for notifications: translate, call the service, answer."""

from __future__ import annotations

import uuid
from typing import Annotated, Any

from litestar import Request, Response, get, post
from litestar.params import FromPath, FromQuery, HeaderParameter, JSONBody, QueryParameter

from postbell.app.api.auth import KeyPrincipal, require_role
from postbell.app.api.notifications import service
from postbell.app.api.notifications.schemas import (
    Cancelled,
    NotificationAccepted,
    NotificationIn,
    NotificationOut,
)
from postbell.app.api.pagination import DEFAULT_LIMIT, MAX_LIMIT


@post("/api/notifications", guards=[require_role("send")], status_code=202, tags=["notifications"])
async def send_notification(
    request: Request[KeyPrincipal, Any, Any],
    data: JSONBody[NotificationIn],
    idempotency_key: Annotated[str | None, HeaderParameter(name="Idempotency-Key")] = None,
) -> Response[NotificationAccepted]:
    """Accept a notification: 202 with its id; an idempotent repeat answers 200, the original."""
    accepted, created = await service.accept(
        request.app.state.pool,
        request.app.state.settings,
        data,
        idempotency_scope=request.user.idempotency_scope,
        idempotency_key=idempotency_key,
        waker=request.app.state.waker,
    )
    return Response(accepted, status_code=202 if created else 200)


@get(
    "/api/notifications/{notification_id:uuid}",
    guards=[require_role("send")],
    tags=["notifications"],
)
async def get_notification(
    request: Request[Any, Any, Any],
    notification_id: FromPath[uuid.UUID],
    cursor: FromQuery[str | None] = None,
    limit: Annotated[int, QueryParameter(ge=1, le=MAX_LIMIT)] = DEFAULT_LIMIT,
) -> NotificationOut:
    """The notification, its delivery counts by status, and a page of its deliveries."""
    return await service.read(request.app.state.pool, notification_id, cursor=cursor, limit=limit)


@post(
    "/api/notifications/{notification_id:uuid}/cancel",
    guards=[require_role("send")],
    status_code=200,
    tags=["notifications"],
)
async def cancel_notification(
    request: Request[Any, Any, Any], notification_id: FromPath[uuid.UUID]
) -> Cancelled:
    """Cancel every delivery not yet sent; 409 when nothing is left to cancel."""
    return await service.cancel(request.app.state.pool, notification_id)
