"""The Celery + Redis baseline's task: one task per webhook delivery, the design a
team would pick instead of postbell (``celery -A bench.celery_tasks worker -P prefork``).

Bench-only: celery is in the ``bench`` extra, never a postbell dependency. The task
sends what postbell's WEBHOOK channel sends (the same JSON body and headers, to the
same local receiver) through one keep-alive ``requests`` session per worker process,
and records nothing durable (no result backend, no status row): the baseline is
given every advantage postbell does not take.
"""

from __future__ import annotations

import json
import os

import requests
from celery import Celery

BROKER = os.environ.get("POSTBELL_BENCH_REDIS_URL", "redis://127.0.0.1:6379/0")
QUEUE = os.environ.get("POSTBELL_BENCH_CELERY_QUEUE", "pbbench")

app = Celery("pbbench", broker=BROKER)
app.conf.update(
    task_default_queue=QUEUE,
    task_ignore_result=True,
    task_serializer="json",
    accept_content=["json"],
    worker_hijack_root_logger=False,
    broker_connection_retry_on_startup=True,
)

_session: requests.Session | None = None


def _http() -> requests.Session:
    # One pooled session per prefork child (created after the fork).
    global _session
    if _session is None:
        _session = requests.Session()
    return _session


@app.task(name="pbbench.deliver")
def deliver(url: str, delivery: dict[str, str]) -> int:
    """POST one delivery to its webhook URL, as postbell's WEBHOOK channel does."""
    body = json.dumps(delivery).encode()
    response = _http().post(
        url,
        data=body,
        headers={
            "Content-Type": "application/json",
            "X-Postbell-Delivery": delivery["id"],
            "X-Postbell-Notification": delivery["notification_id"],
        },
        timeout=10,
    )
    response.raise_for_status()
    return response.status_code
