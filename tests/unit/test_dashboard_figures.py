"""The overview's percentiles from the time-to-send histogram (no database)."""

from __future__ import annotations

import math

import pytest

from postbell.app.api.dashboard.service import quantile

BUCKETS = [0.1, 1.0, 10.0, math.inf]


def test_quantile_interpolates_within_its_bucket() -> None:
    """As Prometheus' histogram_quantile: linear inside the bucket the rank falls in."""
    counts = {0.1: 50.0, 1.0: 50.0}
    assert quantile(0.5, BUCKETS, counts) == 0.1
    assert quantile(0.75, BUCKETS, counts) == pytest.approx(0.1 + 0.9 * 0.5)
    assert quantile(0.95, BUCKETS, {10.0: 10.0}) == pytest.approx(1.0 + 9.0 * 0.95)


def test_quantile_of_nothing_and_of_the_open_bucket() -> None:
    assert quantile(0.5, BUCKETS, {}) is None
    assert quantile(0.95, BUCKETS, {math.inf: 3.0}) == 10.0
