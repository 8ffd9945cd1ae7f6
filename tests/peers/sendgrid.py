"""A local SendGrid v3 Mail Send endpoint: ``POST /v3/mail/send``.

It behaves as SendGrid does for the parts postbell uses:

* ``Authorization: Bearer <api key>``; a wrong or missing key is answered 401 with
  SendGrid's error document (``{"errors": [{"message", "field", "help"}]}``).
* The v3 payload is checked: ``personalizations`` (1..1000, each with a non-empty
  ``to``; at most 1000 recipients in all, no address twice in one personalization),
  ``from.email``, a ``subject`` (top level or in every personalization), ``content``
  with non-empty string values where ``text/plain`` comes first and ``text/html``
  next, ``headers`` and ``custom_args`` as string-to-string objects, no reserved
  header (``To``, ``From``, ``Subject``, ``Content-Type``, ...), custom args under
  10,000 bytes. Every problem found is listed in one 400 answer, as SendGrid does.
* An accepted request is answered 202, empty body, with ``X-Message-Id``. Each
  personalization is one email (as at SendGrid) and is recorded as a
  ``SendGridMessage``, headers and custom args merged (personalization wins).
* ``script(address, ...)`` makes requests that include ``address`` fail, in order,
  once per entry: 429 (``X-RateLimit-*`` headers, optionally ``Retry-After``),
  500, 503, 400, 403, or any ``ScriptedFailure``.

``stop()``/``start()`` simulate an outage on the same port (see ``HttpPeer``).
"""

from __future__ import annotations

import dataclasses
import json
import re
import secrets
import time
from collections.abc import Mapping
from typing import Any

from aiohttp import web

from tests.peers.http import HttpPeer

DEFAULT_API_KEY = "SG.postbell-test-key.0123456789abcdefghijklmnopqrstuvwxyzABCDEF"
EMAIL_FROM = "Postbell <notify@postbell.test>"

#: Headers SendGrid refuses in ``headers`` (compared case-insensitively).
RESERVED_HEADERS = frozenset(
    h.lower()
    for h in (
        "x-sg-id",
        "x-sg-eid",
        "received",
        "dkim-signature",
        "Content-Type",
        "Content-Transfer-Encoding",
        "To",
        "From",
        "Subject",
        "Reply-To",
        "CC",
        "BCC",
    )
)
MAX_PERSONALIZATIONS = 1000
MAX_RECIPIENTS = 1000
MAX_CUSTOM_ARGS_BYTES = 10_000
UNAUTHORIZED_MESSAGE = "The provided authorization grant is invalid, expired, or revoked"
_HELP = "http://sendgrid.com/docs/API_Reference/Web_API_v3/Mail/errors.html"
_EMAIL = re.compile(r"^[^@\s<>(),;:\"\[\]]+@[^@\s<>(),;:\"\[\]]+\.[^@\s<>(),;:\"\[\]]+$")


@dataclasses.dataclass(frozen=True)
class Address:
    """An ``{email, name?}`` object of the payload."""

    email: str
    name: str | None = None


@dataclasses.dataclass
class SendGridMessage:
    """One email SendGrid accepted: a personalization with the message-level fields."""

    x_message_id: str
    to: list[Address]
    cc: list[Address]
    bcc: list[Address]
    sender: Address
    subject: str
    text: str | None
    html: str | None
    headers: dict[str, str]
    custom_args: dict[str, str]
    payload: dict[str, Any]

    @property
    def recipients(self) -> list[str]:
        """Every address this email goes to (to, cc, bcc)."""
        return [a.email for a in (*self.to, *self.cc, *self.bcc)]


@dataclasses.dataclass(frozen=True)
class ScriptedFailure:
    """An answer ``script()`` makes the peer give instead of accepting.

    ``retry_after`` adds a ``Retry-After`` header (SendGrid itself sends only the
    ``X-RateLimit-*`` headers on 429; ``rate_limit_reset`` sets ``X-RateLimit-Reset``
    that many seconds from now). ``message``/``field`` replace the default error.
    """

    status: int
    retry_after: str | None = None
    rate_limit_reset: int = 1
    message: str | None = None
    field: str | None = None


_DEFAULT_ERRORS: dict[int, tuple[str, str | None]] = {
    400: ("Does not contain a valid address.", "personalizations.0.to.0.email"),
    401: (UNAUTHORIZED_MESSAGE, None),
    403: (
        "The from address does not match a verified Sender Identity. Mail cannot be sent "
        "until this error is resolved. Visit "
        "https://sendgrid.com/docs/for-developers/sending-email/sender-identity/ to see the "
        "Sender Identity requirements",
        "from",
    ),
    413: ("The JSON payload you have included in your request is too large.", None),
    429: ("too many requests", None),
    500: ("An internal server error occurred.", None),
    502: ("Bad Gateway", None),
    503: ("Service Unavailable", None),
}


def error_document(*errors: tuple[str, str | None]) -> dict[str, Any]:
    """SendGrid's error body: ``{"errors": [{"message", "field", "help"}, ...]}``."""
    return {
        "errors": [{"message": message, "field": field, "help": None} for message, field in errors]
    }


