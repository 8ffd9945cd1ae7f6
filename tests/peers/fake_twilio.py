"""A local Twilio Messages API for the real twilio SDK (its async client).

``POST /2010-04-01/Accounts/{sid}/Messages.json`` with HTTP Basic auth and form
fields To, From (or MessagingServiceSid), Body, StatusCallback; answers 201 with a
message resource. ``script(number, [...])`` answers a number's next sends with Twilio
errors in order: ``21211`` (invalid number), ``21610`` (unsubscribed), ``429``,
``503``; then success.

WhatsApp, as Twilio serves it on the same endpoint: ``To`` and ``From`` both
``whatsapp:+E164`` (a mixed pair is error 21910), the sender one of the account's
WhatsApp senders (63007 otherwise); either ``Body`` (free text) or ``ContentSid``
(``HX`` + 32 hex digits, one of ``templates``: 21655 otherwise) with
``ContentVariables`` (a JSON object of strings: 21656 otherwise; its keys must be
the template's placeholders: 63028 otherwise). WhatsApp's 24-hour rule: with
``enforce_window`` on, free text to a number without an open session
(``open_session``) is accepted (201, ``queued``) and then fails as Twilio reports it,
with error 63016, in ``failed``; templates go out anyway. Scripted WhatsApp errors:
``63016``, ``63003`` (not on WhatsApp), ``63018`` (rate limit), ``21610``.
"""

from __future__ import annotations

import base64
import json
import re
import secrets
from email.utils import formatdate
from typing import Any

from aiohttp import web

from tests.peers.http import HttpPeer

ACCOUNT_SID = "AC" + "0123456789abcdef" * 2
AUTH_TOKEN = "twilio-test-auth-token"
FROM_NUMBER = "+15005550006"
WHATSAPP_FROM = "+14155238886"
#: The account's approved WhatsApp templates: content SID -> its placeholders.
TEMPLATES = {
    "HX" + "0" * 31 + "1": ("1", "2"),
    "HX" + "0" * 31 + "2": ("1", "2", "3"),
    "HX" + "ab" * 16: ("name",),
}
_ERRORS = {
    21211: (400, "The 'To' number is not a valid phone number."),
    21610: (400, "Attempt to send to unsubscribed recipient"),
    429: (429, "Too Many Requests"),
    503: (503, "Service Unavailable"),
    500: (500, "Internal Server Error"),
    63016: (
        400,
        "Failed to send freeform message because you are outside the allowed window."
        " If you are using WhatsApp, please use a Message Template.",
    ),
    63003: (400, "Channel could not find To address"),
    63018: (429, "Rate limit exceeded for Channel"),
}
_CONTENT_SID = re.compile(r"^HX[0-9a-fA-F]{32}$")
_WHATSAPP = re.compile(r"^whatsapp:\+[1-9]\d{6,14}$")


