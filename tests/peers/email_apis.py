"""Local SendGrid v3 and Amazon SES v2 endpoints.

SendGrid: ``POST /v3/mail/send`` with ``Authorization: Bearer <key>``; checks the v3
shape; answers 202 with ``X-Message-Id``.

SES: ``POST /v2/email/outbound-emails``; verifies AWS Signature Version 4 with its
own implementation of AWS's published algorithm (not botocore's, which signs);
accepts ``Content.Raw`` (MIME) and answers ``{"MessageId": ...}``.

Both script per-recipient failures in order: ``script(address, [429, 503, 400])``.
"""

from __future__ import annotations

import base64
import datetime as dt
import email
import email.policy
import hashlib
import hmac
import secrets
from typing import Any
from urllib.parse import quote

from aiohttp import web

from tests.peers.http import HttpPeer

SENDGRID_KEY = "SG.postbell-test-key"
AWS_KEY_ID = "AKIDPOSTBELLTEST"
AWS_SECRET = "postbell/test/secret/key"
AWS_REGION = "eu-west-1"
FROM = "Postbell <notify@postbell.test>"


class _Scripted(HttpPeer):
    def __init__(self) -> None:
        super().__init__()
        self.accepted: list[dict[str, Any]] = []
        self.scripts: dict[str, list[int]] = {}

    def script(self, address: str, statuses: list[int]) -> None:
        with self.lock:
            self.scripts[address] = list(statuses)

    def _next(self, address: str) -> int | None:
        with self.lock:
            queue = self.scripts.get(address)
            return queue.pop(0) if queue else None

    def to(self, address: str) -> list[dict[str, Any]]:
        with self.lock:
            return [m for m in self.accepted if m["to"] == address]


class SendGridPeer(_Scripted):
    def env(self) -> dict[str, str]:
        return {
            "POSTBELL_EMAIL_PROVIDER": "sendgrid",
            "SENDGRID_API_KEY": SENDGRID_KEY,
            "SENDGRID_API_URL": self.url,
            "EMAIL_FROM": FROM,
        }

    def routes(self, app: web.Application) -> None:
        app.router.add_post("/v3/mail/send", self._send)

    async def _send(self, request: web.Request) -> web.Response:
        await self.record(request)
        if request.headers.get("Authorization") != f"Bearer {SENDGRID_KEY}":
            return web.json_response(
                {
                    "errors": [
                        {
                            "message": "The provided authorization grant is invalid, expired, or revoked",
                            "field": None,
                            "help": None,
                        }
                    ]
                },
                status=401,
            )
        payload = await request.json()
        problem = _sendgrid_problem(payload)
        if problem:
            return web.json_response(
                {"errors": [{"message": problem, "field": None, "help": None}]}, status=400
            )
        to = payload["personalizations"][0]["to"][0]["email"]
        status = self._next(to)
        if status is not None:
            headers = {"Retry-After": "1"} if status == 429 else {}
            return web.json_response(
                {"errors": [{"message": f"scripted {status}"}]}, status=status, headers=headers
            )
        content = {c["type"]: c["value"] for c in payload["content"]}
        with self.lock:
            self.accepted.append(
                {
                    "to": to,
                    "subject": payload["subject"],
                    "text": content.get("text/plain"),
                    "html": content.get("text/html"),
                    "headers": payload.get("headers", {}),
                    "custom_args": payload["personalizations"][0].get("custom_args", {}),
                    "from": payload["from"],
                }
            )
        return web.Response(status=202, headers={"X-Message-Id": secrets.token_urlsafe(16)})


def _sendgrid_problem(payload: Any) -> str | None:
    if not isinstance(payload, dict):
        return "payload must be an object"
    people = payload.get("personalizations")
    if not isinstance(people, list) or not people or not people[0].get("to"):
        return "personalizations[0].to is required"
    if "email" not in payload.get("from", {}):
        return "from.email is required"
    if not payload.get("subject"):
        return "subject is required"
    types = [c.get("type") for c in payload.get("content", [])]
    if not types or types[0] != "text/plain":
        return "content must start with text/plain"
    return None


def _hmac(key: bytes, text: str) -> bytes:
    return hmac.new(key, text.encode(), hashlib.sha256).digest()


