"""A worker's procrastinate workers: route jobs get a lane of their own."""

from __future__ import annotations

from postbell.workers.channels.registry import REGISTRY
from postbell.workers.runner import ROUTE_LANE_CONCURRENCY, lanes


def test_all_queues_split_into_a_route_lane_and_the_channels() -> None:
    """Every queue stays covered: route in its own lane, every channel's in the other."""
    (route, route_n), (channels, channels_n) = lanes(None, 16)
    assert (route, route_n) == (["route"], ROUTE_LANE_CONCURRENCY)
    assert channels is not None and set(channels) == {name.lower() for name in REGISTRY}
    assert channels_n == 16 - ROUTE_LANE_CONCURRENCY


def test_chosen_queues_and_small_workers_stay_one_lane() -> None:
    assert lanes(["email", "push"], 8) == [(["email", "push"], 8)]
    assert lanes(["route"], 8) == [(["route"], 8)]
    assert lanes(None, 2) == [(None, 2)]
    assert lanes(["route", "email"], 6) == [(["route"], 2), (["email"], 4)]
