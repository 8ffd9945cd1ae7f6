"""HTTP for replays: translate, call the service, answer. Admin keys only: a replay
re-sends other people's messages."""

from __future__ import annotations

import uuid
from typing import Annotated, Any

from litestar import Request, Response, Router, post
from litestar.openapi import ResponseSpec
from litestar.params import FromPath, HeaderParameter, JSONBody

from postbell.app.api.auth import KeyPrincipal, require_role
from postbell.app.api.deps import AppSettings, Pool
from postbell.app.api.replays import service
from postbell.app.api.replays.schemas import NotificationReplayIn, ReplayAccepted, ReplayIn

IdempotencyKey = Annotated[str | None, HeaderParameter(name="Idempotency-Key")]
RESPONSES = {
    200: ResponseSpec(
        ReplayAccepted, description="A dry run (the count), or an idempotent repeat (the original)"
    )
}


def _answer(accepted: ReplayAccepted, created: bool) -> Response[ReplayAccepted]:
    return Response(accepted, status_code=202 if created and not accepted.dry_run else 200)


@post("/", status_code=202, responses=RESPONSES)
async def start_replay(
    request: Request[KeyPrincipal, Any, Any],
    pool: Pool,
    settings: AppSettings,
    data: JSONBody[ReplayIn],
    idempotency_key: IdempotencyKey = None,
) -> Response[ReplayAccepted]:
    """Send one channel's past deliveries again (created in [from, to), with one of
    ``statuses``): 202 with the replay's id and how many it sends; ``dry_run``: 200
    with the count, nothing changed; a repeat with the same ``Idempotency-Key``: 200,
    the original, nothing sent."""
    accepted, created = await service.replay(
        pool,
        settings,
        data,
        idempotency_scope=request.user.idempotency_scope,
        idempotency_key=idempotency_key,
    )
    return _answer(accepted, created)


@post("/{notification_id:uuid}/replay", status_code=202, responses=RESPONSES)
async def replay_notification(
    request: Request[KeyPrincipal, Any, Any],
    pool: Pool,
    settings: AppSettings,
    notification_id: FromPath[uuid.UUID],
    data: JSONBody[NotificationReplayIn | None] = None,
    idempotency_key: IdempotencyKey = None,
) -> Response[ReplayAccepted]:
    """Send one notification's deliveries again (every channel but IN_APP, or
    ``channels``); answers as POST /api/replays."""
    accepted, created = await service.replay_notification(
        pool,
        settings,
        notification_id,
        data or NotificationReplayIn(),
        idempotency_scope=request.user.idempotency_scope,
        idempotency_key=idempotency_key,
    )
    return _answer(accepted, created)


replays = Router(
    path="/api/replays",
    guards=[require_role("admin")],
    tags=["replays"],
    route_handlers=[start_replay],
)
notification_replays = Router(
    path="/api/notifications",
    guards=[require_role("admin")],
    tags=["replays"],
    route_handlers=[replay_notification],
)
