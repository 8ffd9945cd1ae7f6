"""A local Amazon SNS endpoint for SMS: the query API's ``Publish`` with ``PhoneNumber``.

``POST /`` with a form-encoded body (``Action=Publish``, ``Version=2010-03-31``,
``PhoneNumber``, ``Message``, ``MessageAttributes.entry.N.Name`` /
``.Value.DataType`` / ``.Value.StringValue``). Every request must carry a valid AWS
Signature Version 4 for service ``sns``, checked by the independent verifier of the
SES peer (``tests/peers/ses.py``, written from AWS's specification, not botocore's).
Answers as SNS does, in XML: ``<PublishResponse><PublishResult><MessageId>``; errors
as ``<ErrorResponse><Error><Type/><Code/><Message/></Error>`` with the code's HTTP
status (botocore's SNS model): ``OptedOut`` 400, ``Throttled`` 429, ``Throttling``
400, ``InternalError`` 500, ``InvalidParameter`` 400, signature failures 403.

Checks SNS makes: a ``PhoneNumber`` in E.164, a ``Message`` of at most 1,600
characters, SMS attributes with known names and values (``AWS.SNS.SMS.SMSType``
``Transactional|Promotional``, ``AWS.SNS.SMS.SenderID`` 1-11 alphanumerics).
``script(phone, "OptedOut", ...)`` makes the next publishes to ``phone`` fail in order;
``opt_out(phone)`` makes every publish to it fail with ``OptedOut``.
"""

from __future__ import annotations

import dataclasses
import re
import uuid
from urllib.parse import parse_qsl
from xml.sax.saxutils import escape

from aiohttp import web

from tests.peers.http import HttpPeer
from tests.peers.ses import (
    DEFAULT_ACCESS_KEY_ID,
    DEFAULT_REGION,
    DEFAULT_SECRET_ACCESS_KEY,
    SigV4Error,
    verify_sigv4,
)

SERVICE = "sns"
NAMESPACE = "http://sns.amazonaws.com/doc/2010-03-31/"
_E164 = re.compile(r"^\+[1-9]\d{6,14}$")
_SENDER_ID = re.compile(r"^(?=.*[A-Za-z])[A-Za-z0-9]{1,11}$")
ERROR_STATUS = {
    "OptedOut": 400,
    "Throttled": 429,
    "Throttling": 400,
    "InternalError": 500,
    "InvalidParameter": 400,
    "AuthorizationError": 403,
}
KNOWN_ATTRIBUTES = {
    "AWS.SNS.SMS.SMSType",
    "AWS.SNS.SMS.SenderID",
    "AWS.SNS.SMS.MaxPrice",
    "AWS.MM.SMS.OriginationNumber",
    "AWS.MM.SMS.EntityId",
    "AWS.MM.SMS.TemplateId",
}


@dataclasses.dataclass
class Published:
    message_id: str
    phone: str
    message: str
    attributes: dict[str, str]


class SnsRejection(Exception):
    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message


def error_response(code: str, message: str, status: int | None = None) -> web.Response:
    kind = "Receiver" if code in ("InternalError",) else "Sender"
    body = (
        f'<ErrorResponse xmlns="{NAMESPACE}"><Error><Type>{kind}</Type>'
        f"<Code>{escape(code)}</Code><Message>{escape(message)}</Message></Error>"
        f"<RequestId>{uuid.uuid4()}</RequestId></ErrorResponse>"
    )
    return web.Response(
        status=status or ERROR_STATUS.get(code, 400), text=body, content_type="text/xml"
    )


def parse_publish(form: dict[str, str]) -> Published:
    """Check a Publish to a phone number; answer it or raise ``SnsRejection``."""
    if form.get("Action") != "Publish" or form.get("Version") != "2010-03-31":
        raise SnsRejection("InvalidAction", "Only Publish (Version 2010-03-31) is served here.")
    phone = form.get("PhoneNumber", "")
    if not _E164.match(phone):
        raise SnsRejection(
            "InvalidParameter", f"Invalid parameter: PhoneNumber Reason: {phone} is not valid"
        )
    message = form.get("Message")
    if not message:
        raise SnsRejection("InvalidParameter", "Invalid parameter: Empty message")
    if len(message) > 1600:
        raise SnsRejection("InvalidParameter", "Invalid parameter: Message too long")
    attributes: dict[str, str] = {}
    index = 1
    while f"MessageAttributes.entry.{index}.Name" in form:
        prefix = f"MessageAttributes.entry.{index}"
        name = form[f"{prefix}.Name"]
        if form.get(f"{prefix}.Value.DataType") != "String":
            raise SnsRejection(
                "ParameterValueInvalid", f"The message attribute '{name}' has an invalid type"
            )
        if name not in KNOWN_ATTRIBUTES:
            raise SnsRejection("InvalidParameter", f"Invalid attribute name: {name}")
        attributes[name] = form.get(f"{prefix}.Value.StringValue", "")
        index += 1
    if attributes.get("AWS.SNS.SMS.SMSType", "Promotional") not in ("Promotional", "Transactional"):
        raise SnsRejection("ParameterValueInvalid", "Invalid SMSType")
    sender = attributes.get("AWS.SNS.SMS.SenderID")
    if sender is not None and not _SENDER_ID.match(sender):
        raise SnsRejection("ParameterValueInvalid", "Invalid SenderID")
    return Published(str(uuid.uuid4()), phone, message, attributes)


