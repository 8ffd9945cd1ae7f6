"""Workflows: storing their versions, triggering, cancelling, reading runs.

No HTTP here. Advancing runs is the workers' job (postbell.workers.workflows).
"""

from __future__ import annotations

import hashlib
from typing import Any

import msgspec

from postbell.app.api.pagination import decode_cursor, encode_cursor
from postbell.app.api.wakeups import Waker
from postbell.app.api.workflows import repo
from postbell.app.api.workflows.schemas import (
    CancelOut,
    DigestOut,
    RunDetail,
    RunOut,
    RunPage,
    TriggerAccepted,
    TriggerIn,
    WorkflowIn,
    WorkflowList,
    WorkflowOut,
)
from postbell.app.core import db, templates, validation, workflow_steps
from postbell.app.core.errors import Conflict, Invalid, NotFound
from postbell.app.core.settings import Settings

#: Runs of a topic trigger inserted per statement.
TOPIC_CHUNK = 10_000
MAX_DATA_BYTES = 65_536
MAX_IDEMPOTENCY_KEY = 255


class IdempotencyConflict(Invalid):
    code = "idempotency_conflict"


def _out(row: Any) -> WorkflowOut:
    return WorkflowOut(
        key=row["key"],
        version=row["version"],
        category=row["category"],
        steps=workflow_steps.decode(row["steps"]),
        created_at=row["created_at"],
        updated_at=row["updated_at"],
    )


async def put(pool: db.Pool, key: str, data: WorkflowIn) -> WorkflowOut:
    """Store the steps as the workflow's next version (unchanged steps and category
    keep the current one). New triggers use it; runs in flight keep theirs."""
    if key == "cancel":
        raise Invalid("'cancel' is reserved (POST /api/workflows/cancel)", field="key")
    workflow_steps.check(data.steps, data.category)
    steps = msgspec.to_builtins(data.steps)
    async with pool.connection() as conn, conn.transaction():
        if data.category is not None and not await repo.category_exists(conn, data.category):
            raise Invalid(
                f"unknown category {data.category!r}; create it with PUT /api/categories/{{key}}",
                field="category",
            )
        await _check_templates(conn, data.steps)
        current = await repo.lock(conn, key)
        if (
            current["steps"] != steps
            or current["category"] != data.category
            or not current["version"]
        ):
            await repo.add_version(conn, key, current["version"] + 1, data.category, steps)
        row = await repo.get(conn, key)
    assert row is not None
    return _out(row)


async def _check_templates(conn: db.Conn, steps: list[workflow_steps.Step]) -> None:
    """Every template a send step names exists, and has a part (or an IN_APP one to
    fall back to) for each channel the step names, in its active version."""
    keys = workflow_steps.template_keys(steps)
    if not keys:
        return
    found = await repo.templates_active(conn, keys)
    for index, step in enumerate(steps):
        if not isinstance(step, workflow_steps.SendStep):
            continue
        # (where the key is, where a missing part is reported, the key)
        named = [(f"steps[{index}].template", f"steps[{index}].channels", step.template)] + [
            (f"steps[{index}].variants[{i}].template",) * 2 + (v.template,)
            for i, v in enumerate(step.variants or ())
        ]
        for field, part_field, key in named:
            if key is None:
                continue
            row = found.get(key)
            if row is None:
                raise Invalid(
                    f"{field}: unknown template {key!r}; save it with PUT /api/templates/{{key}}",
                    field=field,
                )
            compiled = templates.CACHE.get(row["key"], row["version"]) or templates.CACHE.put(
                row["key"], row["version"], row["locales"], row["default_locale"]
            )
            for channel in step.channels or ():
                if not any(compiled.part_channel(loc, channel) for loc in compiled.locales):
                    raise Invalid(
                        f"{part_field}: template {key!r} has no {channel} part"
                        " (nor an IN_APP one to use)",
                        field=part_field,
                    )


