"""SMS through Amazon SNS: ``Publish`` with ``PhoneNumber`` (the query API, form-encoded),
signed with AWS Signature V4 by botocore, sent with the shared aiohttp session.

Per message: ``AWS.SNS.SMS.SMSType`` is ``Transactional`` for ``high``/``urgent``
notifications and ``Promotional`` otherwise, unless the category names one
(``sms_type``); ``AWS.SNS.SMS.SenderID`` is SNS_SENDER_ID, except to North American
numbers (+1), whose carriers take no alphanumeric sender; SNS_ORIGINATION_NUMBER
rides as ``AWS.MM.SMS.OriginationNumber``.

SNS's errors sorted once: ``OptedOut`` (the number replied STOP) marks the phone
inactive, as Twilio's 21610 does; ``Throttled``/``Throttling`` (and other rate or
quota codes), ``InternalError``, 5xx and network errors are retried, as are
credential errors (ours, not the recipient's); an invalid ``PhoneNumber`` is
``invalid_address``; any other refusal is permanent.
"""

from __future__ import annotations

import asyncio
import html
import re
from typing import Any
from urllib.parse import urlencode

import aiohttp
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials

from postbell.app.core.settings import SnsSettings
from postbell.workers.channels.base import Delivery, Outcome
from postbell.workers.channels.http import classify_exception, new_session, retry_after_seconds

CONCURRENCY = 16
API_VERSION = "2010-03-31"

#: Error codes that mean "not now": rate limits, quotas, SNS's own trouble.
TRANSIENT = frozenset(
    {
        "Throttled",
        "Throttling",
        "ThrottlingException",
        "KMSThrottling",
        "RequestLimitExceeded",
        "InternalError",
        "InternalFailure",
        "ServiceUnavailable",
    }
)
#: Our credentials or signature: retried while an operator fixes them.
CREDENTIALS = frozenset(
    {
        "AuthorizationError",
        "InvalidClientTokenId",
        "SignatureDoesNotMatch",
        "InvalidSecurity",
        "ExpiredToken",
        "IncompleteSignature",
        "MissingAuthenticationToken",
        "AccessDenied",
    }
)
OPTED_OUT = "OptedOut"

_CODE = re.compile(r"<Code>([^<]{1,100})</Code>")
_MESSAGE = re.compile(r"<Message>([^<]{0,500})</Message>")
_MESSAGE_ID = re.compile(r"<MessageId>([^<]{1,100})</MessageId>")


def sms_type(delivery: Delivery) -> str:
    """``Transactional`` or ``Promotional``: the category's choice, else by priority."""
    chosen = delivery.category_options.sms_type
    if chosen in ("transactional", "promotional"):
        return chosen.capitalize()
    return "Transactional" if delivery.priority in ("high", "urgent") else "Promotional"


def publish_form(settings: SnsSettings, delivery: Delivery, phone: str, text: str) -> str:
    """The ``Publish`` request body (form-encoded, as the query protocol has it)."""
    attributes = [("AWS.SNS.SMS.SMSType", sms_type(delivery))]
    if settings.sender_id and not phone.startswith("+1"):
        attributes.append(("AWS.SNS.SMS.SenderID", settings.sender_id))
    if settings.origination_number:
        attributes.append(("AWS.MM.SMS.OriginationNumber", settings.origination_number))
    fields = [
        ("Action", "Publish"),
        ("Version", API_VERSION),
        ("PhoneNumber", phone),
        ("Message", text),
    ]
    for index, (name, value) in enumerate(attributes, start=1):
        prefix = f"MessageAttributes.entry.{index}"
        fields += [
            (f"{prefix}.Name", name),
            (f"{prefix}.Value.DataType", "String"),
            (f"{prefix}.Value.StringValue", value),
        ]
    return urlencode(fields)


def classify(status: int, headers: Any, body: str) -> Outcome:
    """An SNS answer that is not 2xx, sorted once."""
    found = _CODE.search(body)
    code = found.group(1) if found else ""
    message = _MESSAGE.search(body)
    text = f"SNS {status} {code}: {html.unescape(message.group(1)) if message else ''}".strip()
    text = text[:500]
    if code == OPTED_OUT:
        return Outcome.fail(text, "unsubscribed", address_inactive=True)
    if code in TRANSIENT or status in (408, 425, 429) or status >= 500:
        return Outcome.retry(text, retry_after=retry_after_seconds(headers))
    if code in CREDENTIALS or status in (401, 403):
        return Outcome.retry(f"SNS refused our credentials: {text}")
    if code in ("InvalidParameter", "ParameterValueInvalid") and "PhoneNumber" in text:
        return Outcome.fail(text, "invalid_address")
    return Outcome.fail(text)


class SnsTransport:
    what = "SNS"

    def __init__(self, settings: SnsSettings, *, timeout: float) -> None:
        self.settings = settings
        self.timeout = timeout
        self.signer = SigV4Auth(
            Credentials(settings.access_key_id, settings.secret_access_key), "sns", settings.region
        )
        self._session: aiohttp.ClientSession | None = None
        self._limit = asyncio.Semaphore(CONCURRENCY)

    @property
    def session(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            # The operator's endpoint, not a recipient's: no private-address guard.
            self._session = new_session(timeout=self.timeout, guard=None, per_host=CONCURRENCY)
        return self._session

    def request(
        self, delivery: Delivery, phone: str, text: str
    ) -> tuple[str, bytes, dict[str, str]]:
        url = f"{self.settings.endpoint_url}/"
        body = publish_form(self.settings, delivery, phone, text).encode()
        signed = AWSRequest(
            method="POST",
            url=url,
            data=body,
            headers={"Content-Type": "application/x-www-form-urlencoded; charset=utf-8"},
        )
        self.signer.add_auth(signed)
        return url, body, dict(signed.headers.items())

    async def send_one(self, delivery: Delivery, phone: str, text: str) -> Outcome:
        url, body, headers = self.request(delivery, phone, text)
        async with self._limit:
            try:
                async with self.session.post(
                    url, data=body, headers=headers, allow_redirects=False
                ) as response:
                    answer = (await response.read())[:65536].decode(errors="replace")
                    if 200 <= response.status < 300:
                        found = _MESSAGE_ID.search(answer)
                        return Outcome.sent(found.group(1) if found else None)
                    return classify(response.status, response.headers, answer)
            except Exception as exc:
                return classify_exception(exc, self.what)

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
