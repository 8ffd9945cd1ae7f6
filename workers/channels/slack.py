"""SLACK: a message to the recipient's Slack incoming-webhook URL (``slack_webhook_url``).

Slack answers 200 ``ok``; ``invalid_payload`` (400), ``no_service`` (404),
``action_prohibited`` (403) and ``channel_is_archived`` (410) are permanent; 429
(with Retry-After) and 5xx are retried.
"""

from __future__ import annotations

from typing import Any, ClassVar

import msgspec

from postbell.app.core.settings import Settings
from postbell.workers.channels.base import Channel, Delivery
from postbell.workers.channels.http import HttpChannel


def _escape(text: str) -> str:
    # Slack's mrkdwn treats &, < and > as control characters.
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


class SlackChannel(HttpChannel):
    name: ClassVar[str] = "SLACK"
    address_field: ClassVar[str | None] = "slack_webhook_url"
    what: ClassVar[str] = "Slack"

    @classmethod
    def from_settings(cls, settings: Settings) -> Channel:
        return cls(settings)

    def request(self, delivery: Delivery) -> tuple[str, bytes, dict[str, str]]:
        url = self.address(delivery)
        assert url is not None  # send() skips deliveries without one
        text = _escape(delivery.body)
        if delivery.title:
            text = f"*{_escape(delivery.title)}*\n{text}"
        blocks: list[dict[str, Any]] = [
            {"type": "section", "text": {"type": "mrkdwn", "text": text}}
        ]
        if delivery.action_url:
            text = f"{text}\n<{delivery.action_url}|Open>"
            blocks.append(
                {
                    "type": "actions",
                    "elements": [
                        {
                            "type": "button",
                            "text": {"type": "plain_text", "text": "Open"},
                            "url": delivery.action_url,
                        }
                    ],
                }
            )
        body = msgspec.json.encode({"text": text, "blocks": blocks})
        return url, body, {"Content-Type": "application/json"}
