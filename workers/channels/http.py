"""The HTTP channel base: the guarded outbound client of webhooks, Slack, Discord (and
the SendGrid and SES transports), the one rule that classifies HTTP answers, and
``HttpChannel``, the base of channels that POST to a URL the recipient holds.

aiohttp, measured against httpx on this kind of machine: ~9,100 requests/s at 10
concurrent requests to one local receiver where httpx.AsyncClient gave 640 (its pool
degrades as concurrency grows, encode/httpx#3215). One session per worker process,
keep-alive connections, a bounded number of them per host.

The SSRF guard (``core/addresses.py``): every connection a recipient-facing session
opens is checked on the address it actually connects to, after DNS and for IP
literals alike, so no URL form reaches a loopback, private or link-local address
unless the operator allowed it; redirects are never followed.
"""

from __future__ import annotations

import asyncio
import contextlib
import email.utils
import socket
import time
from collections.abc import Callable, Sequence
from typing import Any, ClassVar

import aiohttp
from aiohappyeyeballs import AddrInfoType

from postbell.app.core.addresses import AddressGuard, PrivateAddressError
from postbell.app.core.settings import Settings
from postbell.workers.channels.base import Delivery, Outcome, invalid_content
from postbell.workers.channels.gate import RANKS, AdaptiveGate, rank


def new_session(
    *, timeout: float, guard: AddressGuard | None, per_host: int = 100
) -> aiohttp.ClientSession:
    """A session for many requests. With ``guard``, every connection it opens is checked
    on the address it connects to (after DNS, IP literals included) before a byte is
    sent; redirects are never followed by postbell's callers."""
    connector = aiohttp.TCPConnector(
        limit=0,
        limit_per_host=per_host,
        ttl_dns_cache=60,
        socket_factory=_guarded_socket(guard) if guard and not guard.allow_private else None,
    )
    return aiohttp.ClientSession(
        connector=connector,
        timeout=aiohttp.ClientTimeout(total=timeout, connect=min(timeout, 10.0)),
        headers={"User-Agent": "postbell"},
    )


def _guarded_socket(guard: AddressGuard) -> Callable[[AddrInfoType], socket.socket]:
    def make(addr_info: AddrInfoType) -> socket.socket:
        family, kind, proto, _, sockaddr = addr_info
        guard.check_connect(str(sockaddr[0]), int(sockaddr[1]))
        sock = socket.socket(family=family, type=kind, proto=proto)
        sock.setblocking(False)
        return sock

    return make


def retry_after_seconds(headers: Any) -> float | None:
    """How long the provider asked us to wait: Retry-After (seconds or an HTTP date),
    else X-RateLimit-Reset (SendGrid's 429s carry only that: a Unix time; small values
    are read as seconds from now)."""
    if headers is None:
        return None
    value = headers.get("Retry-After")
    if value:
        try:
            return max(float(value), 0.0)
        except ValueError:
            try:
                parsed = email.utils.parsedate_to_datetime(value)
            except (TypeError, ValueError):
                return None
            return max(parsed.timestamp() - time.time(), 0.0)
    reset = headers.get("X-RateLimit-Reset")
    if not reset:
        return None
    try:
        seconds = float(reset)
    except ValueError:
        return None
    if seconds > 1_000_000_000:  # a Unix time
        seconds -= time.time()
    return max(seconds, 0.0)


def classify_status(status: int, headers: Any, what: str, detail: str = "") -> Outcome:
    """The HTTP channels' one rule: 2xx sent; 408, 429 and 5xx transient; other 4xx permanent."""
    text = f"{what} answered HTTP {status}" + (f": {detail[:300]}" if detail else "")
    if 200 <= status < 300:
        return Outcome.sent()
    if status in (408, 425, 429) or status >= 500:
        return Outcome.retry(text, retry_after=retry_after_seconds(headers))
    if 300 <= status < 400:
        return Outcome.fail(
            f"{what} answered a redirect (HTTP {status}); postbell does not follow redirects"
        )
    return Outcome.fail(text)


