"""Experiments: per-variant outcomes and their statistics, and the open and click
tracking that feeds them. No HTTP here: the dashboard calls ``stats`` too."""

from __future__ import annotations

from typing import Any

import msgspec

from postbell.app.api.experiments.schemas import ExperimentStats, MetricStats, VariantStats
from postbell.app.core import db, tokens
from postbell.app.core.errors import NotFound
from postbell.app.core.settings import Settings

#: The outcomes reported per variant, in this order.
METRICS = ("delivered", "opened", "clicked", "unsubscribed")


async def stats(pool: db.Pool, key: str) -> ExperimentStats:
    """The experiment's variants (the first, the baseline, first), each with its sent
    count and per outcome: count, rate, and against the first variant the difference
    with its 95 % confidence interval and the two-proportion z-test's p-value (view
    ``postbell.experiment_stats``). ``NotFound`` when nothing was sent in it yet."""
    async with pool.connection() as conn:
        rows = await db.fetch_all(conn, "experiment_stats", {"key": key})
    if not rows:
        raise NotFound(f"no experiment {key!r} with sent deliveries")
    variants: dict[str, dict[str, Any]] = {}
    for row in rows:
        entry = variants.setdefault(
            row["variant"],
            {"name": row["variant"], "sent": int(row["sent"]), "baseline": row["is_first"]},
        )
        entry[row["metric"]] = MetricStats(
            count=int(row["n"]),
            rate=row["rate"],
            diff=row["diff"],
            ci_low=row["ci_low"],
            ci_high=row["ci_high"],
            z=row["z"],
            p_value=row["p_value"],
        )
    return ExperimentStats(
        key=key, variants=[msgspec.convert(v, VariantStats) for v in variants.values()]
    )


async def click(pool: db.Pool, settings: Settings, token: str) -> str:
    """The URL a click token signs (its click counted, once per delivery);
    ``NotFound`` for any token that does not verify: no redirect anywhere else."""
    found = tokens.read_click_token(settings.inbox_secrets, token)
    if found is None:
        raise NotFound("no such link")
    delivery_id, url = found
    async with pool.connection() as conn:
        await db.execute(conn, "engagements_record", {"id": delivery_id, "kind": "clicked"})
    return url


async def opened(pool: db.Pool, settings: Settings, token: str) -> None:
    """Count an email's open (once per delivery); a bad token counts nothing."""
    delivery_id = tokens.read_open_token(settings.inbox_secrets, token)
    if delivery_id is None:
        return
    async with pool.connection() as conn:
        await db.execute(conn, "engagements_record", {"id": delivery_id, "kind": "opened"})
