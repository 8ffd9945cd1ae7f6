"""TEAMS: an Adaptive Card to a Microsoft Teams incoming webhook or Workflows URL: the
recipient's ``teams_webhook_url``, else the category's (a team channel for a kind of
notification).

The payload is what both accept: a ``message`` with one attachment of content type
``application/vnd.microsoft.card.adaptive``, an Adaptive Card 1.4 with the title
(bold), the body (wrapped) and an ``Action.OpenUrl`` "Open" to ``action_url``.

Workflows answers 202; the older Office 365 connector answers 200 ``1``, and reports
some failures inside a 200 ("Microsoft Teams endpoint returned HTTP error 429"),
which are classified as that status. Otherwise as every HTTP channel
(``classify_status``): 408/429/5xx retried (with Retry-After), other 4xx dead. The
URL is checked by the SSRF guard at the API and on every connection.
"""

from __future__ import annotations

import re
from typing import Any, ClassVar

import msgspec

from postbell.app.core.settings import Settings
from postbell.workers.channels.base import Channel, Delivery, Outcome
from postbell.workers.channels.http import HttpChannel

CARD_TYPE = "application/vnd.microsoft.card.adaptive"
CARD_SCHEMA = "http://adaptivecards.io/schemas/adaptive-card.json"
CARD_VERSION = "1.4"
BODY_LIMIT = 20_000  # characters; a card must stay well under Teams' ~28 KB
_INNER_ERROR = re.compile(r"returned HTTP error (\d{3})")


def card(delivery: Delivery) -> dict[str, Any]:
    """The Adaptive Card of one delivery."""
    blocks: list[dict[str, Any]] = []
    if delivery.title:
        blocks.append(
            {
                "type": "TextBlock",
                "text": delivery.title,
                "weight": "Bolder",
                "size": "Medium",
                "wrap": True,
            }
        )
    blocks.append({"type": "TextBlock", "text": delivery.body[:BODY_LIMIT], "wrap": True})
    content: dict[str, Any] = {
        "$schema": CARD_SCHEMA,
        "type": "AdaptiveCard",
        "version": CARD_VERSION,
        "body": blocks,
    }
    if delivery.action_url:
        content["actions"] = [
            {"type": "Action.OpenUrl", "title": "Open", "url": delivery.action_url}
        ]
    return {
        "type": "message",
        "attachments": [{"contentType": CARD_TYPE, "contentUrl": None, "content": content}],
    }


class TeamsChannel(HttpChannel):
    name: ClassVar[str] = "TEAMS"
    address_field: ClassVar[str | None] = "teams_webhook_url"
    what: ClassVar[str] = "Teams"
    read_success_body: ClassVar[bool] = True

    @classmethod
    def from_settings(cls, settings: Settings) -> Channel:
        return cls(settings)

    def address(self, delivery: Delivery) -> str | None:
        url = delivery.recipient.teams_webhook_url or delivery.category_options.teams_webhook_url
        return url or None

    def request(self, delivery: Delivery) -> tuple[str, bytes, dict[str, str]]:
        url = self.address(delivery)
        assert url is not None  # send() skips deliveries without one
        return url, msgspec.json.encode(card(delivery)), {"Content-Type": "application/json"}

    def outcome(self, status: int, headers: Any, text: str) -> Outcome:
        if 200 <= status < 300:
            inner = _INNER_ERROR.search(text)
            if inner:
                return super().outcome(int(inner.group(1)), headers, text)
            return Outcome.sent()
        return super().outcome(status, headers, text)
