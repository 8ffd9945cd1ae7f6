"""Sending: one deliver run = a batch of delivery ids of one channel.

The run selects which of its deliveries are still unsent, sends only those through
the channel, and records every outcome in one transaction: one set-based UPDATE, one
new deliver job for exactly the transient failures (scheduled after their backoff),
and the removal of the jobs it claimed. The job itself succeeds even when some
deliveries failed; procrastinate's own retry (which would resend the successes) is
never used.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import json
import random
import re
import time
from collections import Counter
from collections.abc import Callable, Sequence
from typing import Any

import structlog

from postbell.app.core import db, templates
from postbell.app.core.settings import Settings
from postbell.workers import claims, metrics, templating
from postbell.workers.channels.base import (
    CategoryOptions,
    Channel,
    Delivery,
    Outcome,
    Recipient,
    invalid_content,
)
from postbell.workers.runtime import Runtime

log = structlog.get_logger("postbell.deliver")

#: How long a run waits for one of its channel's slots before it is postponed.
SLOT_WAIT_SECONDS = 1.0


def backoff_seconds(settings: Settings, attempts: int, retry_after: float | None = None) -> float:
    """Delay before attempt ``attempts + 1``: exponential with equal jitter, capped.

    A provider's Retry-After wins when it asks for longer.
    """
    growth = 2.0 ** max(attempts - 1, 0)
    ceiling = min(settings.retry_max_seconds, settings.retry_base_seconds * growth)
    delay = ceiling / 2 + random.uniform(0, ceiling / 2)
    if retry_after is not None:
        delay = max(delay, min(retry_after, settings.retry_max_seconds))
    return delay


@dataclasses.dataclass(slots=True)
class Plan:
    """Every outcome of a run, as the columns of one UPDATE, and the retries to schedule."""

    ids: list[int] = dataclasses.field(default_factory=list)
    statuses: list[str] = dataclasses.field(default_factory=list)
    reasons: list[str | None] = dataclasses.field(default_factory=list)
    errors: list[str | None] = dataclasses.field(default_factory=list)
    next_attempt_at: list[dt.datetime | None] = dataclasses.field(default_factory=list)
    provider_message_ids: list[str | None] = dataclasses.field(default_factory=list)
    attempted: list[bool] = dataclasses.field(default_factory=list)
    #: what kind of error each failed attempt met (``error_class``), for the timeline
    #: and the provider-error metric
    error_classes: list[str | None] = dataclasses.field(default_factory=list)
    #: when the channel's send call started, and how long it took (the timeline's attempt)
    started_at: dt.datetime | None = None
    duration_ms: float | None = None
    retries: dict[tuple[int, dt.datetime], list[int]] = dataclasses.field(default_factory=dict)
    inactive: list[int] = dataclasses.field(default_factory=list)
    #: the address each of ``inactive`` was sent to: only that address is marked
    inactive_addresses: list[str | None] = dataclasses.field(default_factory=list)
    disable_tokens: list[str] = dataclasses.field(default_factory=list)
    #: deliveries now dead or without device/address: a fallback channel may take over
    fallback_candidates: list[int] = dataclasses.field(default_factory=list)

    def add(
        self,
        delivery_id: int,
        status: str,
        *,
        reason: str | None = None,
        error: str | None = None,
        next_attempt_at: dt.datetime | None = None,
        provider_message_id: str | None = None,
        attempted: bool = True,
        error_class: str | None = None,
    ) -> None:
        self.ids.append(delivery_id)
        self.error_classes.append(error_class)
        self.statuses.append(status)
        self.reasons.append(reason)
        self.errors.append(error)
        self.next_attempt_at.append(next_attempt_at)
        self.provider_message_ids.append(provider_message_id)
        self.attempted.append(attempted)

    def record_params(self) -> dict[str, Any]:
        return {
            "ids": self.ids,
            "statuses": self.statuses,
            "reasons": self.reasons,
            "errors": self.errors,
            "next_attempt_at": self.next_attempt_at,
            "provider_message_ids": self.provider_message_ids,
            "attempted": self.attempted,
            "error_classes": self.error_classes,
            "started_at": self.started_at,
            "duration_ms": self.duration_ms,
        }

    def retry_groups(self) -> str:
        return json.dumps(
            [
                {"ids": ids, "priority": priority, "run_at": run_at.isoformat()}
                for (priority, run_at), ids in self.retries.items()
            ]
        )


_HTTP_STATUS_RE = re.compile(r"\bHTTP (\d{3})\b")
_SMTP_CODE_RE = re.compile(r"^SMTP ([245])\d\d\b")


def error_class(outcome: Outcome) -> str | None:
    """A short, low-cardinality name for what went wrong (the metric label and the
    timeline's ``error_class``): a permanent failure's reason (``permanent_error``,
    ``invalid_address`` ...), else what the transient error's text says (``http_5xx``,
    ``http_429``, ``timeout``, ``connection``, ``smtp_4xx``, ``internal``) or ``transient``."""
    if outcome.kind == "fail":
        return outcome.reason or "permanent_error"
    if outcome.kind != "retry":
        return None
    text = outcome.error or ""
    if text.startswith("internal error"):
        return "internal"
    if text == "not attempted":
        return "not_attempted"
    status = _HTTP_STATUS_RE.search(text)
    if status:
        code = int(status.group(1))
        return "http_429" if code == 429 else f"http_{code // 100}xx"
    smtp = _SMTP_CODE_RE.match(text)
    if smtp:
        return f"smtp_{smtp.group(1)}xx"
    lowered = text.lower()
    if "timeout" in lowered or "timed out" in lowered:
        return "timeout"
    if "connect" in lowered:
        return "connection"
    if outcome.retry_after is not None:
        return "rate_limited"
    return "transient"


def plan_outcomes(
    settings: Settings,
    channel: str,
    rows: Sequence[Any],
    outcomes: Sequence[Outcome],
    now: dt.datetime,
    address_field: str | None = None,
) -> Plan:
    """Decide each delivery's new state from its outcome (pure: no I/O).
    ``address_field``: the row's column holding the address each delivery went to."""
    plan = Plan()
    max_attempts = settings.max_attempts(channel)
    # One retry time per (priority, attempts) group: jitter spreads groups, and one
    # job carries each group, instead of one job per delivery.
    retry_at: dict[tuple[int, int], dt.datetime] = {}
    for row, outcome in zip(rows, outcomes, strict=True):
        attempts = row["attempts"] + 1
        plan.disable_tokens.extend(outcome.disable_tokens)
        if outcome.kind == "sent":
            plan.add(row["id"], "sent", provider_message_id=outcome.provider_message_id)
        elif outcome.kind == "skip":
            plan.add(row["id"], "skipped", reason=outcome.reason, attempted=False)
            if outcome.reason in ("no_device", "no_address"):
                plan.fallback_candidates.append(row["id"])
        elif outcome.kind == "wait":
            assert outcome.until is not None
            plan.add(
                row["id"],
                "pending",
                reason=outcome.reason,
                next_attempt_at=outcome.until,
                attempted=False,
            )
            plan.retries.setdefault((row["job_priority"], outcome.until), []).append(row["id"])
        elif outcome.kind == "fail":
            plan.add(
                row["id"],
                "dead",
                reason=outcome.reason,
                error=outcome.error,
                error_class=error_class(outcome),
            )
            plan.fallback_candidates.append(row["id"])
            if outcome.address_inactive:
                plan.inactive.append(row["id"])
                used = row.get(address_field) if address_field else None
                plan.inactive_addresses.append(str(used) if used is not None else None)
        elif attempts >= max_attempts:
            plan.add(
                row["id"],
                "dead",
                reason="retries_exhausted",
                error=outcome.error,
                error_class=error_class(outcome),
            )
            plan.fallback_candidates.append(row["id"])
        else:
            key = (row["job_priority"], attempts)
            if outcome.retry_after is not None:
                when = now + dt.timedelta(
                    seconds=backoff_seconds(settings, attempts, outcome.retry_after)
                )
            else:
                if key not in retry_at:
                    retry_at[key] = now + dt.timedelta(seconds=backoff_seconds(settings, attempts))
                when = retry_at[key]
            plan.add(
                row["id"],
                "failed",
                error=outcome.error,
                next_attempt_at=when,
                error_class=error_class(outcome),
            )
            plan.retries.setdefault((row["job_priority"], when), []).append(row["id"])
    return plan


