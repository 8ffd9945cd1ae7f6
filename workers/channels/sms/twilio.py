"""SMS through Twilio's Messages API, with the official twilio SDK's async client.

Twilio error codes sorted once: 21610 (the recipient replied STOP) marks the number
inactive; 21211, 21214, 21612, 21614 and other invalid-number codes are dead at once;
429 / 20429 and 5xx are retried; authentication failures are retried (our
credentials, not the recipient's number) so an operator can fix them in time. The
WHATSAPP channel (``whatsapp.py``) sends through the same client and rules.
"""

from __future__ import annotations

from typing import Any

from twilio.base.exceptions import TwilioRestException
from twilio.http.async_http_client import AsyncTwilioHttpClient
from twilio.rest import Client

from postbell.app.core.settings import Settings, TwilioSettings
from postbell.workers.channels.base import Delivery, Outcome

OPTED_OUT = 21610
INVALID_NUMBER = frozenset({21211, 21214, 21217, 21219, 21401, 21407, 21408, 21612, 21614})


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


class TwilioClient:
    """One twilio SDK client on its async HTTP client, pointed at TWILIO_API_URL when set."""

    def __init__(self, twilio: TwilioSettings, *, timeout: float) -> None:
        self.http = AsyncTwilioHttpClient(timeout=timeout)
        self.client = Client(twilio.account_sid, twilio.auth_token, http_client=self.http)
        if twilio.api_url:
            # For emulators and tests (TWILIO_API_URL): the Api domain's base URL.
            self.client.api.base_url = twilio.api_url

    async def create(self, options: dict[str, Any]) -> str:
        """Create a message; its sid. Raises what the SDK raises."""
        message = await self.client.messages.create_async(**options)
        return str(message.sid)

    async def close(self) -> None:
        session = getattr(self.http, "session", None)
        if session is not None:
            await session.close()


def status_callback(settings: Settings) -> str | None:
    """Where Twilio reports what became of a message (needs POSTBELL_PUBLIC_URL)."""
    if not settings.public_url:
        return None
    return f"{settings.public_url.rstrip('/')}/api/callbacks/twilio"


class TwilioTransport:
    what = "Twilio"

    def __init__(
        self, twilio: TwilioSettings, *, timeout: float, status_callback: str | None
    ) -> None:
        self.twilio = twilio
        self.status_callback = status_callback
        self.client = TwilioClient(twilio, timeout=timeout)

    async def send_one(self, delivery: Delivery, phone: str, text: str) -> Outcome:
        options: dict[str, Any] = {"to": phone, "body": text}
        if self.twilio.messaging_service_sid:
            options["messaging_service_sid"] = self.twilio.messaging_service_sid
        else:
            options["from_"] = self.twilio.from_number
        if self.status_callback:
            # The delivery id rides in the URL, which Twilio's signature covers.
            options["status_callback"] = f"{self.status_callback}?d={delivery.id}"
        try:
            sid = await self.client.create(options)
        except Exception as exc:
            return classify(exc)
        return Outcome.sent(sid)

    async def close(self) -> None:
        await self.client.close()
