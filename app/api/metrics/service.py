"""/metrics: fleet figures read from Postgres (the rollup and procrastinate's queues),
then this API process's own HTTP metrics, in Prometheus' text format. No HTTP here."""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterable, Iterator
from typing import Any

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)

from postbell.app.api.metrics import repo
from postbell.app.api.metrics.http import HttpMetrics
from postbell.app.core import db

#: procrastinate priority -> the API's name (job_priority() in 0002)
PRIORITIES = {30: "urgent", 20: "high", 10: "normal", 0: "low"}


class _Fixed:
    """A collector answering the families it was built with (prometheus_client's
    registries collect synchronously; the figures were read before, asynchronously)."""

    def __init__(self, families: list[Metric]) -> None:
        self._families = families

    def collect(self) -> Iterator[Metric]:
        yield from self._families


async def render(pool: db.Pool, http: HttpMetrics) -> bytes:
    """Every metric, as Prometheus text (version 0.0.4)."""
    async with pool.connection() as conn:
        rollup = await repo.rollup(conn)
        buckets = await repo.send_buckets(conn)
        queues = await repo.queues(conn)
        workers = await repo.workers(conn)
        runs = await repo.workflow_runs(conn)
    registry = CollectorRegistry(auto_describe=False)
    registry.register(
        _Fixed(
            [
                *fleet(rollup, buckets),
                *queue_families(queues, workers),
                workflow_runs_family(runs),
            ]
        )
    )
    return generate_latest(registry) + generate_latest(http.registry)


def fleet(rows: Iterable[Any], buckets: list[float]) -> list[Metric]:
    deliveries = GaugeMetricFamily(
        "postbell_deliveries",
        "Deliveries now in each status, by channel (kept as outcomes are recorded)",
        labels=("channel", "status"),
    )
    changes = CounterMetricFamily(
        "postbell_delivery_status_changes",
        "Deliveries that entered each status, by channel",
        labels=("channel", "status"),
    )
    dead = GaugeMetricFamily(
        "postbell_dead_letters",
        "Dead deliveries now (the dead-letter queue), by channel and reason",
        labels=("channel", "reason"),
    )
    errors = CounterMetricFamily(
        "postbell_provider_errors",
        "Failed send attempts, by channel and error class",
        labels=("channel", "class"),
    )
    per_bucket: dict[str, dict[float, float]] = defaultdict(dict)
    sums: dict[str, float] = {}
    for row in rows:
        metric, channel, label, value = row["metric"], row["channel"], row["label"], row["value"]
        if metric == "deliveries":
            deliveries.add_metric((channel, label), value)
        elif metric == "status_total":
            changes.add_metric((channel, label), value)
        elif metric == "dead":
            dead.add_metric((channel, label), value)
        elif metric == "provider_errors":
            errors.add_metric((channel, label), value)
        elif metric == "send_seconds":
            per_bucket[channel][float(label)] = value
        elif metric == "send_seconds_sum":
            sums[channel] = value
    time_to_send = HistogramMetricFamily(
        "postbell_time_to_send_seconds",
        "From acceptance (a scheduled send: its send_at) to sent, by channel",
        labels=("channel",),
    )
    for channel in sorted(set(per_bucket) | set(sums)):
        counts = per_bucket.get(channel, {})
        running = 0.0
        cumulative = []
        for bound in buckets:
            running += counts.get(bound, 0.0)
            cumulative.append(("+Inf" if math.isinf(bound) else _bound(bound), running))
        time_to_send.add_metric((channel,), cumulative, sum_value=sums.get(channel, 0.0))
    return [deliveries, changes, dead, errors, time_to_send]


def _bound(value: float) -> str:
    return str(int(value)) if value.is_integer() else str(value)


def queue_families(rows: Iterable[Any], workers: Any) -> list[Metric]:
    jobs = GaugeMetricFamily(
        "postbell_queue_jobs",
        "Jobs per queue and priority: todo (waiting, scheduled ones included) and doing",
        labels=("queue", "priority", "state"),
    )
    later = GaugeMetricFamily(
        "postbell_queue_scheduled_jobs",
        "Todo jobs scheduled for later (retries, held deliveries, scheduled sends)",
        labels=("queue", "priority"),
    )
    oldest = GaugeMetricFamily(
        "postbell_queue_oldest_age_seconds",
        "Age of the oldest due todo job since it became due, per queue and priority",
        labels=("queue", "priority"),
    )
    for row in rows:
        priority = PRIORITIES.get(row["priority"], str(row["priority"]))
        jobs.add_metric((row["queue"], priority, row["status"]), float(row["jobs"]))
        if row["status"] == "todo":
            later.add_metric((row["queue"], priority), float(row["scheduled_later"]))
            oldest.add_metric((row["queue"], priority), float(row["oldest_seconds"]))
    live = GaugeMetricFamily(
        "postbell_workers_live", "Worker processes with a heartbeat in the last 30 s"
    )
    live.add_metric((), float(workers["live"]) if workers else 0.0)
    return [jobs, later, oldest, live]


def workflow_runs_family(rows: Iterable[Any]) -> Metric:
    waiting = GaugeMetricFamily(
        "postbell_workflow_runs_waiting",
        "Workflow runs not finished, per workflow and state: waiting (for their step's"
        " due time) or digesting (collected into an open digest)",
        labels=("workflow", "state"),
    )
    for row in rows:
        waiting.add_metric((row["workflow"], row["state"]), float(row["runs"]))
    return waiting