def _delivery(row: Any) -> Delivery:
    recipient = Recipient(
        external_id=row["external_id"],
        email=row["email"],
        phone=row["phone"],
        name=row["name"],
        locale=row["locale"],
        timezone=row["timezone"],
        webhook_url=row["webhook_url"],
        webhook_secret=row["webhook_secret"],
        slack_webhook_url=row["slack_webhook_url"],
        discord_webhook_url=row["discord_webhook_url"],
        whatsapp=row["whatsapp"],
        telegram_chat_id=row["telegram_chat_id"],
        teams_webhook_url=row["teams_webhook_url"],
        metadata=row["recipient_metadata"] or {},
        devices=row["devices"] or (),
    )
    return Delivery(
        id=row["id"],
        attempts=row["attempts"],
        notification_id=row["notification_id"],
        recipient=recipient,
        body=row["body"],
        title=row["title"],
        action_url=row["action_url"],
        category=row["category"],
        category_required=bool(row["category_required"]),
        priority=row["priority"],
        metadata=row["metadata"] or {},
        category_options=CategoryOptions(
            teams_webhook_url=row["category_teams_webhook_url"],
            apprise_urls=tuple(row["category_apprise_urls"] or ()),
            sms_type=row["category_sms_type"],
            whatsapp_content_sid=row["category_whatsapp_content_sid"],
        ),
        replay_id=row["replay_id"],
        variant=row["variant"],
    )


