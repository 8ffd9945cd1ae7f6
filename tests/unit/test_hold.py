"""How much claimed work a deliver run holds (runtime.hold_limit, issue 19's W11)."""

from __future__ import annotations

from typing import Any, cast

from postbell.workers.channels.gate import RANKS
from postbell.workers.channels.http import LOW_IN_FLIGHT
from postbell.workers.channels.webhook import WebhookChannel
from postbell.workers.runtime import FIRST_HOLD, MIN_HOLD, ROUNDS_HELD, Runtime
from tests.conftest import make_settings

NONE = cast(Any, None)


def _runtime(concurrency: int = 8) -> Runtime:
    return Runtime(settings=NONE, pool=NONE, channels=NONE, concurrency=concurrency)


def test_a_channel_not_measured_yet_holds_the_first_hold() -> None:
    runtime = _runtime()
    assert runtime.hold_limit("WEBHOOK", 500) == FIRST_HOLD
    assert runtime.hold_limit("WEBHOOK", 10) == 10  # never more than a batch


def test_a_run_holds_what_it_sends_in_the_horizon() -> None:
    """200 deliveries in 0.1 s is 2,000/s: half a second of that is 1,000, capped by
    the batch; a slow run (8 in 2 s) holds the least, MIN_HOLD."""
    fast = _runtime()
    fast.observe_send("WEBHOOK", 200, 0.1)
    assert fast.hold_limit("WEBHOOK", 500) == 500
    assert fast.hold_limit("WEBHOOK", 5_000) == 1_000
    slow = _runtime()
    slow.observe_send("WEBHOOK", 8, 2.0)
    assert slow.hold_limit("WEBHOOK", 500) == MIN_HOLD


def test_a_slow_receiver_still_fills_the_gate() -> None:
    """Against a receiver whose answers take a quarter of the horizon or more (fewer
    than ROUNDS_HELD rounds fit), each run holds two rounds of its share of what the
    gate lets out at once: 400 in flight over 4 ordinary slots (concurrency 8) is 100
    a run, 200 held (401: 101, 202), capped by the batch. With no gate's figure, or
    faster answers, the rate decides: MIN_HOLD here."""
    assert ROUNDS_HELD == 2
    runtime = _runtime(concurrency=8)
    runtime.observe_send("WEBHOOK", 8, 2.0)
    assert runtime.hold_limit("WEBHOOK", 500, 400, 1.0) == 200
    assert runtime.hold_limit("WEBHOOK", 500, 401, 0.25) == 202
    assert runtime.hold_limit("WEBHOOK", 50, 400, 1.0) == 50
    assert runtime.hold_limit("WEBHOOK", 500, 400, 0.2) == MIN_HOLD
    assert runtime.hold_limit("WEBHOOK", 500, 400, None) == MIN_HOLD
    assert runtime.hold_limit("WEBHOOK", 500, None, None) == MIN_HOLD
    # the run's own rate wins when it is the larger
    runtime.observe_send("EMAIL", 2_000, 1.0)
    assert runtime.hold_limit("EMAIL", 5_000, 64, 1.0) == 1_000
    assert runtime.hold_limit("EMAIL", 5_000, 4_000, 1.0) == 2_000


def test_low_work_counts_only_the_low_share_of_the_gate() -> None:
    """A webhook channel lets out its gate's limit at once for normal and above, and
    at most LOW_IN_FLIGHT for low: that is what a low run's hold is sized by; the
    answer time is the gate's least median, unknown before the first window."""
    channel = WebhookChannel(make_settings("postgresql://unused", POSTBELL_MAX_IN_FLIGHT="500"))
    assert channel.pace(RANKS["normal"]) == (64, None)
    channel._limit._set(400)
    channel._limit.least = 0.8
    assert channel.pace(RANKS["normal"]) == (400, 0.8)
    assert channel.pace(RANKS["urgent"]) == (400, 0.8)
    assert channel.pace(RANKS["low"]) == (LOW_IN_FLIGHT, 0.8)
