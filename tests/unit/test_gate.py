"""The priority gate in front of a channel's requests in flight."""

from __future__ import annotations

import asyncio

from postbell.workers.channels.gate import PriorityGate, rank


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
