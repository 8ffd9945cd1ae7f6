"""A worker process's own metrics (``postbell worker --metrics-port N``): send latency
per channel and provider, batch sizes, claimed jobs and outcomes. The fleet's figures
(queues, deliveries by status, time to send) are the API's GET /metrics, from Postgres."""

from __future__ import annotations

from collections import Counter as Tally
from collections.abc import Sequence

from prometheus_client import CollectorRegistry, Counter, Histogram, start_http_server

from postbell.app.core.settings import Settings

REGISTRY = CollectorRegistry(auto_describe=True)

SEND_SECONDS = Histogram(
    "postbell_worker_send_seconds",
    "Time the channel's send call took for one batch, by channel and provider",
    ("channel", "provider"),
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0),
    registry=REGISTRY,
)
BATCH_SIZE = Histogram(
    "postbell_worker_batch_size",
    "Deliveries one deliver run carried (its job and the jobs it claimed), by channel",
    ("channel",),
    buckets=(1, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000),
    registry=REGISTRY,
)
CLAIMED_JOBS = Counter(
    "postbell_worker_claimed_jobs",
    "Deliver jobs this worker ran, its own and those it claimed to fill a batch, by channel",
    ("channel",),
    registry=REGISTRY,
)
OUTCOMES = Counter(
    "postbell_worker_outcomes",
    "Outcomes this worker recorded, by channel and the status they led to",
    ("channel", "status"),
    registry=REGISTRY,
)


def provider(settings: Settings, channel: str) -> str:
    """The provider behind a channel: EMAIL's and SMS's are configured, the others are theirs."""
    if channel == "EMAIL":
        return str(settings.email_provider or "none")
    if channel == "SMS":
        return str(settings.sms_provider or "none")
    return channel.lower()


def observe_run(
    settings: Settings,
    channel: str,
    *,
    jobs: int,
    deliveries: int,
    send_seconds: float | None,
    statuses: Sequence[str],
) -> None:
    CLAIMED_JOBS.labels(channel).inc(jobs)
    BATCH_SIZE.labels(channel).observe(deliveries)
    if send_seconds is not None:
        SEND_SECONDS.labels(channel, provider(settings, channel)).observe(send_seconds)
    for status, n in Tally(statuses).items():
        OUTCOMES.labels(channel, status).inc(n)


def serve(port: int, host: str) -> None:
    """Serve /metrics on ``host:port`` from a thread (prometheus_client's server)."""
    start_http_server(port, addr=host, registry=REGISTRY)
