"""Payloads of /api/experiments (msgspec Structs)."""

from __future__ import annotations

import msgspec


class MetricStats(msgspec.Struct):
    """One outcome of one variant: ``count`` of its sent deliveries and ``rate``
    (count / sent); against the first variant (null on the first): ``diff`` of the
    rates, its 95 % confidence interval ``ci_low``..``ci_high`` (unpooled standard
    error), the z statistic and two-sided ``p_value`` (pooled two-proportion z-test)."""

    count: int
    rate: float | None
    diff: float | None
    ci_low: float | None
    ci_high: float | None
    z: float | None
    p_value: float | None


class VariantStats(msgspec.Struct):
    name: str
    #: deliveries sent (sent, delivered, bounced, complained, undelivered)
    sent: int
    #: the first variant: what the others are compared with
    baseline: bool
    delivered: MetricStats
    opened: MetricStats
    clicked: MetricStats
    unsubscribed: MetricStats


class ExperimentStats(msgspec.Struct):
    key: str
    variants: list[VariantStats]
