"""SMS: one text per delivery to the recipient's ``phone``, through the provider named
by POSTBELL_SMS_PROVIDER.

* ``twilio``: Twilio's Messages API through the twilio SDK (``twilio.py``); the
  default when TWILIO_ACCOUNT_SID, TWILIO_AUTH_TOKEN and a sender are set.
* ``sns``: Amazon SNS ``Publish`` to a phone number, SigV4 by botocore (``sns.py``);
  used only when named (AWS credentials set for SES alone never start sending SMS).

The channel builds the text (title, body and action URL on separate lines, cut at
1,600 characters) and skips deliveries without a phone; each transport sends one
message and classifies its provider's answer.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import ClassVar, Protocol

from postbell.app.core.settings import Settings
from postbell.workers.channels.base import Channel, Delivery, Outcome, invalid_content
from postbell.workers.channels.sms.sns import SnsTransport
from postbell.workers.channels.sms.twilio import TwilioTransport, status_callback

BODY_LIMIT = 1600  # characters Twilio accepts in one message; SNS's SMS limit too
CONCURRENCY = 16


def text(delivery: Delivery) -> str:
    parts = [delivery.title, delivery.body, delivery.action_url]
    body = "\n".join(p for p in parts if p)
    return body if len(body) <= BODY_LIMIT else body[: BODY_LIMIT - 1] + "…"


class SmsTransport(Protocol):
    what: str

    async def send_one(self, delivery: Delivery, phone: str, text: str) -> Outcome:
        """Send one text; classify every provider error into the outcome."""
        ...

    async def close(self) -> None: ...


class SmsChannel:
    name: ClassVar[str] = "SMS"
    address_field: ClassVar[str | None] = "phone"
    inactive_field: ClassVar[str | None] = "phone_inactive_at"

    def __init__(self, transport: SmsTransport) -> None:
        self.transport = transport
        self._limit = asyncio.Semaphore(CONCURRENCY)

    @classmethod
    def from_settings(cls, settings: Settings) -> Channel | None:
        if settings.sms_provider == "twilio" and settings.twilio is not None:
            return cls(
                TwilioTransport(
                    settings.twilio,
                    timeout=settings.http_timeout,
                    status_callback=status_callback(settings),
                )
            )
        if settings.sms_provider == "sns" and settings.sns is not None:
            return cls(SnsTransport(settings.sns, timeout=settings.http_timeout))
        return None

    async def send(self, deliveries: Sequence[Delivery]) -> list[Outcome]:
        return list(await asyncio.gather(*(self._send_one(d) for d in deliveries)))

    async def _send_one(self, delivery: Delivery) -> Outcome:
        phone = delivery.recipient.phone
        if not phone:
            return Outcome.skip("no_address")
        try:
            message = text(delivery)
        except Exception as exc:  # this delivery only
            return invalid_content(self.transport.what, exc)
        async with self._limit:
            return await self.transport.send_one(delivery, phone, message)

    async def close(self) -> None:
        await self.transport.close()