async def _send(
    runtime: Runtime, channel_name: str, rows: Sequence[Any], now: dt.datetime
) -> list[Outcome]:
    """One outcome per row: held back (expired, unconfigured, rate limit, pacing) or sent."""
    channel = runtime.channels.get(channel_name)
    outcomes: list[Outcome | None] = [None] * len(rows)
    for index, row in enumerate(rows):
        if row["expires_at"] is not None and row["expires_at"] <= now:
            outcomes[index] = Outcome.skip("expired")
        elif channel is None:
            outcomes[index] = Outcome.skip("channel_not_configured")
    await _apply_rate_limits(runtime, channel_name, rows, outcomes, now)
    to_send = [i for i, o in enumerate(outcomes) if o is None]
    to_send = await _apply_pacing(runtime, channel_name, to_send, outcomes, now)
    if channel is not None and to_send:
        built = await _build(runtime, channel, channel_name, rows, to_send, outcomes)
        if built:
            sent = await _send_isolated(channel, channel_name, [d for _, d in built])
            for (index, _), outcome in zip(built, sent, strict=True):
                outcomes[index] = outcome
    return [o if o is not None else Outcome.retry("not attempted") for o in outcomes]


async def _build(
    runtime: Runtime,
    channel: Channel,
    channel_name: str,
    rows: Sequence[Any],
    to_send: Sequence[int],
    outcomes: list[Outcome | None],
) -> list[tuple[int, Delivery]]:
    """The deliveries to hand the channel, a templated one with its text rendered
    (with the version its notification pinned). A delivery whose template fails to
    render is dead at once, reason ``template_error``; the others go on."""
    renderer = templating.SendRenderer(channel_name, getattr(channel, "unsubscribe", None))
    templated = [rows[i] for i in to_send if rows[i]["template_key"]]
    if templated:
        async with runtime.pool.connection() as conn:
            await renderer.load(conn, templated)
    built: list[tuple[int, Delivery]] = []
    for index in to_send:
        row = rows[index]
        delivery = _delivery(row)
        if row["template_key"]:
            try:
                delivery = renderer.apply(delivery, row)
            except templates.TemplateError as exc:
                error = templating.error_text(row["template_key"], row["template_version"], exc)
                outcomes[index] = Outcome.fail(error, "template_error")
                continue
            except Exception as exc:  # a bug: this delivery only, logged with its trace
                log.error("template_render_error", delivery_id=row["id"], exc_info=exc)
                outcomes[index] = invalid_content("template", exc)
                continue
        built.append((index, delivery))
    failed = len(to_send) - len(built)
    if failed:
        log.warning("template_failed", channel=channel_name, deliveries=failed)
    return built


