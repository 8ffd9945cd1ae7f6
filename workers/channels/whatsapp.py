"""WHATSAPP: a message to the recipient's ``whatsapp`` number (E.164), from the
WhatsApp-enabled sender TWILIO_WHATSAPP_FROM, through the twilio SDK's Messages API
(``whatsapp:+E164`` on both ends).

WhatsApp lets a business send free text only inside the 24-hour session window that
a member's own message opens; outside it only an approved template goes out. A
notification names its template with ``metadata.whatsapp_content_sid`` (else its
category's ``whatsapp_content_sid``); the template's variables come from
``metadata.whatsapp_variables`` ({"1": "Ana", ...}), else ``{"1": title or subject,
"2": body}`` (and ``"3"``: the action URL, when there is one). Without a template
the text goes as free text.

Twilio's errors sorted once, as for SMS (``sms/twilio.py``), plus WhatsApp's own:
63016 (free text outside the session window) → ``template_required``; a template
Twilio cannot use (21655, 21656, 63027, 63028) → ``template_rejected``; a number not
on WhatsApp (63003, 63024) → ``invalid_address``; 63018 and 63038 (rate and daily
limits) are retried; 21610 (opted out) marks the number inactive.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

from twilio.base.exceptions import TwilioRestException

from postbell.app.core.settings import Settings, TwilioSettings
from postbell.workers.channels.base import Channel, Delivery, Outcome, invalid_content
from postbell.workers.channels.sms import text
from postbell.workers.channels.sms.twilio import TwilioClient, classify, status_callback

CONCURRENCY = 16
OUTSIDE_WINDOW = 63016
TEMPLATE_REJECTED = frozenset({21655, 21656, 63027, 63028})
NOT_ON_WHATSAPP = frozenset({63003, 63024})
RATE_LIMITED = frozenset({63018, 63038})


def classify_whatsapp(exc: BaseException) -> Outcome:
    if isinstance(exc, TwilioRestException):
        what = f"Twilio {exc.status} code {exc.code}: {exc.msg}"[:400]
        if exc.code == OUTSIDE_WINDOW:
            return Outcome.fail(
                f"{what} (outside WhatsApp's 24-hour session window only an approved template"
                " may be sent: name one in the category's whatsapp_content_sid or the"
                " notification's metadata.whatsapp_content_sid)",
                "template_required",
            )
        if exc.code in TEMPLATE_REJECTED:
            return Outcome.fail(
                f"{what} (the WhatsApp template or its variables)", "template_rejected"
            )
        if exc.code in NOT_ON_WHATSAPP:
            return Outcome.fail(what, "invalid_address")
        if exc.code in RATE_LIMITED:
            return Outcome.retry(what)
    return classify(exc)


def template(delivery: Delivery) -> tuple[str, dict[str, str]] | None:
    """The content SID and variables this delivery goes with, or None for free text.
    Raises ValueError for a metadata value of the wrong shape."""
    metadata: Mapping[str, Any] = delivery.metadata
    sid = metadata.get("whatsapp_content_sid") or delivery.category_options.whatsapp_content_sid
    if not sid:
        return None
    if not isinstance(sid, str):
        raise ValueError("whatsapp_content_sid is not a string")
    given = metadata.get("whatsapp_variables")
    if given is not None:
        if not isinstance(given, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in given.items()
        ):
            raise ValueError("whatsapp_variables is not an object of strings")
        return sid, dict(given)
    variables = {"1": delivery.subject, "2": delivery.body}
    if delivery.action_url:
        variables["3"] = delivery.action_url
    return sid, variables


class WhatsAppChannel:
    name: ClassVar[str] = "WHATSAPP"
    address_field: ClassVar[str | None] = "whatsapp"
    inactive_field: ClassVar[str | None] = "whatsapp_inactive_at"

    def __init__(
        self, twilio: TwilioSettings, *, timeout: float, status_callback: str | None
    ) -> None:
        assert twilio.whatsapp_from
        self.sender = f"whatsapp:{twilio.whatsapp_from}"
        self.status_callback = status_callback
        self.client = TwilioClient(twilio, timeout=timeout)
        self._limit = asyncio.Semaphore(CONCURRENCY)

    @classmethod
    def from_settings(cls, settings: Settings) -> Channel | None:
        if settings.twilio is None or not settings.twilio.whatsapp_from:
            return None
        return cls(
            settings.twilio,
            timeout=settings.http_timeout,
            status_callback=status_callback(settings),
        )

    async def send(self, deliveries: Sequence[Delivery]) -> list[Outcome]:
        return list(await asyncio.gather(*(self._send_one(d) for d in deliveries)))

    def options(self, delivery: Delivery, number: str) -> dict[str, Any]:
        options: dict[str, Any] = {"to": f"whatsapp:{number}", "from_": self.sender}
        chosen = template(delivery)
        if chosen is None:
            options["body"] = text(delivery)
        else:
            options["content_sid"] = chosen[0]
            options["content_variables"] = json.dumps(chosen[1], ensure_ascii=False)
        if self.status_callback:
            # The delivery id rides in the URL, which Twilio's signature covers.
            options["status_callback"] = f"{self.status_callback}?d={delivery.id}"
        return options

    async def _send_one(self, delivery: Delivery) -> Outcome:
        number = delivery.recipient.whatsapp
        if not number:
            return Outcome.skip("no_address")
        try:
            options = self.options(delivery, number)
        except Exception as exc:  # this delivery only
            return invalid_content("WhatsApp", exc)
        async with self._limit:
            try:
                sid = await self.client.create(options)
            except Exception as exc:
                return classify_whatsapp(exc)
        return Outcome.sent(sid)

    async def close(self) -> None:
        await self.client.close()
