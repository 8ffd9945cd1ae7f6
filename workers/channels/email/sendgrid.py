"""SendGrid v3 ``mail/send``: the message as SendGrid's JSON, the delivery id as a
custom arg (its Event Webhook echoes it back to /api/callbacks/sendgrid)."""

from __future__ import annotations

import email.utils
from typing import Any

import msgspec

from postbell.app.core.settings import SendGridSettings
from postbell.workers.channels.email.mime import OutgoingEmail
from postbell.workers.channels.email.transport import HttpApiTransport, address


class SendGridTransport(HttpApiTransport):
    what = "SendGrid"

    def __init__(self, settings: SendGridSettings, *, timeout: float) -> None:
        super().__init__(timeout=timeout)
        self.settings = settings

    def request(self, message: OutgoingEmail) -> tuple[str, bytes, dict[str, str]]:
        delivery_id = str(message.delivery_id)
        sender_name, _ = email.utils.parseaddr(message.sender)
        payload = {
            "personalizations": [
                {
                    "to": [address(message.to_name, message.to_address)],
                    "custom_args": {"postbell_delivery_id": delivery_id},
                }
            ],
            "from": address(sender_name, message.sender_address),
            "subject": message.content.subject,
            "content": [
                {"type": "text/plain", "value": message.content.text},
                {"type": "text/html", "value": message.content.html},
            ],
            "headers": {
                "Message-ID": message.message_id,
                "X-Postbell-Delivery": delivery_id,
                "X-Postbell-Notification": message.notification_id,
                **dict(message.extra_headers),
            },
        }
        headers = {
            "Authorization": f"Bearer {self.settings.api_key}",
            "Content-Type": "application/json",
        }
        return f"{self.settings.api_url}/v3/mail/send", msgspec.json.encode(payload), headers

    def provider_id(self, headers: Any, body: bytes) -> str | None:
        value = headers.get("X-Message-Id")
        return str(value) if value else None