async def _send_isolated(
    channel: Channel, channel_name: str, deliveries: Sequence[Delivery]
) -> list[Outcome]:
    """The channel's outcomes for ``deliveries``. Channels classify every provider
    error themselves; when a batch raises anyway (a bug), each delivery is sent alone,
    so the one that triggers it gets its own outcome and the others are not held back."""
    try:
        return await _send_checked(channel, channel_name, deliveries)
    except Exception as exc:
        log.error("channel_error", channel=channel_name, deliveries=len(deliveries), exc_info=exc)
    if len(deliveries) == 1:
        return [Outcome.retry(f"internal error in {channel_name}")]
    outcomes = []
    for delivery in deliveries:
        try:
            (outcome,) = await _send_checked(channel, channel_name, [delivery])
        except Exception as exc:
            log.error("channel_error", channel=channel_name, delivery_id=delivery.id, exc_info=exc)
            outcome = Outcome.retry(f"internal error in {channel_name}: {type(exc).__name__}")
        outcomes.append(outcome)
    return outcomes


async def _send_checked(
    channel: Channel, channel_name: str, deliveries: Sequence[Delivery]
) -> list[Outcome]:
    sent = await channel.send(deliveries)
    if len(sent) != len(deliveries):
        raise RuntimeError(f"{channel_name} answered {len(sent)} outcomes for {len(deliveries)}")
    return sent


async def _apply_rate_limits(
    runtime: Runtime,
    channel_name: str,
    rows: Sequence[Any],
    outcomes: list[Outcome | None],
    now: dt.datetime,
) -> None:
    """Per recipient x channel limits of the notification's category, counted on what
    was sent in the window: over it, skipped or held until the oldest send ages out."""
    limited = [i for i, row in enumerate(rows) if outcomes[i] is None and row["rate_limit"]]
    if not limited:
        return
    keys = {
        (rows[i]["recipient_id"], rows[i]["category"]): _window(rows[i]["rate_limit"])
        for i in limited
    }
    async with runtime.pool.connection() as conn:
        found = await db.fetch_all(
            conn,
            "deliveries_recent_sends",
            {
                "channel": channel_name,
                "recipient_ids": [k[0] for k in keys],
                "categories": [k[1] for k in keys],
                "windows": list(keys.values()),
            },
        )
    used = {(r["recipient_id"], r["category"]): int(r["sent"]) for r in found}
    oldest = {(r["recipient_id"], r["category"]): r["oldest"] for r in found}
    for index in limited:
        row = rows[index]
        rule = row["rate_limit"]
        key = (row["recipient_id"], row["category"])
        if used.get(key, 0) < int(rule["limit"]):
            used[key] = used.get(key, 0) + 1
            continue
        if rule.get("policy") == "skip":
            outcomes[index] = Outcome.skip("rate_limited")
        else:
            frees_at = (oldest.get(key) or now) + dt.timedelta(seconds=_window(rule))
            outcomes[index] = Outcome.wait(
                "rate_limited", max(frees_at, now + dt.timedelta(seconds=1))
            )


#: The longest window a stored rule may name (the API refuses longer ones; a row
#: written before that rule, or by hand, is read as this instead of overflowing).
MAX_WINDOW_SECONDS = 366 * 86400.0


