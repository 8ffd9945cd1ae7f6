"""The workflow engine: advances due runs in batches, inside the worker process.

A loop beside the procrastinate worker (``loop``), never one job per run. Each
round is one transaction: claim up to ``BATCH`` due runs (``FOR UPDATE SKIP
LOCKED``: several workers share the work, and a worker killed mid-round releases
its claim with its connection, committing nothing), decide each run's step, make the
batch's notifications (one per group of runs with the same message, through
``enqueue_notification``: preferences, quiet hours, priorities, fallbacks apply),
and record every run's outcome with one UPDATE. Because the notifications and the
advance commit together, a crash can neither send a step twice nor skip it.

Due digests fire in rounds of their own (``fire_digests``).

A trigger whose first step may send at once NOTIFYs ``postbell_workflows`` (the API
coalesced through its Waker, ``postbell.trigger`` once per call); each engine
LISTENs there on a connection of its own and runs a round at once. Polling every
``interval`` stays: delays and digests come due without any NOTIFY, and a lost
wake-up only delays.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import datetime as dt
import re
from typing import Any

import msgspec
import structlog
from psycopg.types.json import Jsonb

from postbell.app.core import db, templates, workflow_steps
from postbell.app.core.workflow_steps import (
    DelayStep,
    DigestStep,
    SendStep,
    Step,
    ThrottleStep,
)

log = structlog.get_logger("postbell.workflows")

#: Runs claimed per round (one transaction, a handful of statements).
BATCH = 500
#: How soon a run whose `in_app` condition waits for routing looks again.
ROUTING_RECHECK = dt.timedelta(seconds=1)
PURGE_EVERY_SECONDS = 60.0
#: Jinja2 markup: message fields without it are sent as written (no render).
_MARKUP_RE = re.compile(r"\{[{%#]")

#: Versions never change once stored: cached per process.
_versions: dict[tuple[str, int], tuple[str | None, list[Step]]] = {}


@dataclasses.dataclass(slots=True)
class Outcome:
    step: int
    state: str
    due_at: dt.datetime | None = None
    reason: str | None = None
    notification_id: Any = None


async def _steps(conn: db.Conn, rows: list[Any]) -> None:
    missing = {(r["workflow_key"], r["version"]) for r in rows} - _versions.keys()
    if not missing:
        return
    found = await db.fetch_all(
        conn,
        "workflow_versions_get_many",
        {"keys": [k for k, _ in missing], "versions": [v for _, v in missing]},
    )
    for v in found:
        _versions[(v["workflow_key"], v["version"])] = (
            v["category"],
            workflow_steps.decode(v["steps"]),
        )


def _holds(condition: workflow_steps.Condition, data: Any, in_app: Any) -> bool:
    if (
        condition.path is not None
        and workflow_steps.read_path(data, condition.path) != condition.equals
    ):
        return False
    if condition.in_app is not None:
        if in_app is None or in_app["delivery_id"] is None:
            return False
        column = {"unread": "read_at", "unseen": "seen_at", "not_archived": "archived_at"}
        return in_app[column[condition.in_app]] is None
    return True


def _render(text: str | None, variables: dict[str, Any], name: str) -> str | None:
    """A message field rendered in the template sandbox (``TemplateError`` when it
    does not render with this run's variables)."""
    if text is None or not _MARKUP_RE.search(text):
        return text
    return templates.render_text(text, variables, name)


async def advance(pool: db.Pool, *, batch: int = BATCH) -> int:
    """One round: claim up to ``batch`` due runs and take each one step on. Answers
    how many runs it claimed (``batch``: there may be more due)."""
    async with pool.connection() as conn, conn.transaction():
        rows = await db.fetch_all(conn, "workflow_runs_claim_due", {"limit": batch})
        if not rows:
            return 0
        await _steps(conn, rows)
        now = dt.datetime.now(dt.UTC)
        outcomes: dict[int, Outcome] = {}
        sends: list[tuple[Any, SendStep, str | None]] = []
        digests: list[tuple[Any, DigestStep, str | None]] = []
        throttles: list[tuple[Any, ThrottleStep]] = []
        in_app_ids: list[int] = []
        for row in rows:
            category, steps = _versions[(row["workflow_key"], row["version"])]
            index = row["step"]
            if index >= len(steps):
                outcomes[row["id"]] = Outcome(index, "done")
                continue
            step = steps[index]
            try:
                if isinstance(step, SendStep):
                    sends.append((row, step, category))
                    if step.if_ is not None and step.if_.in_app is not None:
                        in_app_ids.append(row["id"])
                elif isinstance(step, DelayStep):
                    until = workflow_steps.delay_until(step, row["data"], now)
                    if isinstance(until, str):
                        outcomes[row["id"]] = Outcome(index, "failed", reason=until)
                    else:
                        outcomes[row["id"]] = Outcome(index + 1, "waiting", due_at=max(until, now))
                elif isinstance(step, DigestStep):
                    digests.append((row, step, category))
                else:
                    throttles.append((row, step))
            except (ValueError, OverflowError) as exc:
                # One run's data must not hold up the batch behind it: that run fails.
                outcomes[row["id"]] = Outcome(index, "failed", reason=f"step {index}: {exc}")
        in_app: dict[int, Any] = {}
        if in_app_ids:
            for r in await db.fetch_all(conn, "workflow_runs_in_app_state", {"ids": in_app_ids}):
                in_app[r["run_id"]] = r
        await _send(conn, sends, in_app, outcomes, now)
        if digests:
            await _join_digests(conn, digests, outcomes, now)
        if throttles:
            await _throttle(conn, throttles, outcomes, now)
        if outcomes:
            ids = list(outcomes)
            await db.execute(
                conn,
                "workflow_runs_advance",
                {
                    "ids": ids,
                    "steps": [outcomes[i].step for i in ids],
                    "states": [outcomes[i].state for i in ids],
                    "due_ats": [outcomes[i].due_at for i in ids],
                    "reasons": [outcomes[i].reason for i in ids],
                    "notification_ids": [outcomes[i].notification_id for i in ids],
                },
            )
    return len(rows)


async def _send(
    conn: db.Conn,
    sends: list[tuple[Any, SendStep, str | None]],
    in_app: dict[int, Any],
    outcomes: dict[int, Outcome],
    now: dt.datetime,
) -> None:
    groups: dict[bytes, dict[str, Any]] = {}
    members: dict[bytes, list[int]] = {}
    repeats: dict[tuple[bytes, str], int] = {}
    events = await _digest_events(conn, sends)
    for row, step, category in sends:
        index = row["step"]
        if step.if_ is not None:
            state = in_app.get(row["id"])
            if step.if_.in_app is not None and state is not None and not state["routed"]:
                # the earlier notification is not routed yet: its item may not exist
                outcomes[row["id"]] = Outcome(index, "waiting", due_at=now + ROUTING_RECHECK)
                continue
            if not _holds(step.if_, row["data"], state):
                outcomes[row["id"]] = Outcome(index + 1, "waiting", due_at=now)
                continue
        count = int(row["digest_count"] or 1)
        variables = workflow_steps.variables(
            row["data"], events.get(row["delivered_digest"]) or [row["data"]], count
        )
        metadata = {
            **(step.metadata or {}),
            "workflow": {"key": row["workflow_key"], "version": row["version"], "step": index},
        }
        if row["digest_count"] is not None:
            metadata["workflow"]["count"] = count
        if row["topic"] is not None:
            # routing reads it there: the members' mutes of that topic apply
            metadata["workflow"]["topic"] = row["topic"]
        group: dict[str, Any] = {
            "action_url": step.action_url,
            "metadata": metadata,
            "channels": list(dict.fromkeys(step.channels)) if step.channels else None,
            "priority": step.priority,
            "category": category,
            "fallback": step.fallback,
            "experiment": step.experiment,
            "variants": msgspec.to_builtins(step.variants) if step.variants else None,
        }
        if step.variants and any(v.template for v in step.variants):
            # template variants render the versions the trigger pinned, with the run's
            # variables (the templates' data)
            pins = row["templates"] or {}
            unpinned = [v.template for v in step.variants if v.template and v.template not in pins]
            if unpinned:
                outcomes[row["id"]] = Outcome(
                    index, "failed", reason=f"step {index}: template {unpinned[0]} not pinned"
                )
                continue
            group["variants"] = [
                v | {"template_version": int(pins[v["template"]])} if v.get("template") else v
                for v in group["variants"]
            ]
            group["variant_data"] = variables
        if step.template is not None:
            pinned = (row["templates"] or {}).get(step.template)
            if pinned is None:  # pinned by every trigger since migration 0017
                outcomes[row["id"]] = Outcome(
                    index, "failed", reason=f"step {index}: template {step.template} not pinned"
                )
                continue
            group |= {
                "template_key": step.template,
                "template_version": int(pinned),
                "template_data": variables,
            }
        else:
            text = step.message if step.message is not None else step.body
            try:
                group |= {
                    "title": _render(step.title, variables, "title"),
                    "body": _render(text, variables, "message"),
                }
            except templates.TemplateError as exc:
                # this run's data does not fit the step: it fails alone
                outcomes[row["id"]] = Outcome(index, "failed", reason=f"step {index}: {exc}")
                continue
        if group.get("body") is None and step.variants:
            # the variants carry the text: the first variant's body stands in
            group["body"] = next((v.body for v in step.variants if v.body), None)
        key = msgspec.json.encode(group, order="sorted")
        # Two runs of one recipient (two triggers) never share a notification: the
        # second makes its own, as each trigger sends once.
        nth = repeats[(key, row["recipient"])] = repeats.get((key, row["recipient"]), -1) + 1
        if nth:
            key += b"#%d" % nth
        groups.setdefault(key, group)
        members.setdefault(key, []).append(row["id"])
        outcomes[row["id"]] = Outcome(index + 1, "waiting", due_at=now)
    if not groups:
        return
    by_run = {row["id"]: row["recipient"] for row, _, _ in sends}
    keys = list(groups)
    payload = [
        {**groups[k], "n": n, "recipients": sorted({by_run[i] for i in members[k]})}
        for n, k in enumerate(keys)
    ]
    made = await db.fetch_all(conn, "workflow_runs_send", {"groups": Jsonb(payload)})
    for r in made:
        for run_id in members[keys[r["n"]]]:
            outcomes[run_id].notification_id = r["id"]
        group = groups[keys[r["n"]]]
        if group["experiment"] is not None:
            # same transaction: its route job is seen with the variants or not at all
            await db.execute(
                conn,
                "notifications_set_experiment",
                {
                    "id": r["id"],
                    "experiment": group["experiment"],
                    "variants": Jsonb(group["variants"]),
                    "data": Jsonb(group["variant_data"]) if "variant_data" in group else None,
                },
            )


async def _digest_events(
    conn: db.Conn, sends: list[tuple[Any, SendStep, str | None]]
) -> dict[int, list[Any]]:
    """The events of the digests this batch's sends deliver (the first
    ``MAX_EVENTS`` of each, in trigger order), by digest id."""
    ids = sorted({row["delivered_digest"] for row, _, _ in sends if row["delivered_digest"]})
    if not ids:
        return {}
    rows = await db.fetch_all(
        conn,
        "workflow_digests_events_many",
        {"ids": ids, "max_events": workflow_steps.MAX_EVENTS},
    )
    return {r["digest_id"]: list(r["events"] or ()) for r in rows}


async def _join_digests(
    conn: db.Conn,
    digests: list[tuple[Any, DigestStep, str | None]],
    outcomes: dict[int, Outcome],
    now: dt.datetime,
) -> None:
    """Runs at a digest step join their digests in one statement. A step with
    ``window: preference`` reads each recipient's frequency there (set-based): the
    runs whose recipient chose ``off`` come back and go on at once, undigested."""
    windows: list[int | None] = []
    max_waits: list[int | None] = []
    defaults: list[Jsonb | None] = []
    for _, step, _ in digests:
        by_preference = step.window == "preference"
        window = None if by_preference else workflow_steps.seconds(step.window, "window")
        windows.append(window)
        max_waits.append(
            workflow_steps.seconds(step.max_wait, "max_wait") if step.max_wait else window
        )
        defaults.append(
            Jsonb(msgspec.to_builtins(step.default or workflow_steps.DEFAULT_SETTING))
            if by_preference
            else None
        )
    undigested = await db.fetch_all(
        conn,
        "workflow_digests_join",
        {
            "run_ids": [r["id"] for r, _, _ in digests],
            "workflows": [r["workflow_key"] for r, _, _ in digests],
            "versions": [r["version"] for r, _, _ in digests],
            "steps": [r["step"] for r, _, _ in digests],
            "recipients": [r["recipient"] for r, _, _ in digests],
            "keys": [workflow_steps.key_of(s.key, r["data"]) for r, s, _ in digests],
            "windows": windows,
            "max_waits": max_waits,
            "categories": [c for _, _, c in digests],
            "defaults": defaults,
        },
    )
    steps = {r["id"]: r["step"] for r, _, _ in digests}
    for r in undigested:
        outcomes[r["run_id"]] = Outcome(steps[r["run_id"]] + 1, "waiting", due_at=now)


async def _throttle(
    conn: db.Conn,
    throttles: list[tuple[Any, ThrottleStep]],
    outcomes: dict[int, Outcome],
    now: dt.datetime,
) -> None:
    params = {
        "run_ids": [r["id"] for r, _ in throttles],
        "workflows": [r["workflow_key"] for r, _ in throttles],
        "steps": [r["step"] for r, _ in throttles],
        "recipients": [r["recipient"] for r, _ in throttles],
        "keys": [workflow_steps.key_of(s.key, r["data"]) for r, s in throttles],
        "limits": [s.limit for _, s in throttles],
        "pers": [workflow_steps.seconds(s.per, "per") for _, s in throttles],
    }
    await db.fetch_one(
        conn,
        "workflow_throttle_lock",
        {k: params[k] for k in ("workflows", "steps", "recipients", "keys")},
    )
    decided = {
        r["run_id"]: r["passes"]
        for r in await db.fetch_all(conn, "workflow_throttle_decide", params)
    }
    for row, step in throttles:
        index = row["step"]
        if decided[row["id"]]:
            outcomes[row["id"]] = Outcome(index + 1, "waiting", due_at=now)
        else:
            outcomes[row["id"]] = Outcome(
                index, "throttled", reason=f"over {step.limit} per {step.per}"
            )


async def fire_digests(pool: db.Pool, *, batch: int = BATCH) -> int:
    """Fire up to ``batch`` due digests: the first of each digest's runs goes on with
    its events; answers how many digests fired."""
    async with pool.connection() as conn, conn.transaction():
        fired = await db.fetch_all(conn, "workflow_digests_claim_due", {"limit": batch})
        if fired:
            await db.execute(conn, "workflow_digests_deliver", {"ids": [r["id"] for r in fired]})
    return len(fired)


async def purge_throttle_passes(pool: db.Pool, *, limit: int = 5_000) -> int:
    async with pool.connection() as conn:
        return await db.execute(conn, "workflow_throttle_passes_purge", {"limit": limit})


async def run_due(pool: db.Pool, *, batch: int = BATCH) -> int:
    """Fire due digests and advance due runs until nothing is due; answers how many
    runs and digests it took on (the loop calls it; so do tests)."""
    total = 0
    while True:
        fired = await fire_digests(pool, batch=batch)
        advanced = await advance(pool, batch=batch)
        total += fired + advanced
        if not fired and not advanced:
            return total


async def listen(database_url: str, wake: asyncio.Event) -> None:
    """LISTEN on the engine's wake-up channel and set ``wake`` for each NOTIFY (and
    after every (re)connect: what came meanwhile was missed). Reconnects forever,
    with a growing delay, until cancelled."""
    delay = 0.5
    while True:
        try:
            async with await db.connect(database_url, name="postbell-workflows-listen") as conn:
                await conn.execute(f"LISTEN {workflow_steps.WAKEUP_CHANNEL}".encode())
                delay = 0.5
                wake.set()
                async for _ in conn.notifies():
                    wake.set()
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.warning(
                "workflows_listen_lost", error=db.describe_error(exc, database_url), retry_in=delay
            )
        await asyncio.sleep(delay)
        delay = min(delay * 2, 10.0)


async def loop(
    pool: db.Pool, stop: asyncio.Event, *, interval: float, database_url: str | None = None
) -> None:
    """Advance due runs every ``interval`` seconds (at once again after a full batch),
    and at once when a trigger's NOTIFY arrives (with ``database_url``: LISTEN on a
    connection of its own), until ``stop``; errors are logged and the loop goes on."""
    clock = asyncio.get_running_loop().time
    next_purge = clock() + PURGE_EVERY_SECONDS
    wake = asyncio.Event()
    listener = asyncio.create_task(listen(database_url, wake)) if database_url else None
    stopping = asyncio.create_task(stop.wait())
    try:
        while not stop.is_set():
            wake.clear()
            try:
                await run_due(pool)
                if clock() >= next_purge:
                    next_purge = clock() + PURGE_EVERY_SECONDS
                    await purge_throttle_passes(pool)
            except Exception as exc:
                log.warning("workflows_failed", error=db.describe_error(exc))
            woken = asyncio.create_task(wake.wait())
            await asyncio.wait(
                {stopping, woken}, timeout=interval, return_when=asyncio.FIRST_COMPLETED
            )
            woken.cancel()
    finally:
        stopping.cancel()
        if listener is not None:
            listener.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await listener
