"""WEBHOOK: a signed JSON POST to the recipient's ``webhook_url``.

Headers a receiver relies on:

* ``X-Postbell-Delivery: <delivery id>``: the same on every retry, and on a replay;
  dedupe by it.
* ``X-Postbell-Replay: <replay id>``: only when an operator's replay sends the
  delivery again (the body's ``replay_id`` says the same, under the signature).
* ``X-Postbell-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256(secret, "<t>.<body>")>``:
  the secret is the recipient's ``webhook_secret`` or ``WEBHOOK_SIGNING_SECRET``. A
  receiver recomputes it over the raw body and rejects timestamps older than a few
  minutes (replay).

2xx is sent; 408, 429 (honouring Retry-After) and 5xx are retried; 410 and other 4xx
are dead at once.
"""

from __future__ import annotations

import hashlib
import hmac
import time
from typing import ClassVar

import msgspec
import structlog

from postbell.app.core.settings import Settings
from postbell.workers.channels.base import Channel, Delivery
from postbell.workers.channels.http import HttpChannel

log = structlog.get_logger("postbell.webhook")


def signature(secret: str, body: bytes, timestamp: int) -> str:
    mac = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256)
    return f"t={timestamp},v1={mac.hexdigest()}"


def payload(delivery: Delivery) -> bytes:
    replay = {"replay_id": str(delivery.replay_id)} if delivery.replay_id is not None else {}
    return msgspec.json.encode(
        {
            **replay,
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
        url = self.address(delivery)
        assert url is not None  # send() skips deliveries without one
        body = payload(delivery)
        headers = {
            "Content-Type": "application/json",
            "X-Postbell-Delivery": str(delivery.id),
            "X-Postbell-Notification": str(delivery.notification_id),
        }
        if delivery.replay_id is not None:
            headers["X-Postbell-Replay"] = str(delivery.replay_id)
        secret = delivery.recipient.webhook_secret or self.settings.webhook_signing_secret
        if secret:
            headers["X-Postbell-Signature"] = signature(secret, body, int(time.time()))
        return url, body, headers
