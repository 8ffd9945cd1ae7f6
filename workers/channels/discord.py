"""DISCORD: a message to the recipient's Discord webhook URL (``discord_webhook_url``).

Discord answers 204 (or 200 with ``?wait=true``); 404 ``Unknown Webhook`` and other
4xx are permanent; 429 carries ``retry_after`` (seconds) and Retry-After and is
retried, as are 5xx.
"""

from __future__ import annotations

from typing import Any, ClassVar

import msgspec

from postbell.app.core.settings import Settings
from postbell.workers.channels.base import Channel, Delivery, Outcome
from postbell.workers.channels.http import HttpChannel

CONTENT_LIMIT = 2000  # characters Discord accepts in "content"


class DiscordChannel(HttpChannel):
    name: ClassVar[str] = "DISCORD"
    address_field: ClassVar[str | None] = "discord_webhook_url"
    what: ClassVar[str] = "Discord"

    @classmethod
    def from_settings(cls, settings: Settings) -> Channel:
        return cls(settings)

    def request(self, delivery: Delivery) -> tuple[str, bytes, dict[str, str]]:
        url = self.address(delivery)
        assert url is not None  # send() skips deliveries without one
        message: dict[str, Any] = {"content": delivery.body[:CONTENT_LIMIT]}
        if delivery.title or delivery.action_url:
            embed: dict[str, Any] = {"title": (delivery.title or delivery.subject)[:256]}
            if delivery.action_url:
                embed["url"] = delivery.action_url
            message["embeds"] = [embed]
        # Mentions in a notification's text must not ping anyone.
        message["allowed_mentions"] = {"parse": []}
        return url, msgspec.json.encode(message), {"Content-Type": "application/json"}

    def outcome(self, status: int, headers: Any, text: str) -> Outcome:
        outcome = super().outcome(status, headers, text)
        if status == 429 and outcome.retry_after is None:
            try:
                seconds = float(msgspec.json.decode(text or "{}").get("retry_after", 0))
            except (msgspec.DecodeError, TypeError, ValueError, AttributeError):
                seconds = 0.0
            return Outcome.retry(outcome.error or "Discord rate limit", retry_after=seconds or None)
        return outcome