def sigv4_ok(
    method: str,
    path: str,
    query: str,
    headers: dict[str, str],
    body: bytes,
    *,
    key_id: str,
    secret: str,
    region: str,
    service: str,
) -> bool:
    """Recompute an AWS Signature V4 from the request as received and compare."""
    auth = headers.get("Authorization", "")
    if not auth.startswith("AWS4-HMAC-SHA256 "):
        return False
    fields = dict(
        part.strip().split("=", 1) for part in auth[len("AWS4-HMAC-SHA256 ") :].split(",")
    )
    credential = fields.get("Credential", "").split("/")
    if (
        len(credential) != 5
        or credential[0] != key_id
        or credential[2:] != [region, service, "aws4_request"]
    ):
        return False
    amz_date = headers.get("X-Amz-Date", "")
    try:
        when = dt.datetime.strptime(amz_date, "%Y%m%dT%H%M%SZ").replace(tzinfo=dt.UTC)
    except ValueError:
        return False
    if abs((dt.datetime.now(dt.UTC) - when).total_seconds()) > 300 or credential[1] != amz_date[:8]:
        return False
    lowered = {k.lower(): v for k, v in headers.items()}
    signed = fields.get("SignedHeaders", "").split(";")
    canonical_headers = "".join(f"{h}:{' '.join(lowered.get(h, '').split())}\n" for h in signed)
    canonical_query = "&".join(sorted(query.split("&"))) if query else ""
    canonical = "\n".join(
        [
            method,
            quote(path, safe="/-_.~"),
            canonical_query,
            canonical_headers,
            ";".join(signed),
            hashlib.sha256(body).hexdigest(),
        ]
    )
    scope = "/".join(credential[1:])
    to_sign = "\n".join(
        ["AWS4-HMAC-SHA256", amz_date, scope, hashlib.sha256(canonical.encode()).hexdigest()]
    )
    key = _hmac(
        _hmac(_hmac(_hmac(f"AWS4{secret}".encode(), credential[1]), region), service),
        "aws4_request",
    )
    expected = hmac.new(key, to_sign.encode(), hashlib.sha256).hexdigest()
    return hmac.compare_digest(expected, fields.get("Signature", ""))


class SesPeer(_Scripted):
    def env(self) -> dict[str, str]:
        return {
            "POSTBELL_EMAIL_PROVIDER": "ses",
            "AWS_REGION": AWS_REGION,
            "AWS_ACCESS_KEY_ID": AWS_KEY_ID,
            "AWS_SECRET_ACCESS_KEY": AWS_SECRET,
            "SES_ENDPOINT_URL": self.url,
            "EMAIL_FROM": FROM,
        }

    def routes(self, app: web.Application) -> None:
        app.router.add_post("/v2/email/outbound-emails", self._send)

    async def _send(self, request: web.Request) -> web.Response:
        record = await self.record(request)
        if not sigv4_ok(
            request.method,
            request.path,
            request.query_string,
            dict(request.headers),
            record.body,
            key_id=AWS_KEY_ID,
            secret=AWS_SECRET,
            region=AWS_REGION,
            service="ses",
        ):
            return web.json_response(
                {
                    "message": "The request signature we calculated does not match the signature you provided."
                },
                status=403,
                headers={"x-amzn-ErrorType": "SignatureDoesNotMatch"},
            )
        payload = record.json()
        to = payload["Destination"]["ToAddresses"][0]
        status = self._next(to)
        if status is not None:
            kind = {
                400: "MessageRejected",
                429: "TooManyRequestsException",
                500: "InternalFailure",
                503: "ServiceUnavailable",
            }.get(status, "BadRequestException")
            return web.json_response(
                {"message": f"scripted {kind}"},
                status=status,
                headers={"x-amzn-ErrorType": f"{kind}:http://internal.amazon.com/"},
            )
        mime = email.message_from_bytes(
            base64.b64decode(payload["Content"]["Raw"]["Data"]), policy=email.policy.default
        )
        message_id = secrets.token_hex(16)
        with self.lock:
            self.accepted.append(
                {
                    "to": to,
                    "subject": mime["Subject"],
                    "message_id": mime["Message-ID"],
                    "mime": mime,
                    "tags": {t["Name"]: t["Value"] for t in payload.get("EmailTags", [])},
                    "ses_message_id": message_id,
                }
            )
        return web.json_response({"MessageId": message_id})
