"""SMS: Twilio's Messages API through the official twilio SDK and its async client.

Twilio error codes sorted once: 21610 (the recipient replied STOP) marks the number
inactive; 21211, 21214, 21612, 21614 and other invalid-number codes are dead at once;
429 / 20429 and 5xx are retried; authentication failures are retried (our
credentials, not the recipient's number) so an operator can fix them in time.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any, ClassVar

import structlog
from twilio.base.exceptions import TwilioRestException
from twilio.http.async_http_client import AsyncTwilioHttpClient
from twilio.rest import Client

from postbell.app.core.settings import Settings, TwilioSettings
from postbell.workers.channels.base import Channel, Delivery, Outcome, invalid_content

log = structlog.get_logger("postbell.sms")

BODY_LIMIT = 1600  # characters Twilio accepts in one message
CONCURRENCY = 16
OPTED_OUT = 21610
INVALID_NUMBER = frozenset({21211, 21214, 21217, 21219, 21401, 21407, 21408, 21612, 21614})


def text(delivery: Delivery) -> str:
    parts = [delivery.title, delivery.body, delivery.action_url]
    body = "\n".join(p for p in parts if p)
    return body if len(body) <= BODY_LIMIT else body[: BODY_LIMIT - 1] + "…"


def classify(exc: BaseException) -> Outcome:
    if isinstance(exc, TwilioRestException):
        what = f"Twilio {exc.status} code {exc.code}: {exc.msg}"[:500]
        if exc.code == OPTED_OUT:
            return Outcome.fail(what, "unsubscribed", address_inactive=True)
        if exc.code in INVALID_NUMBER:
            return Outcome.fail(what, "invalid_address")
        if exc.status == 429 or exc.code == 20429 or exc.status >= 500 or exc.status in (401, 403):
            return Outcome.retry(what)
        return Outcome.fail(what)
    return Outcome.retry(f"Twilio connection: {type(exc).__name__}: {exc}"[:500])


class SmsChannel:
    name: ClassVar[str] = "SMS"
    address_field: ClassVar[str | None] = "phone"
    inactive_field: ClassVar[str | None] = "phone_inactive_at"

    def __init__(
        self, twilio: TwilioSettings, *, timeout: float, status_callback: str | None
    ) -> None:
        self.twilio = twilio
        self.status_callback = status_callback
        self.http = AsyncTwilioHttpClient(timeout=timeout)
        self.client = Client(twilio.account_sid, twilio.auth_token, http_client=self.http)
        if twilio.api_url:
            # For emulators and tests (TWILIO_API_URL): the Api domain's base URL.
            self.client.api.base_url = twilio.api_url
        self._limit = asyncio.Semaphore(CONCURRENCY)

    @classmethod
    def from_settings(cls, settings: Settings) -> Channel | None:
        if settings.twilio is None:
            return None
        callback = (
            f"{settings.public_url.rstrip('/')}/api/callbacks/twilio"
            if settings.public_url
            else None
        )
        return cls(settings.twilio, timeout=settings.http_timeout, status_callback=callback)

    async def send(self, deliveries: Sequence[Delivery]) -> list[Outcome]:
        return list(await asyncio.gather(*(self._send_one(d) for d in deliveries)))

    async def _send_one(self, delivery: Delivery) -> Outcome:
        phone = delivery.recipient.phone
        if not phone:
            return Outcome.skip("no_address")
        try:
            options: dict[str, Any] = {"to": phone, "body": text(delivery)}
        except Exception as exc:  # this delivery only
            return invalid_content("Twilio", exc)
        if self.twilio.messaging_service_sid:
            options["messaging_service_sid"] = self.twilio.messaging_service_sid
        else:
            options["from_"] = self.twilio.from_number
        if self.status_callback:
            # The delivery id rides in the URL, which Twilio's signature covers.
            options["status_callback"] = f"{self.status_callback}?d={delivery.id}"
        async with self._limit:
            try:
                message = await self.client.messages.create_async(**options)
            except Exception as exc:
                return classify(exc)
        return Outcome.sent(message.sid)

    async def close(self) -> None:
        session = getattr(self.http, "session", None)
        if session is not None:
            await session.close()
