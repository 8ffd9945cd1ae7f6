"""EMAIL over HTTP APIs: SendGrid (v3 mail/send) and Amazon SES (v2 SendEmail).

Both take the message the EMAIL channel built (HTML + text, Message-ID, delivery id
headers), so every provider sends the same email. SES gets it raw (MIME) and signed
with AWS Signature V4 by botocore; SendGrid gets its JSON shape with the delivery id
as a custom arg, which its Event Webhook echoes back.
"""

from __future__ import annotations

import asyncio
import base64
import email.utils
from collections.abc import Sequence
from typing import Any

import aiohttp
import msgspec
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials

from postbell.app.core.settings import SendGridSettings, SesSettings
from postbell.workers.channels import Outcome
from postbell.workers.channels.http import classify_exception, classify_status, new_session
from postbell.workers.channels.mime import OutgoingEmail

CONCURRENCY = 32


def _address(name: str | None, address: str) -> dict[str, str]:
    return {"email": address, "name": name} if name else {"email": address}


class _HttpTransport:
    what = "email API"

    def __init__(self, *, timeout: float) -> None:
        self.timeout = timeout
        self._session: aiohttp.ClientSession | None = None
        self._limit = asyncio.Semaphore(CONCURRENCY)

    @property
    def session(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            # Provider endpoints are configured by the operator, not by recipients:
            # no private-address guard here (emulators run on localhost).
            self._session = new_session(
                timeout=self.timeout, allow_private=True, per_host=CONCURRENCY
            )
        return self._session

    def request(self, message: OutgoingEmail) -> tuple[str, bytes, dict[str, str]]:
        raise NotImplementedError

    def provider_id(self, headers: Any, body: bytes) -> str | None:
        raise NotImplementedError

    def error_detail(self, headers: Any, body: bytes) -> str:
        return body.decode(errors="replace")[:300]

    def classify(self, status: int, headers: Any, body: bytes) -> Outcome:
        detail = self.error_detail(headers, body)
        if status in (401, 403):
            # Our API key or account, not the recipient: retried while an operator fixes it.
            return Outcome.retry(f"{self.what} refused our credentials (HTTP {status}): {detail}")
        return classify_status(status, headers, self.what, detail)

    async def send(self, messages: Sequence[OutgoingEmail]) -> list[Outcome]:
        return list(await asyncio.gather(*(self._send_one(m) for m in messages)))

    async def _send_one(self, message: OutgoingEmail) -> Outcome:
        url, body, headers = self.request(message)
        async with self._limit:
            try:
                async with self.session.post(
                    url, data=body, headers=headers, allow_redirects=False
                ) as response:
                    raw = await response.read()
                    if 200 <= response.status < 300:
                        return Outcome.sent(self.provider_id(response.headers, raw))
                    return self.classify(response.status, response.headers, raw)
            except Exception as exc:
                return classify_exception(exc, self.what)

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()


class SendGridTransport(_HttpTransport):
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
                    "to": [_address(message.to_name, message.to_address)],
                    "custom_args": {"postbell_delivery_id": delivery_id},
                }
            ],
            "from": _address(sender_name, message.sender_address),
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


class SesTransport(_HttpTransport):
    what = "SES"

    def __init__(self, settings: SesSettings, *, timeout: float) -> None:
        super().__init__(timeout=timeout)
        self.settings = settings
        self.signer = SigV4Auth(
            Credentials(settings.access_key_id, settings.secret_access_key), "ses", settings.region
        )

    def request(self, message: OutgoingEmail) -> tuple[str, bytes, dict[str, str]]:
        payload = {
            "FromEmailAddress": message.from_header,
            "Destination": {"ToAddresses": [message.to_address]},
            "Content": {"Raw": {"Data": base64.b64encode(message.as_bytes()).decode()}},
            "EmailTags": [{"Name": "postbell_delivery_id", "Value": str(message.delivery_id)}],
        }
        if self.settings.configuration_set:
            payload["ConfigurationSetName"] = self.settings.configuration_set
        url = f"{self.settings.endpoint_url}/v2/email/outbound-emails"
        body = msgspec.json.encode(payload)
        signed = AWSRequest(
            method="POST", url=url, data=body, headers={"Content-Type": "application/json"}
        )
        self.signer.add_auth(signed)
        return url, body, dict(signed.headers.items())

    def provider_id(self, headers: Any, body: bytes) -> str | None:
        try:
            value = msgspec.json.decode(body).get("MessageId")
        except (msgspec.DecodeError, AttributeError):
            return None
        return str(value) if value else None

    def error_detail(self, headers: Any, body: bytes) -> str:
        return f"{_error_type(headers)} {body.decode(errors='replace')[:250]}".strip()

    def classify(self, status: int, headers: Any, body: bytes) -> Outcome:
        if _error_type(headers) in SES_TRANSIENT:
            return Outcome.retry(f"SES {status} {self.error_detail(headers, body)}")
        return super().classify(status, headers, body)


#: SES errors that mean "not now" rather than "never" (quotas, a paused account).
SES_TRANSIENT = frozenset(
    {
        "LimitExceededException",
        "TooManyRequestsException",
        "ThrottlingException",
        "SendingPausedException",
    }
)


def _error_type(headers: Any) -> str:
    return str(headers.get("x-amzn-ErrorType", "")).split(":")[0]
