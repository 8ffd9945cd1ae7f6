"""HTTP for workflows: admins define them; senders trigger, cancel and read runs."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from litestar import Request, Response, Router, get, post, put
from litestar.openapi import ResponseSpec
from litestar.params import HeaderParameter, JSONBody, QueryParameter

from postbell.app.api.auth import KeyPrincipal, require_role
from postbell.app.api.deps import AppSettings, Pool, ProcessWaker
from postbell.app.api.pagination import DEFAULT_LIMIT, MAX_LIMIT
from postbell.app.api.types import CursorParam, IdParam, KeyParam
from postbell.app.api.workflows import service
from postbell.app.api.workflows.schemas import (
    CancelIn,
    CancelOut,
    RunDetail,
    RunPage,
    TriggerAccepted,
    TriggerIn,
    WorkflowIn,
    WorkflowList,
    WorkflowOut,
)

RunState = Literal["waiting", "digesting", "done", "cancelled", "throttled", "failed"]
RecipientFilter = Annotated[
    str | None, QueryParameter(min_length=1, max_length=255, pattern=r"^[^\x00-\x1f\x7f]*$")
]


@get("/")
async def list_workflows(pool: Pool) -> WorkflowList:
    return await service.list_all(pool)


@get("/{key:str}")
async def get_workflow(pool: Pool, key: KeyParam) -> WorkflowOut:
    return await service.get(pool, key)


@put("/{key:str}", guards=[require_role("admin")])
async def put_workflow(pool: Pool, key: KeyParam, data: JSONBody[WorkflowIn]) -> WorkflowOut:
    """Create or edit a workflow. An edit is a new version: new triggers use it, runs
    in flight finish on theirs. A step that breaks a rule answers 422 naming
    ``steps[i].<field>``."""
    return await service.put(pool, key, data)


@post(
    "/{key:str}/trigger",
    status_code=202,
    responses={
        200: ResponseSpec(TriggerAccepted, description="An idempotent repeat: the original")
    },
)
async def trigger_workflow(
    request: Request[KeyPrincipal, Any, Any],
    pool: Pool,
    settings: AppSettings,
    waker: ProcessWaker,
    key: KeyParam,
    data: JSONBody[TriggerIn],
    idempotency_key: Annotated[str | None, HeaderParameter(name="Idempotency-Key")] = None,
) -> Response[TriggerAccepted]:
    """Start the workflow for each recipient (``to``) or topic subscriber: one run each."""
    accepted, created = await service.trigger(
        pool,
        settings,
        key,
        data,
        idempotency_scope=request.user.idempotency_scope,
        idempotency_key=idempotency_key,
        waker=waker,
    )
    return Response(accepted, status_code=202 if created else 200)


@post("/cancel", status_code=200)
async def cancel_runs(pool: Pool, data: JSONBody[CancelIn]) -> CancelOut:
    """Stop every unfinished run started with this cancel key (the twin of
    ``postbell.cancel``); answers how many."""
    return await service.cancel(pool, data.cancel_key)


@get("/{key:str}/runs")
async def list_runs(
    pool: Pool,
    key: KeyParam,
    recipient: RecipientFilter = None,
    status: Annotated[RunState | None, QueryParameter()] = None,
    cursor: CursorParam = None,
    limit: Annotated[int, QueryParameter(ge=1, le=MAX_LIMIT)] = DEFAULT_LIMIT,
) -> RunPage:
    """The workflow's runs, newest first; ``recipient`` and ``status`` filter them."""
    return await service.runs(
        pool, key, recipient=recipient, status=status, cursor=cursor, limit=limit
    )


@get("/{run_id:int}")
async def get_run(pool: Pool, run_id: IdParam) -> RunDetail:
    """One run: its step, state, due time, the notifications it made and, for the run
    that delivers a digest, the digest's events."""
    return await service.run(pool, run_id)


workflows = Router(
    path="/api/workflows",
    guards=[require_role("send")],
    tags=["workflows"],
    route_handlers=[
        list_workflows,
        get_workflow,
        put_workflow,
        trigger_workflow,
        cancel_runs,
        list_runs,
    ],
)
workflow_runs = Router(
    path="/api/workflow-runs",
    guards=[require_role("send")],
    tags=["workflows"],
    route_handlers=[get_run],
)