def _window(rule: Any) -> float:
    try:
        seconds = float(rule["per_seconds"])
    except (KeyError, TypeError, ValueError):
        return MAX_WINDOW_SECONDS
    return min(max(seconds, 1.0), MAX_WINDOW_SECONDS)


async def _apply_pacing(
    runtime: Runtime,
    channel_name: str,
    to_send: list[int],
    outcomes: list[Outcome | None],
    now: dt.datetime,
) -> list[int]:
    """The provider's pace (POSTBELL_PROVIDER_RATE_<CHANNEL>), one token bucket in
    Postgres for every worker: what gets no token waits for the next ones."""
    rate = runtime.settings.provider_rate(channel_name)
    if not rate or not to_send:
        return to_send
    burst = max(1.0, rate)
    async with runtime.pool.connection() as conn:
        await db.execute(conn, "buckets_ensure", {"channel": channel_name, "burst": burst})
        row = await db.fetch_one(
            conn,
            "buckets_take",
            {"channel": channel_name, "want": len(to_send), "rate": rate, "burst": burst},
        )
    granted = int(row["granted"]) if row else 0
    rest = to_send[granted:]
    if rest:
        left = (float(row["available"]) - granted) if row else 0.0
        delay = max(0.05, (min(burst, len(rest)) - left) / rate)
        until = now + dt.timedelta(seconds=delay)
        for index in rest:
            outcomes[index] = Outcome.wait("provider_pacing", until)
    return to_send[:granted]


async def deliver(
    runtime: Runtime,
    job: Any,
    channel_name: str,
    ids: Sequence[int],
    track: Callable[[Sequence[int]], None] = lambda ids: None,
) -> None:
    """Send the deliveries of ``job`` (topped up with more claimed jobs) and record them.

    A run waits a moment for one of its channel's slots; when the channel still has
    them all (its provider is slow or hanging), the job is put back for a moment
    instead, and the worker's other slots stay free for the other channels.
    """
    slots = runtime.slots_for(channel_name, job.priority)
    try:
        await asyncio.wait_for(slots.acquire(), timeout=SLOT_WAIT_SECONDS)
    except TimeoutError:
        await _postpone(runtime, channel_name, ids, job.priority)
        return
    try:
        await _deliver(runtime, job, channel_name, ids, track)
    finally:
        slots.release()


async def _postpone(runtime: Runtime, channel_name: str, ids: Sequence[int], priority: int) -> None:
    run_at = dt.datetime.now(dt.UTC) + dt.timedelta(seconds=random.uniform(0.5, 1.0))
    groups = json.dumps([{"ids": list(ids), "priority": priority, "run_at": run_at.isoformat()}])
    async with runtime.pool.connection() as conn:
        await db.execute(
            conn, "deliveries_defer_retries", {"channel": channel_name, "groups": groups}
        )
    log.info("deliver_postponed", channel=channel_name, deliveries=len(ids), reason="channel_busy")


async def _give_back(
    runtime: Runtime, channel_name: str, held: dict[int, int], limit: int
) -> dict[int, int]:
    """Keep ``limit`` of the held deliveries (id -> job priority), highest priority
    first; the rest go back to the queue at once, as new jobs of their priority, so
    that other runs (urgent work fetched first, another process) take them instead of
    waiting for this run's slow sends. The jobs this run holds still name them: if it
    dies before recording, the retried job finds them sent or sends them again (at
    least once)."""
    ordered = sorted(held.items(), key=lambda item: -item[1])  # stable: order kept
    keep, rest = dict(ordered[:limit]), ordered[limit:]
    groups: dict[int, list[int]] = {}
    for delivery_id, priority in rest:
        groups.setdefault(priority, []).append(delivery_id)
    payload = json.dumps([{"ids": ids, "priority": p, "run_at": None} for p, ids in groups.items()])
    async with runtime.pool.connection() as conn:
        await db.execute(
            conn, "deliveries_defer_retries", {"channel": channel_name, "groups": payload}
        )
    log.info("deliver_gave_back", channel=channel_name, kept=len(keep), deliveries=len(rest))
    return keep


