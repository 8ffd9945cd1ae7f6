"""The dashboard's decisions: sign-in sessions and the figures its pages show.

No Litestar here. The figures come from the services and queries the API and the
CLI already use (the metric rollup of migration 0012, the job queues, the dead-letter
service): nothing here counts the deliveries table.

Sessions are rows of ``dashboard_sessions`` (migration 0019), not signed cookies: a
sign-out or a revoked key ends a session at once, and the dashboard needs no secret
of its own (``POSTBELL_INBOX_SECRET`` may be unset). The cookie is 256 random bits;
the database keeps its SHA-256 and the SHA-256 of the admin key that opened it.
"""

from __future__ import annotations

import dataclasses
import hashlib
import hmac
import math
import secrets
import time
from collections import defaultdict
from typing import Any

from postbell.app.api.metrics import repo as metrics_repo
from postbell.app.api.metrics.service import PRIORITIES
from postbell.app.api.ops import dead_letters
from postbell.app.core import db
from postbell.app.core.keys import hash_key
from postbell.app.core.settings import Settings

#: A session ends this long after sign-in, whatever happens.
SESSION_SECONDS = 12 * 3600
#: ... or after this long without a page view (the overview's polling counts).
IDLE_SECONDS = 2 * 3600


def new_token() -> str:
    return secrets.token_urlsafe(32)


def _digest(token: str) -> bytes:
    return hashlib.sha256(token.encode()).digest()


def csrf_token(session_token: str) -> str:
    """The CSRF token of a session's forms: derived from the session's secret cookie
    (which a page of another origin cannot read), so it needs no storage."""
    return hmac.new(session_token.encode(), b"postbell:dashboard-csrf", hashlib.sha256).hexdigest()


def csrf_ok(expected: str, given: str | None) -> bool:
    return bool(given) and hmac.compare_digest(expected.encode(), str(given).encode())


async def open_session(pool: db.Pool, key: str) -> str:
    """A new session for an admin ``key`` already checked by the caller; its cookie."""
    token = new_token()
    async with pool.connection() as conn, conn.transaction():
        await db.execute(conn, "dashboard_sessions_purge", {})
        await db.execute(
            conn,
            "dashboard_sessions_insert",
            {"id_hash": _digest(token), "key_hash": hash_key(key), "lifetime": SESSION_SECONDS},
        )
    return token


async def session_valid(pool: db.Pool, settings: Settings, token: str) -> bool:
    """Whether the cookie ``token`` is a live session of a key that is still an admin
    key: an active API key with role admin, or the current POSTBELL_ADMIN_KEY."""
    id_hash = _digest(token)
    async with pool.connection() as conn:
        row = await db.fetch_one(
            conn, "dashboard_sessions_find", {"id_hash": id_hash, "idle": IDLE_SECONDS}
        )
        if row is None:
            return False
        bootstrap = settings.admin_key is not None and hmac.compare_digest(
            bytes(row["key_hash"]), hash_key(settings.admin_key)
        )
        if row["role"] != "admin" and not bootstrap:
            return False
        if row["stale"]:
            await db.execute(conn, "dashboard_sessions_touch", {"id_hash": id_hash})
    return True


async def close_session(pool: db.Pool, token: str) -> None:
    async with pool.connection() as conn:
        await db.execute(conn, "dashboard_sessions_delete", {"id_hash": _digest(token)})


@dataclasses.dataclass
class ChannelFigures:
    channel: str
    sent: float = 0.0
    dead: float = 0.0
    p50: float | None = None
    p95: float | None = None

    @property
    def success_rate(self) -> float | None:
        decided = self.sent + self.dead
        return self.sent / decided if decided else None


def quantile(q: float, buckets: list[float], counts: dict[float, float]) -> float | None:
    """The q-quantile of a histogram (bucket upper bounds → counts), interpolated
    linearly within its bucket as Prometheus' histogram_quantile does."""
    total = sum(counts.values())
    if not total:
        return None
    rank = q * total
    running, lower = 0.0, 0.0
    for bound in buckets:
        n = counts.get(bound, 0.0)
        if n and running + n >= rank:
            if math.isinf(bound):
                return lower
            return lower + (bound - lower) * (rank - running) / n
        running += n
        lower = bound if not math.isinf(bound) else lower
    return lower