class _Problems:
    """Collects (message, field) pairs while a payload is checked."""

    def __init__(self) -> None:
        self.items: list[tuple[str, str | None]] = []

    def add(self, message: str, field: str | None) -> None:
        self.items.append((message, field))


def _address(value: Any, field: str, problems: _Problems) -> Address | None:
    if not isinstance(value, dict):
        problems.add("An email object must be a JSON object with an email field.", field)
        return None
    email = value.get("email")
    name = value.get("name")
    if not isinstance(email, str) or not _EMAIL.match(email):
        problems.add("Does not contain a valid address.", f"{field}.email")
        return None
    if name is not None and not isinstance(name, str):
        problems.add("The name must be a string.", f"{field}.name")
        return None
    return Address(email=email, name=name)


def _string_map(value: Any, field: str, problems: _Problems) -> dict[str, str]:
    if value is None:
        return {}
    if not isinstance(value, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in value.items()
    ):
        problems.add(f"The {field} must be an object of string keys and string values.", field)
        return {}
    return dict(value)


def _headers(value: Any, field: str, problems: _Problems) -> dict[str, str]:
    headers = _string_map(value, field, problems)
    for name in headers:
        if name.lower() in RESERVED_HEADERS:
            problems.add(f"The header '{name}' is reserved and cannot be set.", f"{field}.{name}")
    return headers


def _custom_args(value: Any, field: str, problems: _Problems) -> dict[str, str]:
    args = _string_map(value, field, problems)
    if len(json.dumps(args).encode()) > MAX_CUSTOM_ARGS_BYTES:
        problems.add("The custom_args may not exceed 10,000 bytes.", field)
    return args


def check_payload(payload: Any) -> tuple[list[SendGridMessage], list[tuple[str, str | None]]]:
    """Check a v3 mail/send payload; answer its emails (one per personalization) or,
    when anything is wrong, no emails and every (message, field) problem found.

    The emails' ``x_message_id`` is left empty for the caller to fill.
    """
    problems = _Problems()
    if not isinstance(payload, dict):
        problems.add("Bad Request", None)
        return [], problems.items

    sender = None
    if "from" not in payload:
        problems.add(
            "The from object must be provided for every email send. It is an object that "
            'requires the email parameter, but may also contain a name parameter.  e.g. {"email" '
            ': "example@example.com"}  or {"email" : "example@example.com", "name" : "Example '
            'Recipient"}.',
            "from.email",
        )
    else:
        sender = _address(payload["from"], "from", problems)

    subject = payload.get("subject")
    if subject is not None and not isinstance(subject, str):
        problems.add("The subject must be a string.", "subject")
        subject = None

    content = payload.get("content")
    text = html = None
    if not isinstance(content, list) or not content:
        problems.add(
            "Unless a valid template_id is provided, the content parameter is required. There "
            "must be at least one defined content block. We typically suggest both text/plain "
            "and text/html blocks are included, but only one block is required.",
            "content",
        )
    else:
        types: list[str] = []
        for n, block in enumerate(content):
            kind = block.get("type") if isinstance(block, dict) else None
            value = block.get("value") if isinstance(block, dict) else None
            if not isinstance(kind, str) or not kind:
                problems.add(
                    "The content type must be a string at least one character in length.",
                    f"content.{n}.type",
                )
                continue
            if not isinstance(value, str) or not value:
                problems.add(
                    "The content value must be a string at least one character in length.",
                    f"content.{n}.value",
                )
            types.append(kind)
            if kind == "text/plain" and isinstance(value, str):
                text = value
            elif kind == "text/html" and isinstance(value, str):
                html = value
        if len(set(types)) != len(types):
            problems.add("Each content type may only be given once.", "content")
        expected = [t for t in ("text/plain", "text/html") if t in types]
        if types[: len(expected)] != expected:
            problems.add(
                "If present, text/plain and text/html may only be provided in the order "
                "text/plain, text/html, followed by any other content types.",
                "content",
            )

    headers = _headers(payload.get("headers"), "headers", problems)
    custom_args = _custom_args(payload.get("custom_args"), "custom_args", problems)

    people = payload.get("personalizations")
    messages: list[SendGridMessage] = []
    if not isinstance(people, list) or not people:
        problems.add(
            "The personalizations field is required and must have at least one personalization.",
            "personalizations",
        )
        return [], problems.items
    if len(people) > MAX_PERSONALIZATIONS:
        problems.add(
            "You may not include more than 1000 personalizations per request.", "personalizations"
        )
    total = 0
    for n, person in enumerate(people):
        where = f"personalizations.{n}"
        if not isinstance(person, dict):
            problems.add("A personalization must be a JSON object.", where)
            continue
        lists: dict[str, list[Address]] = {"to": [], "cc": [], "bcc": []}
        for kind in lists:
            value = person.get(kind)
            if value is None:
                continue
            if not isinstance(value, list):
                problems.add(f"The {kind} field must be an array of email objects.", where)
                continue
            for m, item in enumerate(value):
                address = _address(item, f"{where}.{kind}.{m}", problems)
                if address is not None:
                    lists[kind].append(address)
        if not person.get("to"):
            problems.add(
                "The to array is required for all personalization objects, and must have at "
                "least one email object with a valid email address.",
                f"{where}.to",
            )
        emails = [a.email.lower() for group in lists.values() for a in group]
        total += len(emails)
        if len(set(emails)) != len(emails):
            problems.add(
                "Each email address in the personalization block should be unique between to, "
                "cc, and bcc. We found the first duplicate instance of "
                f"[{next(e for e in emails if emails.count(e) > 1)}] in the "
                f"{where}.to field.",
                f"{where}.to",
            )
        own_subject = person.get("subject")
        if own_subject is not None and not isinstance(own_subject, str):
            problems.add("The subject must be a string.", f"{where}.subject")
            own_subject = None
        if not (own_subject or subject):
            problems.add(
                "The subject is required. You can get around this requirement if you use a "
                "template with a subject defined or if every personalization has a subject "
                "defined.",
                "subject",
            )
        own_headers = _headers(person.get("headers"), f"{where}.headers", problems)
        own_args = _custom_args(person.get("custom_args"), f"{where}.custom_args", problems)
        if sender is not None:
            messages.append(
                SendGridMessage(
                    x_message_id="",
                    to=lists["to"],
                    cc=lists["cc"],
                    bcc=lists["bcc"],
                    sender=sender,
                    subject=str(own_subject or subject or ""),
                    text=text,
                    html=html,
                    headers={**headers, **own_headers},
                    custom_args={**custom_args, **own_args},
                    payload=payload,
                )
            )
    if total > MAX_RECIPIENTS:
        problems.add(
            "The total number of recipients (to, cc and bcc) may not exceed 1000.",
            "personalizations",
        )
    if problems.items:
        return [], problems.items
    return messages, []