def classify_exception(exc: BaseException, what: str) -> Outcome:
    if isinstance(exc, PrivateAddressError) or isinstance(
        getattr(exc, "os_error", None), PrivateAddressError
    ):
        return Outcome.fail(f"{what}: refused, {exc}", "private_address")
    if isinstance(exc, aiohttp.InvalidURL):
        return Outcome.fail(f"{what}: invalid URL", "invalid_address")
    return Outcome.retry(f"{what}: {type(exc).__name__}: {exc}"[:500])


#: Requests in flight at once per channel and worker process, where they start (the
#: gate then sizes them to the latency it sees, up to POSTBELL_MAX_IN_FLIGHT).
CONCURRENCY = 64
#: ``low`` is bulk: at most this many of a process's requests in flight per channel
#: are low-priority ones, whatever the gate allows, so work of a higher priority that
#: arrives while a low backlog drains queues behind at most these.
LOW_IN_FLIGHT = 64


class HttpChannel:
    """Shared machinery of channels that POST JSON to a URL held by the recipient."""

    name: ClassVar[str]
    address_field: ClassVar[str | None]
    inactive_field: ClassVar[str | None] = None
    what: ClassVar[str]
    #: Read 2xx answers' bodies too, for a provider that reports errors inside a 200.
    read_success_body: ClassVar[bool] = False

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._session: aiohttp.ClientSession | None = None
        # Waiting requests go out by priority: an urgent delivery waits only for the
        # requests already in flight, not for every queued low-priority one. How many
        # are in flight follows the receivers' latency (see gate.AdaptiveGate).
        self._limit = AdaptiveGate(settings.max_in_flight_for(self.name), start=CONCURRENCY)
        self._low = asyncio.Semaphore(LOW_IN_FLIGHT)

    @property
    def session(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = new_session(
                timeout=self.settings.http_timeout,
                guard=self.settings.address_guard,
                per_host=self._limit.ceiling,
            )
        return self._session

    def pace(self, priority: int) -> tuple[int, float | None]:
        """How many requests of ``priority`` (a job priority) may be in flight at once
        now (the gate's limit; for ``low`` at most ``LOW_IN_FLIGHT``), and the
        receivers' answer time without queueing (None until measured)."""
        limit = self._limit.limit
        if priority < RANKS["normal"]:
            limit = min(limit, LOW_IN_FLIGHT)
        return limit, self._limit.least

    def request(self, delivery: Delivery) -> tuple[str, bytes, dict[str, str]]:
        raise NotImplementedError

    def outcome(self, status: int, headers: Any, text: str) -> Outcome:
        return classify_status(status, headers, self.what, text if status >= 400 else "")

    async def send(self, deliveries: Sequence[Delivery]) -> list[Outcome]:
        return list(await asyncio.gather(*(self._send_one(d) for d in deliveries)))

    def address(self, delivery: Delivery) -> str | None:
        """The URL this delivery goes to (the recipient's ``address_field``)."""
        assert self.address_field is not None
        value = getattr(delivery.recipient, self.address_field)
        return str(value) if value else None

    async def _send_one(self, delivery: Delivery) -> Outcome:
        if not self.address(delivery):
            return Outcome.skip("no_address")
        try:
            url, body, headers = self.request(delivery)
        except ValueError as exc:
            return Outcome.fail(f"{self.what}: {exc}", "invalid_address")
        except Exception as exc:
            return invalid_content(self.what, exc)
        priority = rank(delivery.priority)
        async with (
            self._low if priority < RANKS["normal"] else contextlib.nullcontext(),
            self._limit.slot(priority),
        ):
            started = time.perf_counter()
            try:
                async with self.session.post(
                    url, data=body, headers=headers, allow_redirects=False
                ) as response:
                    wanted = response.status >= 400 or self.read_success_body
                    text = (await response.text(errors="replace"))[:2000] if wanted else ""
                    self._limit.observe(time.perf_counter() - started)
                    return self.outcome(response.status, response.headers, text)
            except Exception as exc:
                return classify_exception(exc, self.what)

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
