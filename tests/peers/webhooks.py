"""A local receiver for outbound webhooks, Slack and Discord incoming webhooks.

Any POST on any path is recorded. ``script(path, [...])`` answers that path's next
requests with the given replies in order (``503``, ``(429, {"Retry-After": "1"})``,
``(404, {}, '{"message": "Unknown Webhook"}')``), then 200. ``delay[path]`` makes a
path slow (in the receiver's own loop, so the sender sees real latency).
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import threading
import time
from collections.abc import Mapping
from typing import Any

from aiohttp import web

from tests.peers.http import HttpPeer, Recorded

Reply = int | tuple[int, dict[str, str]] | tuple[int, dict[str, str], str]


def sign(secret: str, body: bytes, timestamp: int) -> str:
    """postbell's webhook signature: t=<unix>,v1=<hex HMAC-SHA256(secret, "<t>.<body>")>."""
    mac = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()
    return f"t={timestamp},v1={mac}"


def verify_signature(
    secret: str,
    headers: Mapping[str, str],
    body: bytes,
    *,
    tolerance: int = 300,
    now: float | None = None,
) -> bool:
    """What a receiver does: recompute over the raw body, compare in constant time,
    refuse old timestamps (replays)."""
    header = headers.get("X-Postbell-Signature", "")
    parts = dict(p.split("=", 1) for p in header.split(",") if "=" in p)
    try:
        timestamp = int(parts["t"])
    except (KeyError, ValueError):
        return False
    if abs((time.time() if now is None else now) - timestamp) > tolerance:
        return False
    return hmac.compare_digest(sign(secret, body, timestamp), header)


class WebhookReceiver(HttpPeer):
    def __init__(self) -> None:
        super().__init__()
        self.scripts: dict[str, list[Reply]] = {}
        self.delay: dict[str, float] = {}
        #: the requests answered 2xx (``received`` holds every request)
        self.accepted: list[Recorded] = []
        #: paths whose requests wait, unanswered, until the event is set (``hold``)
        self.held: dict[str, threading.Event] = {}

    def hold(self, *paths: str) -> threading.Event:
        """Keep requests to ``paths`` unanswered until the returned event is set: work
        provably inside the provider."""
        gate = threading.Event()
        for path in paths:
            self.held[path] = gate
        return gate

    def script(self, path: str, replies: list[Reply]) -> None:
        with self.lock:
            self.scripts[path] = list(replies)

    def routes(self, app: web.Application) -> None:
        app.router.add_route("POST", "/{tail:.*}", self._handle)

    async def _handle(self, request: web.Request) -> web.Response:
        entry = await self.record(request)
        path = request.path
        if self.delay.get(path):
            await asyncio.sleep(self.delay[path])
        gate = self.held.get(path)
        while gate is not None and not gate.is_set():
            await asyncio.sleep(0.02)
        with self.lock:
            replies = self.scripts.get(path)
            reply: Reply | None = replies.pop(0) if replies else None
            if reply is None:
                self.accepted.append(entry)
        if reply is None:
            return web.json_response({"ok": True})
        if isinstance(reply, int):
            return web.json_response({"error": "scripted"}, status=reply)
        text = reply[2] if len(reply) > 2 else ""  # type: ignore[misc]
        return web.Response(status=reply[0], headers=reply[1], text=text)

    def at(self, path: str) -> list[Recorded]:
        with self.lock:
            return [r for r in self.received if r.path == path]

    def delivery_ids(self, path: str) -> list[str]:
        return [r.headers.get("X-Postbell-Delivery", "") for r in self.at(path)]

    @property
    def allow_entry(self) -> str:
        """This receiver's exact address, for POSTBELL_WEBHOOK_ALLOW_ADDRESSES."""
        return f"127.0.0.1:{self.port}"

    def url_for(self, path: str) -> str:
        return f"{self.url}{path}"

    def as_json(self, path: str) -> list[Any]:
        return [r.json() for r in self.at(path)]

    def accepted_json(self, path: str) -> list[Any]:
        """The JSON bodies of the requests to ``path`` that were answered 2xx."""
        with self.lock:
            return [r.json() for r in self.accepted if r.path == path]
