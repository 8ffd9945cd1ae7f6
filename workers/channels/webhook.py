"""WEBHOOK: a signed JSON POST to the recipient's ``webhook_url``.

Headers a receiver relies on:

* ``X-Postbell-Delivery: <delivery id>``: the same on every retry; dedupe by it.
* ``X-Postbell-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256(secret, "<t>.<body>")>``:
  the secret is the recipient's ``webhook_secret`` or ``WEBHOOK_SIGNING_SECRET``. A
  receiver recomputes it over the raw body and rejects timestamps older than a few
  minutes (replay).

2xx is sent; 408, 429 (honouring Retry-After) and 5xx are retried; 410 and other 4xx
are dead at once.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import time
from collections.abc import Sequence
from typing import Any, ClassVar

import aiohttp
import msgspec
import structlog

from postbell.app.core.settings import Settings
from postbell.workers.channels import Channel, Delivery, Outcome
from postbell.workers.channels.http import classify_exception, classify_status, new_session

log = structlog.get_logger("postbell.webhook")

#: Requests in flight at once per channel and worker process.
CONCURRENCY = 64


def signature(secret: str, body: bytes, timestamp: int) -> str:
    mac = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256)
    return f"t={timestamp},v1={mac.hexdigest()}"


def payload(delivery: Delivery) -> bytes:
    return msgspec.json.encode(
        {
            "id": str(delivery.id),
            "notification_id": str(delivery.notification_id),
            "recipient": delivery.recipient.external_id,
            "title": delivery.title,
            "body": delivery.body,
            "action_url": delivery.action_url,
            "category": delivery.category,
            "priority": delivery.priority,
            "metadata": dict(delivery.metadata),
        }
    )


class HttpChannel:
    """Shared machinery of channels that POST JSON to a URL held by the recipient."""

    name: ClassVar[str]
    address_field: ClassVar[str | None]
    inactive_field: ClassVar[str | None] = None
    what: ClassVar[str]

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._session: aiohttp.ClientSession | None = None
        self._limit = asyncio.Semaphore(CONCURRENCY)

    @property
    def session(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = new_session(
                timeout=self.settings.http_timeout,
                allow_private=self.settings.webhook_allow_private,
            )
        return self._session

    def request(self, delivery: Delivery) -> tuple[str, bytes, dict[str, str]]:
        raise NotImplementedError

    def outcome(self, status: int, headers: Any, text: str) -> Outcome:
        return classify_status(status, headers, self.what, text if status >= 400 else "")

    async def send(self, deliveries: Sequence[Delivery]) -> list[Outcome]:
        return list(await asyncio.gather(*(self._send_one(d) for d in deliveries)))

    async def _send_one(self, delivery: Delivery) -> Outcome:
        try:
            url, body, headers = self.request(delivery)
        except ValueError as exc:
            return Outcome.fail(f"{self.what}: {exc}", "invalid_address")
        async with self._limit:
            try:
                async with self.session.post(
                    url, data=body, headers=headers, allow_redirects=False
                ) as response:
                    text = await response.text() if response.status >= 400 else ""
                    return self.outcome(response.status, response.headers, text)
            except Exception as exc:
                return classify_exception(exc, self.what)

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()


class WebhookChannel(HttpChannel):
    name: ClassVar[str] = "WEBHOOK"
    address_field: ClassVar[str | None] = "webhook_url"
    what: ClassVar[str] = "webhook"

    @classmethod
    def from_settings(cls, settings: Settings) -> Channel:
        if not settings.webhook_signing_secret:
            log.warning(
                "webhook_signing_secret_missing",
                effect="webhooks to recipients without their own webhook_secret go unsigned",
            )
        return cls(settings)

    def request(self, delivery: Delivery) -> tuple[str, bytes, dict[str, str]]:
        url = delivery.recipient.webhook_url
        if not url:
            raise ValueError("no webhook_url")
        body = payload(delivery)
        headers = {
            "Content-Type": "application/json",
            "X-Postbell-Delivery": str(delivery.id),
            "X-Postbell-Notification": str(delivery.notification_id),
        }
        secret = delivery.recipient.webhook_secret or self.settings.webhook_signing_secret
        if secret:
            headers["X-Postbell-Signature"] = signature(secret, body, int(time.time()))
        return url, body, headers