class SendGridPeer(HttpPeer):
    """SendGrid's ``POST /v3/mail/send`` on 127.0.0.1 (see the module docstring).

    ``accepted`` holds every email accepted (one per personalization); ``received``
    (from ``HttpPeer``) every request, refused ones included.
    """

    def __init__(self, api_key: str = DEFAULT_API_KEY) -> None:
        super().__init__()
        self.api_key = api_key
        self.accepted: list[SendGridMessage] = []
        self.scripts: dict[str, list[ScriptedFailure]] = {}

    def env(self) -> dict[str, str]:
        """The settings that point postbell at this peer (it appends ``/v3/mail/send``)."""
        return {
            "POSTBELL_EMAIL_PROVIDER": "sendgrid",
            "SENDGRID_API_KEY": self.api_key,
            "SENDGRID_API_URL": self.url,
            "EMAIL_FROM": EMAIL_FROM,
        }

    def script(self, address: str, *failures: int | ScriptedFailure) -> None:
        """Make the next requests to ``address`` fail, one per entry, in order
        (appended to what is already scripted for it). Ints are HTTP statuses."""
        items = [f if isinstance(f, ScriptedFailure) else ScriptedFailure(f) for f in failures]
        with self.lock:
            self.scripts.setdefault(address.lower(), []).extend(items)

    def messages_to(self, address: str) -> list[SendGridMessage]:
        """The accepted emails that include ``address`` as a recipient."""
        with self.lock:
            return [
                m for m in self.accepted if address.lower() in (r.lower() for r in m.recipients)
            ]

    def routes(self, app: web.Application) -> None:
        app.router.add_post("/v3/mail/send", self._send)

    def _next_failure(self, recipients: list[str]) -> ScriptedFailure | None:
        with self.lock:
            for address in recipients:
                queue = self.scripts.get(address.lower())
                if queue:
                    return queue.pop(0)
        return None

    async def _send(self, request: web.Request) -> web.Response:
        record = await self.record(request)
        if request.headers.get("Authorization") != f"Bearer {self.api_key}":
            return web.json_response(error_document((UNAUTHORIZED_MESSAGE, None)), status=401)
        try:
            payload = json.loads(record.body)
        except ValueError:
            return web.json_response(error_document(("Bad Request", None)), status=400)
        messages, problems = check_payload(payload)
        if problems:
            return web.json_response(error_document(*problems), status=400)
        failure = self._next_failure([r for m in messages for r in m.recipients])
        if failure is not None:
            return _failure_response(failure)
        x_message_id = secrets.token_urlsafe(16)
        with self.lock:
            for message in messages:
                message.x_message_id = x_message_id
                self.accepted.append(message)
        return web.Response(status=202, headers={"X-Message-Id": x_message_id})


def _failure_response(failure: ScriptedFailure) -> web.Response:
    message, field = _DEFAULT_ERRORS.get(failure.status, ("scripted failure", None))
    headers: Mapping[str, str] = {}
    if failure.status == 429:
        headers = {
            "X-RateLimit-Limit": "600",
            "X-RateLimit-Remaining": "0",
            "X-RateLimit-Reset": str(int(time.time()) + failure.rate_limit_reset),
        }
    if failure.retry_after is not None:
        headers = {**headers, "Retry-After": failure.retry_after}
    body = error_document((failure.message or message, failure.field or field))
    return web.json_response(body, status=failure.status, headers=headers)