async def _check_trigger_templates(
    conn: db.Conn, key: str, steps: list[workflow_steps.Step], data: dict[str, Any]
) -> None:
    """The templates the trigger will pin still exist (else 409) and its data holds
    every key they require (else 422 naming it); they stay share-locked until the
    trigger commits. postbell.trigger() checks the same in SQL."""
    keys = workflow_steps.template_keys(steps)
    if not keys:
        return
    found = await repo.templates_active(conn, keys)
    for name in keys:
        row = found.get(name)
        if row is None:
            raise Conflict(
                f"workflow {key!r} names template {name!r}, which no longer exists;"
                " save it again or change the workflow"
            )
        missing = templates.missing_data(
            set(row["required_data"]) - workflow_steps.WORKFLOW_VARIABLES, data
        )
        if missing is not None:
            raise Invalid(
                f"data lacks {missing!r}, which template {name!r} requires",
                field=f"data.{missing}",
            )
    reserved = sorted(set(data) & templates.RESERVED)
    if reserved:
        raise Invalid(f"data may not use the reserved name {reserved[0]!r}", field="data")


async def get(pool: db.Pool, key: str) -> WorkflowOut:
    async with pool.connection() as conn:
        row = await repo.get(conn, key)
    if row is None:
        raise NotFound(f"no workflow {key!r}")
    return _out(row)


async def list_all(pool: db.Pool) -> WorkflowList:
    async with pool.connection() as conn:
        rows = await repo.list_all(conn)
    return WorkflowList(items=[_out(r) for r in rows])


def _request_hash(key: str, payload: TriggerIn) -> bytes:
    canonical = msgspec.json.encode([key, msgspec.to_builtins(payload)], order="sorted")
    return hashlib.sha256(canonical).digest()


async def trigger(
    pool: db.Pool,
    settings: Settings,
    key: str,
    payload: TriggerIn,
    *,
    idempotency_scope: str,
    idempotency_key: str | None,
    waker: Waker | None = None,
) -> tuple[TriggerAccepted, bool]:
    """Start the workflow for each recipient, in one transaction: the trigger row and
    its runs (a topic's in chunks of ``TOPIC_CHUNK``, each one INSERT ... SELECT).
    Answers the trigger and whether it is new (an idempotent repeat: the original).
    With a ``waker``, a new trigger whose first step may send at once wakes the
    workflow engines after the commit (coalesced with other requests')."""
    if idempotency_key is not None and not 1 <= len(idempotency_key) <= MAX_IDEMPOTENCY_KEY:
        raise Invalid("Idempotency-Key must be 1 to 255 characters", field="Idempotency-Key")
    if payload.to is not None and payload.topic is not None:
        raise Invalid("give either 'to' or 'topic', not both", field="topic")
    if payload.to is None and payload.topic is None:
        raise Invalid("the trigger needs 'to' (recipient ids) or 'topic'", field="to")
    for index, recipient in enumerate(payload.to or ()):
        validation.external_id(recipient, f"to[{index}]")
    if payload.data is not None:
        validation.json_value(payload.data, "data", MAX_DATA_BYTES)
    digest = _request_hash(key, payload) if idempotency_key else None
    async with pool.connection() as conn, conn.transaction():
        current = await repo.get(conn, key)
        if current is None:
            raise NotFound(f"no workflow {key!r}")
        steps = workflow_steps.decode(current["steps"])
        await _check_trigger_templates(conn, key, steps, payload.data or {})
        if payload.topic is not None and not await repo.topic_exists(conn, payload.topic):
            raise Invalid(
                f"unknown topic {payload.topic!r}; subscribe recipients to it first", field="topic"
            )
        row = await repo.start(
            conn,
            workflow=key,
            recipients=list(dict.fromkeys(payload.to)) if payload.to else [],
            topic=payload.topic,
            data=payload.data,
            cancel_key=payload.cancel_key,
            idempotency_scope=idempotency_scope if idempotency_key else None,
            idempotency_key=idempotency_key,
            request_hash=digest,
            idempotency_ttl_hours=settings.idempotency_ttl_hours,
        )
        if not row["created"]:
            if bytes(row["request_hash"] or b"") != (digest or b""):
                raise IdempotencyConflict(
                    "this Idempotency-Key was used with a different request",
                    field="Idempotency-Key",
                )
            runs = await repo.count_trigger_runs(conn, row["id"])
        elif payload.topic is not None:
            runs, after = 0, 0
            while True:
                chunk = await repo.insert_topic_chunk(
                    conn,
                    topic=payload.topic,
                    after=after,
                    chunk=TOPIC_CHUNK,
                    trigger_id=row["id"],
                    workflow=key,
                    version=row["version"],
                    cancel_key=payload.cancel_key,
                )
                runs += int(chunk["runs"])
                if int(chunk["runs"]) < TOPIC_CHUNK:
                    break
                after = int(chunk["last_id"])
        else:
            runs = len(dict.fromkeys(payload.to or ()))
    if waker is not None and row["created"] and workflow_steps.wakes(steps):
        waker.poke_workflows()
    accepted = TriggerAccepted(id=row["id"], workflow=key, version=row["version"], runs=runs)
    return accepted, bool(row["created"])