async def _deliver(
    runtime: Runtime,
    job: Any,
    channel_name: str,
    ids: Sequence[int],
    track: Callable[[Sequence[int]], None],
) -> None:
    started = time.perf_counter()
    batch = runtime.settings.batch_size_for(channel_name)
    pace = getattr(runtime.channels.get(channel_name), "pace", None)  # HTTP channels' gate
    limit = runtime.hold_limit(channel_name, batch, *(pace(job.priority) if pace else ()))
    claimed = await claims.claim_more(
        runtime.pool, job, limit=batch, max_items=max(limit - len(ids), 0)
    )
    track(claimed.job_ids)
    try:
        held: dict[int, int] = dict.fromkeys(ids, job.priority)
        for args, priority in zip(claimed.args, claimed.priorities, strict=True):
            for delivery_id in args.get("ids", []):
                held.setdefault(delivery_id, priority)
        if len(held) > limit:
            held = await _give_back(runtime, channel_name, held, limit)
        all_ids = list(held)
        async with runtime.pool.connection() as conn:
            rows = await db.fetch_all(
                conn, "deliveries_load_sendable", {"ids": all_ids, "channel": channel_name}
            )
        now = dt.datetime.now(dt.UTC)
        send_started = time.perf_counter()
        outcomes = await _send(runtime, channel_name, rows, now)
        send_seconds = time.perf_counter() - send_started
        send_ms = send_seconds * 1000
        runtime.observe_send(channel_name, len(rows), send_seconds)
        plan = plan_outcomes(
            runtime.settings,
            channel_name,
            rows,
            outcomes,
            now,
            address_field=runtime.channels.address_field(channel_name),
        )
        plan.started_at, plan.duration_ms = now, round(send_ms, 3)
        async with runtime.pool.connection() as conn, conn.transaction():
            await _record(conn, runtime, channel_name, plan)
            await claims.finish(conn, claimed)
    except BaseException:
        await claims.release_shielded(runtime.pool, claimed)
        raise
    metrics.observe_run(
        runtime.settings,
        channel_name,
        jobs=1 + len(claimed.job_ids),
        deliveries=len(all_ids),
        send_seconds=send_ms / 1000 if plan.attempted.count(True) else None,
        statuses=plan.statuses,
    )
    tally = Counter(plan.statuses)
    log.info(
        "delivered",
        channel=channel_name,
        jobs=1 + len(claimed.job_ids),
        deliveries=len(all_ids),
        unsent=len(rows),
        **{status: tally[status] for status in sorted(tally)},
        ms=round((time.perf_counter() - started) * 1000, 1),
    )


async def _record(conn: db.Conn, runtime: Runtime, channel_name: str, plan: Plan) -> None:
    """Everything a run learned, in the caller's transaction."""
    if plan.ids:
        await db.execute(conn, "deliveries_record", plan.record_params())
    if plan.retries:
        await db.execute(
            conn,
            "deliveries_defer_retries",
            {"channel": channel_name, "groups": plan.retry_groups()},
        )
    inactive_field = runtime.channels.inactive_field(channel_name)
    if plan.inactive and inactive_field:
        await db.execute(
            conn,
            "recipients_mark_inactive",
            {
                "delivery_ids": plan.inactive,
                "addresses": plan.inactive_addresses,
                "address_field": runtime.channels.address_field(channel_name),
                "field": inactive_field,
            },
        )
    if plan.disable_tokens:
        await db.execute(
            conn, "devices_disable", {"tokens": plan.disable_tokens, "reason": "unregistered"}
        )
    if plan.fallback_candidates:
        await db.execute(
            conn,
            "deliveries_add_fallbacks",
            {"ids": plan.fallback_candidates, **runtime.channels.routing_spec()},
        )
