"""How outcomes become delivery states (pure logic of workers/delivery.py)."""

from __future__ import annotations

import datetime as dt
import json

from postbell.app.core.settings import Settings
from postbell.workers.channels.base import Outcome
from postbell.workers.delivery import backoff_seconds, error_class, plan_outcomes

NOW = dt.datetime(2030, 1, 1, tzinfo=dt.UTC)
SETTINGS = Settings.from_env(
    {
        "POSTBELL_RETRY_BASE_SECONDS": "10",
        "POSTBELL_RETRY_MAX_SECONDS": "3600",
        "POSTBELL_RETRY_MAX_ATTEMPTS_EMAIL": "3",
    }
)


def row(delivery_id: int, attempts: int = 0, priority: int = 10) -> dict[str, int]:
    return {"id": delivery_id, "attempts": attempts, "job_priority": priority}


def test_each_kind_of_outcome() -> None:
    plan = plan_outcomes(
        SETTINGS,
        "EMAIL",
        [row(1), row(2), row(3), row(4), row(5, attempts=2)],
        [
            Outcome.sent("m-1"),
            Outcome.skip("no_address"),
            Outcome.fail("SMTP 550 no such user", "invalid_address", address_inactive=True),
            Outcome.retry("SMTP 451 later"),
            Outcome.retry("SMTP 451 later"),  # third attempt of three: exhausted
        ],
        NOW,
    )
    assert plan.statuses == ["sent", "skipped", "dead", "failed", "dead"]
    assert plan.reasons == [None, "no_address", "invalid_address", None, "retries_exhausted"]
    assert plan.attempted == [True, False, True, True, True]
    assert plan.inactive == [3]
    assert [ids for ids in plan.retries.values()] == [[4]]
    when = plan.next_attempt_at[3]
    assert when is not None and NOW + dt.timedelta(seconds=5) <= when <= NOW + dt.timedelta(
        seconds=10
    )


def test_transient_failures_share_one_retry_job_per_priority_and_attempt() -> None:
    plan = plan_outcomes(
        SETTINGS, "EMAIL", [row(1), row(2), row(3, priority=30)], [Outcome.retry("x")] * 3, NOW
    )
    assert sorted(plan.retries.values()) == [[1, 2], [3]]


def test_backoff_grows_is_capped_and_honours_retry_after() -> None:
    delays = [backoff_seconds(SETTINGS, n) for n in (1, 2, 3, 20)]
    assert 5 <= delays[0] <= 10 and 10 <= delays[1] <= 20 and 20 <= delays[2] <= 40
    assert 1800 <= delays[3] <= 3600
    assert backoff_seconds(SETTINGS, 1, retry_after=120) >= 120


def test_error_classes_are_few_and_named_from_the_outcome() -> None:
    """The timeline's and the metric's error class: a permanent failure's reason, else
    what the transient error says."""

    cases = {
        Outcome.fail("SMTP 550 no such user", "invalid_address"): "invalid_address",
        Outcome.fail("Webhook answered HTTP 404"): "permanent_error",
        Outcome.retry("Webhook answered HTTP 503: busy"): "http_5xx",
        Outcome.retry("Webhook answered HTTP 429", retry_after=3): "http_429",
        Outcome.retry("SMTP 451 4.7.1 later"): "smtp_4xx",
        Outcome.retry("Webhook: ServerTimeoutError: Timeout on reading data"): "timeout",
        Outcome.retry("Twilio: HTTPSConnectionPool: Read timed out."): "timeout",
        Outcome.retry("SMTP connection: ConnectionRefusedError: refused"): "connection",
        Outcome("fail", error="no reason given"): "permanent_error",
        Outcome.retry("internal error in EMAIL"): "internal",
        Outcome.retry("not attempted"): "not_attempted",
        Outcome.retry("Discord rate limit", retry_after=2): "rate_limited",
        Outcome.retry("something odd"): "transient",
        Outcome.sent("id-1"): None,
        Outcome.skip("no_address"): None,
    }
    assert [error_class(o) for o in cases] == list(cases.values())


def test_a_wait_keeps_the_delivery_pending_until_the_time_it_names() -> None:
    """A provider's pace (``wait``): the delivery stays ``pending`` with its reason,
    not attempted, due at ``until``; it goes back to the queue in a job of its own
    priority that runs at ``until`` (retry_groups is what deliveries_defer_retries
    reads: ids, priority, run_at)."""
    until = NOW + dt.timedelta(seconds=7)
    plan = plan_outcomes(
        SETTINGS,
        "SMS",
        [row(1, priority=30), row(2)],
        [Outcome.wait("rate_limited", until), Outcome.sent("m-2")],
        NOW,
    )
    assert plan.statuses == ["pending", "sent"]
    assert plan.reasons == ["rate_limited", None]
    assert plan.attempted == [False, True]
    assert plan.next_attempt_at == [until, None]
    assert plan.retries == {(30, until): [1]}
    assert json.loads(plan.retry_groups()) == [
        {"ids": [1], "priority": 30, "run_at": until.isoformat()}
    ]


def test_only_a_missing_device_or_address_or_a_permanent_failure_falls_back() -> None:
    """A send-time skip for want of a device or an address, and a permanent failure,
    are the candidates for the notification's fallback channel; any other skip and a
    transient failure are not."""
    plan = plan_outcomes(
        SETTINGS,
        "PUSH",
        [row(1), row(2), row(3), row(4), row(5)],
        [
            Outcome.skip("no_device"),
            Outcome.skip("no_address"),
            Outcome.skip("opted_out"),
            Outcome.fail("FCM: invalid registration"),
            Outcome.retry("FCM: HTTP 503"),
        ],
        NOW,
    )
    assert plan.statuses == ["skipped", "skipped", "skipped", "dead", "failed"]
    assert plan.fallback_candidates == [1, 2, 4]


def test_a_retry_waits_by_its_own_attempt_count_and_a_retry_after_is_honoured() -> None:
    """Deliveries of one priority but different attempt counts wait their own backoff
    (a first failure 5-10 s, a fifth 80-160 s), and a provider's Retry-After sets the
    wait from now, never before it."""
    plan = plan_outcomes(
        SETTINGS,
        "WEBHOOK",
        [row(1), row(2, attempts=4), row(3)],
        [Outcome.retry("x"), Outcome.retry("x"), Outcome.retry("HTTP 429", retry_after=30)],
        NOW,
    )
    first, fifth, told = plan.next_attempt_at
    assert first is not None and fifth is not None and told is not None
    assert NOW + dt.timedelta(seconds=5) <= first <= NOW + dt.timedelta(seconds=10)
    assert NOW + dt.timedelta(seconds=80) <= fifth <= NOW + dt.timedelta(seconds=160)
    assert told >= NOW + dt.timedelta(seconds=30)
    assert len(plan.retries) == 3