async def cancel(pool: db.Pool, cancel_key: str) -> CancelOut:
    """Stop every unfinished run with this cancel key; answers how many."""
    async with pool.connection() as conn:
        count = await repo.cancel(conn, cancel_key)
    return CancelOut(cancel_key=cancel_key, cancelled=count)


def _digest(row: Any) -> DigestOut | None:
    if row["digest_id"] is None:
        return None
    return DigestOut(
        id=row["digest_id"],
        state=row["digest_state"],
        count=int(row["digest_count"] or 0),
        run_id=row["digest_run_id"],
    )


def _run_fields(row: Any) -> dict[str, Any]:
    return {
        "id": row["id"],
        "trigger_id": row["trigger_id"],
        "workflow": row["workflow_key"],
        "version": row["version"],
        "recipient": row["recipient"],
        "step": row["step"],
        "step_type": row["step_type"],
        "state": row["state"],
        "reason": row["reason"],
        "due_at": row["due_at"] if row["state"] in ("waiting", "digesting") else None,
        "cancel_key": row["cancel_key"],
        "notifications": list(row["notification_ids"] or ()),
        "created_at": row["created_at"],
        "updated_at": row["updated_at"],
        "finished_at": row["finished_at"],
    }


async def run(pool: db.Pool, run_id: int) -> RunDetail:
    async with pool.connection() as conn:
        row = await repo.get_run(conn, run_id)
        if row is None:
            raise NotFound(f"no workflow run {run_id}")
        delivers = row["digest_id"] is not None and row["digest_run_id"] == row["id"]
        events = await repo.digest_events(conn, row["digest_id"]) if delivers else None
    return RunDetail(**_run_fields(row), digest=_digest(row), data=row["data"], events=events)


async def runs(
    pool: db.Pool,
    key: str,
    *,
    recipient: str | None,
    status: str | None,
    cursor: str | None,
    limit: int,
) -> RunPage:
    before = decode_cursor("r", cursor) or (1 << 62)
    async with pool.connection() as conn:
        if await repo.get(conn, key) is None:
            raise NotFound(f"no workflow {key!r}")
        rows = await repo.list_runs(
            conn, workflow=key, recipient=recipient, state=status, before=before, limit=limit + 1
        )
    more = len(rows) > limit
    rows = rows[:limit]
    items = [RunOut(**_run_fields(r), digest=None) for r in rows]
    return RunPage(
        items=items, next_cursor=encode_cursor("r", rows[-1]["id"]) if more and rows else None
    )
