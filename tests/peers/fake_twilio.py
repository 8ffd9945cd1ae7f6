"""A local Twilio Messages API for the real twilio SDK (its async client).

``POST /2010-04-01/Accounts/{sid}/Messages.json`` with HTTP Basic auth and form
fields To, From (or MessagingServiceSid), Body, StatusCallback; answers 201 with a
message resource. ``script(number, [...])`` answers a number's next sends with Twilio
errors in order: ``21211`` (invalid number), ``21610`` (unsubscribed), ``429``,
``503``; then success.
"""

from __future__ import annotations

import base64
import secrets
from email.utils import formatdate
from typing import Any

from aiohttp import web

from tests.peers.http import HttpPeer

ACCOUNT_SID = "AC" + "0123456789abcdef" * 2
AUTH_TOKEN = "twilio-test-auth-token"
FROM_NUMBER = "+15005550006"
_ERRORS = {
    21211: (400, "The 'To' number is not a valid phone number."),
    21610: (400, "Attempt to send to unsubscribed recipient"),
    429: (429, "Too Many Requests"),
    503: (503, "Service Unavailable"),
    500: (500, "Internal Server Error"),
}


class TwilioPeer(HttpPeer):
    def __init__(self) -> None:
        super().__init__()
        self.messages: list[dict[str, str]] = []
        self.scripts: dict[str, list[int]] = {}

    def env(self) -> dict[str, str]:
        return {
            "TWILIO_ACCOUNT_SID": ACCOUNT_SID,
            "TWILIO_AUTH_TOKEN": AUTH_TOKEN,
            "TWILIO_FROM_NUMBER": FROM_NUMBER,
            "TWILIO_API_URL": self.url,
        }

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
            self.messages.append({**form, "sid": sid})
        return web.json_response(_resource(sid, form), status=201)


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
