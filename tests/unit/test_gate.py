"""The priority gate in front of a channel's requests in flight."""

from __future__ import annotations

import asyncio

from postbell.workers.channels.gate import AdaptiveGate, PriorityGate, rank


async def test_waiters_enter_by_priority_then_arrival() -> None:
    """With its one place held, waiters of priority 0, 30, 0, 20 enter as 30, 20, then
    the two 0s in the order they came."""
    gate = PriorityGate(1)
    await gate.acquire()
    entered: list[str] = []

    async def wait(name: str, priority: int) -> None:
        async with gate.slot(priority):
            entered.append(name)

    tasks = [asyncio.create_task(wait(n, p)) for n, p in (("a", 0), ("u", 30), ("b", 0), ("h", 20))]
    await asyncio.sleep(0)
    gate.release()
    await asyncio.gather(*tasks)
    assert entered == ["u", "h", "a", "b"]
    assert gate.held == 0 and gate.free()


async def test_a_cancelled_waiter_gives_up_its_turn() -> None:
    """A waiter cancelled while it waits is skipped; the place goes to the next one,
    and nothing stays held."""
    gate = PriorityGate(1)
    await gate.acquire()
    cancelled = asyncio.create_task(gate.acquire(30))
    later = asyncio.create_task(gate.acquire(0))
    await asyncio.sleep(0)
    cancelled.cancel()
    await asyncio.sleep(0)
    gate.release()
    await later
    assert cancelled.cancelled() and gate.held == 1
    gate.release()
    assert gate.held == 0


def test_rank_matches_job_priorities() -> None:
    """The same numbers as job_priority() in SQL; unknown is normal."""
    assert [rank(p) for p in ("urgent", "high", "normal", "low", None, "x")] == [
        30,
        20,
        10,
        0,
        10,
        10,
    ]


def _window(gate: AdaptiveGate, seconds: float, *, queued: bool) -> None:
    """One full window of answers of ``seconds`` each, with or without waiters."""
    gate._queued = queued
    for _ in range(max(16, gate.limit // 4)):
        gate.observe(seconds)


def test_the_limit_grows_while_a_slow_receiver_answers_as_fast() -> None:
    """A receiver answering in 200 ms whatever the load: more in flight is more
    throughput, so the limit doubles up to its ceiling (never past it). The window
    after each change is not judged: its answers left under the old limit."""
    gate = AdaptiveGate(1000, start=64)
    limits = []
    for _ in range(9):
        _window(gate, 0.2, queued=True)
        limits.append(gate.limit)
    assert limits == [128, 128, 256, 256, 512, 512, 1000, 1000, 1000]


def test_the_limit_stays_when_nobody_waits() -> None:
    """Fewer requests than the limit: nothing says more would help."""
    gate = AdaptiveGate(1000, start=64)
    for _ in range(5):
        _window(gate, 0.2, queued=False)
    assert gate.limit == 64


def test_the_limit_shrinks_when_answers_slow_down_as_it_grows() -> None:
    """A fast receiver that queues: 2 ms at 64 in flight, 8 ms at 128. The limit gives
    back a tenth per slowdown, then grows only by its square root (no more doubling),
    and never goes under its floor."""
    gate = AdaptiveGate(1000, start=64)
    _window(gate, 0.002, queued=True)
    assert gate.limit == 128
    _window(gate, 0.008, queued=True)  # settling: not judged
    assert gate.limit == 128
    _window(gate, 0.008, queued=True)  # 4x slower
    assert gate.limit == 115 and not gate.slow_start
    _window(gate, 0.002, queued=True)  # settling
    _window(gate, 0.002, queued=True)
    assert gate.limit == 115 + 10
    for _ in range(40):
        _window(gate, 0.5, queued=True)
    assert gate.limit == 32  # the floor


def test_a_raised_limit_lets_waiters_in_best_first() -> None:
    async def scenario() -> None:
        gate = AdaptiveGate(10, start=1, floor=1)
        await gate.acquire()
        entered: list[int] = []

        async def wait(priority: int) -> None:
            await gate.acquire(priority)
            entered.append(priority)

        tasks = [asyncio.create_task(wait(p)) for p in (0, 30, 10)]
        await asyncio.sleep(0)
        gate._set(3)
        await asyncio.sleep(0)
        assert entered == [30, 10] and gate.held == 3
        gate._set(1)  # lowered under what is held: releases free places, hand none on
        gate.release()
        gate.release()
        assert gate.held == 1 and entered == [30, 10]
        gate.release()  # now at the limit: the place goes to the last waiter
        await asyncio.gather(*tasks)
        assert entered == [30, 10, 0] and gate.held == 1

    asyncio.run(scenario())


def test_a_few_slow_hosts_among_many_do_not_steer_it() -> None:
    """The median: a sixth of the answers at 10 s (a slow host) changes nothing."""
    gate = AdaptiveGate(1000, start=64)
    _window(gate, 0.01, queued=True)
    _window(gate, 0.01, queued=True)  # settling
    gate._queued = True
    for i in range(max(16, gate.limit // 4)):
        gate.observe(10.0 if i % 6 == 0 else 0.01)
    assert gate.limit == 256