async def _rollup(conn: db.Conn) -> tuple[dict[str, ChannelFigures], dict[str, float]]:
    rows = await metrics_repo.rollup(conn)
    buckets = await metrics_repo.send_buckets(conn)
    figures: dict[str, ChannelFigures] = {}
    histograms: dict[str, dict[float, float]] = defaultdict(dict)
    dead_now: dict[str, float] = defaultdict(float)
    for r in rows:
        channel, metric, label, value = r["channel"], r["metric"], r["label"], float(r["value"])
        if metric == "status_total" and label in ("sent", "dead"):
            entry = figures.setdefault(channel, ChannelFigures(channel))
            setattr(entry, label, getattr(entry, label) + value)
        elif metric == "send_seconds":
            histograms[channel][float(label)] = value
        elif metric == "dead":
            dead_now[channel] += value
    for channel, counts in histograms.items():
        entry = figures.setdefault(channel, ChannelFigures(channel))
        entry.p50 = quantile(0.5, buckets, counts)
        entry.p95 = quantile(0.95, buckets, counts)
    return dict(sorted(figures.items())), dict(dead_now)


async def overview(pool: db.Pool) -> dict[str, Any]:
    """What the overview shows: per channel the deliveries sent and dead so far (the
    success rate), p50/p95 time to send; jobs waiting per queue; dead letters now and
    of the last 24 hours (the dead-letter service's own counts)."""
    async with pool.connection() as conn:
        figures, dead_now = await _rollup(conn)
        queue_rows = await metrics_repo.queues(conn)
    depth: dict[str, int] = defaultdict(int)
    for r in queue_rows:
        if r["status"] == "todo":
            depth[r["queue"]] += int(r["jobs"])
    everything = await dead_letters.list_page(
        pool, channel=None, reason=None, older_than=None, cursor=None, limit=1
    )
    older = await dead_letters.list_page(
        pool, channel=None, reason=None, older_than="24h", cursor=None, limit=1
    )
    return {
        "channels": list(figures.values()),
        "queues": dict(sorted(depth.items())),
        "dead_now": dead_now,
        "dead_total": everything.total,
        "dead_last_24h": everything.total - older.total,
    }


async def chart_sample(pool: db.Pool) -> dict[str, Any]:
    """One sample for the live chart: deliveries that entered ``sent`` so far, per
    channel (a counter from the rollup), and when. The page turns two samples into
    deliveries per minute, as Prometheus' rate() would."""
    async with pool.connection() as conn:
        figures, _ = await _rollup(conn)
    return {"at": time.time(), "sent": {c: f.sent for c, f in figures.items()}}


async def queues(pool: db.Pool) -> dict[str, Any]:
    """Per queue and priority: jobs waiting, running, scheduled for later, the oldest due
    job's age (what /metrics reads); and the totals `postbell queues` prints."""
    async with pool.connection() as conn:
        rows = await metrics_repo.queues(conn)
        totals = await db.fetch_one(conn, "console_totals", {})
    table: dict[tuple[str, int], dict[str, Any]] = {}
    for r in rows:
        entry = table.setdefault(
            (r["queue"], r["priority"]),
            {
                "queue": r["queue"],
                "priority": PRIORITIES.get(r["priority"], str(r["priority"])),
                "todo": 0,
                "doing": 0,
                "later": 0,
                "oldest": 0.0,
            },
        )
        entry[r["status"]] = int(r["jobs"])
        if r["status"] == "todo":
            entry["later"] = int(r["scheduled_later"])
            entry["oldest"] = float(r["oldest_seconds"])
    ordered = sorted(table.items(), key=lambda kv: (kv[0][0], -kv[0][1]))
    return {"rows": [v for _, v in ordered], "totals": dict(totals or {})}


async def open_runs(pool: db.Pool) -> dict[str, dict[str, int]]:
    """Per workflow, its runs not finished by state (waiting, digesting): the count
    /metrics reads, over the index of open runs (never every run ever made)."""
    async with pool.connection() as conn:
        rows = await metrics_repo.workflow_runs(conn)
    out: dict[str, dict[str, int]] = defaultdict(dict)
    for row in rows:
        out[row["workflow"]][row["state"]] = int(row["runs"])
    return dict(out)
