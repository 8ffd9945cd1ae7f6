"""HTTP for notifications: translate, call the service, answer."""

from __future__ import annotations

import uuid
from typing import Annotated, Any

from litestar import Request, Response, Router, get, post
from litestar.openapi import ResponseSpec
from litestar.params import FromPath, HeaderParameter, JSONBody, QueryParameter

from postbell.app.api.auth import KeyPrincipal, require_role
from postbell.app.api.deps import AppSettings, Batches, Pool, ProcessWaker
from postbell.app.api.errors import ErrorBody
from postbell.app.api.notifications import service
from postbell.app.api.notifications.schemas import (
    Cancelled,
    NotificationAccepted,
    NotificationIn,
    NotificationOut,
    NotificationPage,
)
from postbell.app.api.pagination import DEFAULT_LIMIT, MAX_LIMIT
from postbell.app.api.types import LINE_PATTERN, CursorParam, FilterParam


@post(
    "/",
    status_code=202,
    responses={
        200: ResponseSpec(NotificationAccepted, description="An idempotent repeat: the original")
    },
)
async def send_notification(
    request: Request[KeyPrincipal, Any, Any],
    pool: Pool,
    settings: AppSettings,
    waker: ProcessWaker,
    batches: Batches,
    data: JSONBody[NotificationIn],
    idempotency_key: Annotated[str | None, HeaderParameter(name="Idempotency-Key")] = None,
) -> Response[NotificationAccepted]:
    """Accept a notification: 202 with its id; an idempotent repeat answers 200, the original."""
    accepted, created = await service.accept(
        pool,
        settings,
        data,
        idempotency_scope=request.user.idempotency_scope,
        idempotency_key=idempotency_key,
        waker=waker,
        batches=batches,
    )
    return Response(accepted, status_code=202 if created else 200)


@get("/")
async def list_notifications(
    pool: Pool,
    recipient: Annotated[
        str | None, QueryParameter(max_length=255, pattern=LINE_PATTERN, description="external id")
    ] = None,
    category: FilterParam = None,
    status: FilterParam = None,
    channel: FilterParam = None,
    template: FilterParam = None,
    workflow: FilterParam = None,
    created_after: FilterParam = None,
    created_before: FilterParam = None,
    cursor: CursorParam = None,
    limit: Annotated[int, QueryParameter(ge=1, le=MAX_LIMIT)] = DEFAULT_LIMIT,
) -> NotificationPage:
    """Notifications, newest first, each with its delivery counts by status. Filters:
    ``recipient`` (external id), ``category``, ``status``, ``channel`` (a channel it
    sends on), ``template`` (the template it was sent with), ``workflow`` (the
    workflow that made it), ``created_after`` / ``created_before`` (RFC 3339 times)."""
    return await service.list_page(
        pool,
        recipient=recipient,
        category=category,
        status=status,
        channel=channel,
        template=template,
        workflow=workflow,
        created_after=created_after,
        created_before=created_before,
        cursor=cursor,
        limit=limit,
    )


@get("/{notification_id:uuid}")
async def get_notification(
    pool: Pool,
    notification_id: FromPath[uuid.UUID],
    cursor: CursorParam = None,
    limit: Annotated[int, QueryParameter(ge=1, le=MAX_LIMIT)] = DEFAULT_LIMIT,
) -> NotificationOut:
    """The notification, its delivery counts by status, and a page of its deliveries."""
    return await service.read(pool, notification_id, cursor=cursor, limit=limit)


@post(
    "/{notification_id:uuid}/cancel",
    status_code=200,
    responses={409: ResponseSpec(ErrorBody, description="Nothing is left to cancel")},
)
async def cancel_notification(pool: Pool, notification_id: FromPath[uuid.UUID]) -> Cancelled:
    """Cancel every delivery not yet sent; 409 when nothing is left to cancel."""
    return await service.cancel(pool, notification_id)


router = Router(
    path="/api/notifications",
    guards=[require_role("send")],
    tags=["notifications"],
    route_handlers=[send_notification, list_notifications, get_notification, cancel_notification],
)
