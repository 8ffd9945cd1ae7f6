"""Payloads of /api/workflows and /api/workflow-runs (msgspec Structs)."""

from __future__ import annotations

import datetime as dt
import uuid
from typing import Annotated, Any

import msgspec

from postbell.app.api.types import MAX_RECIPIENTS, ExternalId, Key, Short
from postbell.app.core.workflow_steps import Step


class WorkflowIn(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """A workflow's steps, run in order for each recipient of a trigger; ``category``
    is the category of the notifications its send steps make."""

    steps: Annotated[list[Step], msgspec.Meta(min_length=1, max_length=50)]
    category: Key | None = None


class WorkflowOut(msgspec.Struct):
    key: str
    #: each edit is a new version; runs finish on the version they started with
    version: int
    category: str | None
    steps: list[Step]
    created_at: dt.datetime
    updated_at: dt.datetime


class WorkflowList(msgspec.Struct):
    items: list[WorkflowOut]


class TriggerIn(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """Start the workflow for each recipient: ``to`` (ids) or every subscriber of
    ``topic``. ``data`` is what its steps read (``data.thread_id``); runs started
    with a ``cancel_key`` stop at ``POST /api/workflows/cancel`` with that key."""

    to: (
        Annotated[list[ExternalId], msgspec.Meta(min_length=1, max_length=MAX_RECIPIENTS)] | None
    ) = None
    topic: Key | None = None
    data: dict[str, Any] | None = None
    cancel_key: Short | None = None


class TriggerAccepted(msgspec.Struct):
    #: the trigger's id (its runs carry it as trigger_id)
    id: uuid.UUID
    workflow: str
    version: int
    #: runs started: one per distinct recipient
    runs: int


class CancelIn(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    cancel_key: Annotated[
        str, msgspec.Meta(min_length=1, max_length=255, pattern=r"^[^\x00-\x1f\x7f]*$")
    ]


class CancelOut(msgspec.Struct):
    cancel_key: str
    #: runs stopped (waiting or digesting ones; finished runs are left as they are)
    cancelled: int


class DigestOut(msgspec.Struct):
    id: int
    #: open (collecting) or fired
    state: str
    #: events collected so far (open) or delivered (fired)
    count: int
    #: the run that goes on with the digest (once fired)
    run_id: int | None


class RunOut(msgspec.Struct):
    id: int
    trigger_id: uuid.UUID
    workflow: str
    version: int
    recipient: str
    #: the step it waits at (or ended at): its index and type
    step: int
    step_type: str | None
    #: waiting, digesting, done, cancelled, throttled, failed
    state: str
    reason: str | None
    #: when its step runs (digesting: when its digest fires); null once finished
    due_at: dt.datetime | None
    cancel_key: str | None
    #: the notifications its send steps made, in order
    notifications: list[uuid.UUID]
    digest: DigestOut | None
    created_at: dt.datetime
    updated_at: dt.datetime
    finished_at: dt.datetime | None


class RunDetail(RunOut):
    data: dict[str, Any] = msgspec.field(default_factory=dict)
    #: for the run that delivers a digest: each collected trigger's data, in order
    events: list[dict[str, Any]] | None = None


class RunPage(msgspec.Struct):
    items: list[RunOut]
    next_cursor: str | None