class TwilioPeer(HttpPeer):
    def __init__(self) -> None:
        super().__init__()
        self.messages: list[dict[str, str]] = []
        self.scripts: dict[str, list[int]] = {}
        #: WhatsApp numbers with an open 24-hour session (they wrote to the business)
        self.sessions: set[str] = set()
        self.enforce_window = False
        #: messages accepted and then failed, as Twilio's status callback reports them
        self.failed: list[dict[str, str]] = []

    def env(self) -> dict[str, str]:
        return {
            "TWILIO_ACCOUNT_SID": ACCOUNT_SID,
            "TWILIO_AUTH_TOKEN": AUTH_TOKEN,
            "TWILIO_FROM_NUMBER": FROM_NUMBER,
            "TWILIO_WHATSAPP_FROM": WHATSAPP_FROM,
            "TWILIO_API_URL": self.url,
        }

    def open_session(self, number: str) -> None:
        """``number`` (E.164) wrote to the business: free text may go for 24 hours."""
        with self.lock:
            self.sessions.add(number)

    def script(self, number: str, codes: list[int]) -> None:
        with self.lock:
            self.scripts[number] = list(codes)

    def to(self, number: str) -> list[dict[str, str]]:
        with self.lock:
            return [m for m in self.messages if m["To"] == number]

    def routes(self, app: web.Application) -> None:
        app.router.add_post("/2010-04-01/Accounts/{sid}/Messages.json", self._create)

    async def _create(self, request: web.Request) -> web.Response:
        await self.record(request)
        expected = "Basic " + base64.b64encode(f"{ACCOUNT_SID}:{AUTH_TOKEN}".encode()).decode()
        if (
            request.headers.get("Authorization") != expected
            or request.match_info["sid"] != ACCOUNT_SID
        ):
            return web.json_response(
                {
                    "code": 20003,
                    "message": "Authenticate",
                    "more_info": "https://www.twilio.com/docs/errors/20003",
                    "status": 401,
                },
                status=401,
            )
        form = {k: str(v) for k, v in (await request.post()).items()}
        number = form.get("To", "")
        with self.lock:
            queue = self.scripts.get(number)
            code = queue.pop(0) if queue else None
        whatsapp = number.startswith("whatsapp:") or form.get("From", "").startswith("whatsapp:")
        if code is None and whatsapp:
            refusal = self._whatsapp_refusal(form)
            if refusal is not None:
                return refusal
        if code is not None:
            status, message = _ERRORS[code]
            headers = {"Retry-After": "1"} if status == 429 else {}
            body = {
                "code": code if code > 1000 else 20000 + status,
                "message": message,
                "more_info": f"https://www.twilio.com/docs/errors/{code}",
                "status": status,
            }
            return web.json_response(body, status=status, headers=headers)
        sid = "SM" + secrets.token_hex(16)
        with self.lock:
            if (
                whatsapp
                and self.enforce_window
                and "Body" in form
                and number.removeprefix("whatsapp:") not in self.sessions
            ):
                self.failed.append({**form, "sid": sid, "ErrorCode": "63016"})
            else:
                self.messages.append({**form, "sid": sid})
        return web.json_response(_resource(sid, form), status=201)

    def _whatsapp_refusal(self, form: dict[str, str]) -> web.Response | None:
        to, sender = form.get("To", ""), form.get("From", "")
        if not (_WHATSAPP.match(to) and _WHATSAPP.match(sender)):
            return _error(
                21910, 400, "Invalid From and To pair. From and To should be of the same channel"
            )
        if sender != f"whatsapp:{WHATSAPP_FROM}":
            return _error(
                63007, 400, "Twilio could not find a Channel with the specified From address"
            )
        sid = form.get("ContentSid")
        if sid is None:
            return (
                None
                if form.get("Body")
                else _error(21619, 400, "A text message body or media urls must be specified.")
            )
        if not _CONTENT_SID.match(sid) or sid not in TEMPLATES:
            return _error(21655, 400, "The ContentSid is Invalid")
        try:
            variables = json.loads(form.get("ContentVariables", "{}"))
        except ValueError:
            variables = None
        if not isinstance(variables, dict) or not all(
            isinstance(v, str) for v in variables.values()
        ):
            return _error(21656, 400, "The ContentVariables Parameter is invalid")
        if sorted(variables) != sorted(TEMPLATES[sid]):
            return _error(
                63028,
                400,
                "Number of parameters provided does not match the expected number of parameters",
            )
        return None


def _error(code: int, status: int, message: str) -> web.Response:
    body = {
        "code": code,
        "message": message,
        "more_info": f"https://www.twilio.com/docs/errors/{code}",
        "status": status,
    }
    return web.json_response(body, status=status)


def _resource(sid: str, form: dict[str, str]) -> dict[str, Any]:
    now = formatdate(usegmt=True)
    return {
        "sid": sid,
        "account_sid": ACCOUNT_SID,
        "to": form.get("To"),
        "from": form.get("From"),
        "messaging_service_sid": form.get("MessagingServiceSid"),
        "body": form.get("Body"),
        "status": "queued",
        "num_segments": "1",
        "num_media": "0",
        "direction": "outbound-api",
        "api_version": "2010-04-01",
        "price": None,
        "price_unit": "USD",
        "error_code": None,
        "error_message": None,
        "uri": f"/2010-04-01/Accounts/{ACCOUNT_SID}/Messages/{sid}.json",
        "date_created": now,
        "date_updated": now,
        "date_sent": None,
        "subresource_uris": {},
    }


def status_callback_signature(
    url: str, params: dict[str, str], auth_token: str = AUTH_TOKEN
) -> str:
    """X-Twilio-Signature as Twilio computes it (HMAC-SHA1 over URL + sorted params)."""
    from twilio.request_validator import RequestValidator

    return str(RequestValidator(auth_token).compute_signature(url, params))