class SnsSmsPeer(HttpPeer):
    def __init__(self) -> None:
        super().__init__()
        self.region = DEFAULT_REGION
        self.access_key_id = DEFAULT_ACCESS_KEY_ID
        self.secret_access_key = DEFAULT_SECRET_ACCESS_KEY
        self.published: list[Published] = []
        self.rejected: list[tuple[str, str]] = []
        self.scripts: dict[str, list[str]] = {}
        self.opted_out: set[str] = set()

    def env(self) -> dict[str, str]:
        return {
            "POSTBELL_SMS_PROVIDER": "sns",
            "AWS_REGION": self.region,
            "AWS_ACCESS_KEY_ID": self.access_key_id,
            "AWS_SECRET_ACCESS_KEY": self.secret_access_key,
            "SNS_ENDPOINT_URL": self.url,
        }

    def script(self, phone: str, *codes: str) -> None:
        with self.lock:
            self.scripts.setdefault(phone, []).extend(codes)

    def opt_out(self, phone: str) -> None:
        with self.lock:
            self.opted_out.add(phone)

    def to(self, phone: str) -> list[Published]:
        with self.lock:
            return [p for p in self.published if p.phone == phone]

    def routes(self, app: web.Application) -> None:
        app.router.add_post("/", self._publish)

    def _refuse(self, code: str, message: str, status: int | None = None) -> web.Response:
        with self.lock:
            self.rejected.append((code, message))
        return error_response(code, message, status)

    async def _publish(self, request: web.Request) -> web.Response:
        record = await self.record(request)
        headers: dict[str, list[str]] = {}
        for name, value in request.headers.items():
            headers.setdefault(name.lower(), []).append(value)
        raw_path, _, raw_query = request.raw_path.partition("?")
        try:
            verify_sigv4(
                method=request.method,
                raw_path=raw_path,
                raw_query=raw_query,
                headers=headers,
                body=record.body,
                credentials={self.access_key_id: self.secret_access_key},
                region=self.region,
                service=SERVICE,
            )
        except SigV4Error as exc:
            return self._refuse(exc.error_type, exc.message, 403)
        if request.content_type != "application/x-www-form-urlencoded":
            return self._refuse("InvalidParameter", "The body must be form-encoded.")
        try:
            form = dict(
                parse_qsl(record.body.decode(), keep_blank_values=True, strict_parsing=True)
            )
            published = parse_publish(form)
        except ValueError:
            return self._refuse("MalformedQueryString", "The body is not a form.")
        except SnsRejection as exc:
            return self._refuse(exc.code, exc.message)
        with self.lock:
            queue = self.scripts.get(published.phone)
            scripted = queue.pop(0) if queue else None
            if scripted is None and published.phone in self.opted_out:
                scripted = "OptedOut"
        if scripted == "OptedOut":
            return self._refuse("OptedOut", "Phone number is opted out", ERROR_STATUS["OptedOut"])
        if scripted is not None:
            text = {
                "Throttled": "Rate exceeded",
                "Throttling": "Rate exceeded",
                "InternalError": "Internal Error",
                "InvalidParameter": (
                    f"Invalid parameter: PhoneNumber Reason: {published.phone} is not valid to"
                    " publish to"
                ),
            }.get(scripted, f"scripted {scripted}")
            return self._refuse(scripted, text)
        with self.lock:
            self.published.append(published)
        body = (
            f'<PublishResponse xmlns="{NAMESPACE}"><PublishResult>'
            f"<MessageId>{published.message_id}</MessageId></PublishResult>"
            f"<ResponseMetadata><RequestId>{uuid.uuid4()}</RequestId></ResponseMetadata>"
            "</PublishResponse>"
        )
        return web.Response(text=body, content_type="text/xml")
