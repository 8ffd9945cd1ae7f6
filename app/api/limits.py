"""Per-caller rate limits of one API process: token buckets in memory.

Limits are per process (an honest promise without a shared store: N web processes
allow N times the rate; docs/operations.md says so) and cheap enough for every
request: one dict lookup and a little arithmetic.

* each API key: ``POSTBELL_RATE_LIMIT_KEY`` (5000/s: a guard against a runaway loop in a
  host app, well above what one process serves);
* each recipient token: ``POSTBELL_RATE_LIMIT_TOKEN`` (20/s: a browser's inbox);
* failed authentication per client address: ``POSTBELL_RATE_LIMIT_AUTH_FAILURES``
  (10/s); over it, a credential this process has not already accepted gets 429
  without a database lookup, so guessing costs the database nothing;
* open streams per recipient: ``POSTBELL_MAX_STREAMS_PER_RECIPIENT`` (10).

Each bucket holds twice its per-second rate (a burst); over it, 429 with
``Retry-After`` (``TooManyRequests``).
"""

from __future__ import annotations

import dataclasses
import time
from collections import OrderedDict

from postbell.app.core.errors import TooManyRequests
from postbell.app.core.settings import Settings

#: Buckets kept per limiter; the least recently used go first (a flood of distinct
#: callers costs bounded memory, and a forgotten bucket is simply full again).
MAX_BUCKETS = 100_000


class Limiter:
    """Token buckets keyed by caller, all with one rate (``None``: no limit)."""

    def __init__(self, per_second: float | None, *, what: str) -> None:
        self.rate = per_second
        self.burst = max(1.0, 2 * per_second) if per_second else 0.0
        self.what = what
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()

    def take(self, key: str, now: float | None = None) -> None:
        """Spend one token of ``key``'s bucket; ``TooManyRequests`` when it is empty."""
        if not self.rate:
            return
        wait = self._take(key, time.monotonic() if now is None else now)
        if wait:
            raise TooManyRequests(
                f"too many requests for this {self.what}; retry in {wait:.1f} s",
                retry_after=wait,
            )

    def exhausted(self, key: str, now: float | None = None) -> bool:
        """Whether ``key``'s bucket is empty, without spending from it."""
        if not self.rate or key not in self._buckets:
            return False
        return self._level(key, time.monotonic() if now is None else now) < 1.0

    def _level(self, key: str, now: float) -> float:
        assert self.rate
        tokens, stamp = self._buckets[key]
        return min(self.burst, tokens + (now - stamp) * self.rate)

    def _take(self, key: str, now: float) -> float:
        """Seconds until a token is free (0: one was taken)."""
        assert self.rate
        tokens = self._level(key, now) if key in self._buckets else self.burst
        if tokens < 1.0:
            self._buckets[key] = (tokens, now)
            return (1.0 - tokens) / self.rate
        self._buckets[key] = (tokens - 1.0, now)
        self._buckets.move_to_end(key)
        if len(self._buckets) > MAX_BUCKETS:
            self._buckets.popitem(last=False)
        return 0.0


@dataclasses.dataclass(frozen=True, slots=True)
class Limits:
    """The limiters of one API process."""

    key: Limiter
    token: Limiter
    auth_failures: Limiter
    max_streams_per_recipient: int

    @classmethod
    def from_settings(cls, settings: Settings) -> Limits:
        return cls(
            key=Limiter(settings.rate_limit_key, what="API key"),
            token=Limiter(settings.rate_limit_token, what="recipient token"),
            auth_failures=Limiter(
                settings.rate_limit_auth_failures, what="client after failed authentication"
            ),
            max_streams_per_recipient=settings.max_streams_per_recipient,
        )
