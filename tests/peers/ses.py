"""A local Amazon SES v2 SendEmail endpoint: ``POST /v2/email/outbound-emails``.

Every request must carry a valid AWS Signature Version 4 (``AWS4-HMAC-SHA256``),
checked by ``verify_sigv4`` below: an implementation of AWS's published algorithm
written from the specification with hashlib/hmac (deliberately not botocore's, which
is what postbell signs with, so the two check each other). Refusals are 403 with
SES v2's error shape: a JSON body ``{"message": ...}`` and the error type in the
``x-amzn-ErrorType`` header (``Type:http://internal.amazon.com/...``, as AWS sends
it; clients take the part before ``:``):

* ``SignatureDoesNotMatch``: wrong secret, altered body/headers/path, a credential
  scoped to another region or service, a scope date not the request's date;
* ``UnrecognizedClientException``: an unknown access key id;
* ``InvalidSignatureException``: ``X-Amz-Date`` more than 5 minutes off;
* ``MissingAuthenticationTokenException`` / ``IncompleteSignatureException``: no or
  a malformed ``Authorization`` header.

Accepted content: ``Content.Raw.Data`` (a base64 MIME message, parsed with the
``email`` package; lines over 1,000 characters are refused as SES documents) and
``Content.Simple`` (``Subject.Data``, ``Body.Text.Data``/``Body.Html.Data``).
``EmailTags`` are checked (names and values of ``[A-Za-z0-9_-]``, at most 256).
Success is 200 ``{"MessageId": ...}``; each accepted email is recorded as an
``SesMessage``. ``script(address, ...)`` makes sends to ``address`` fail in order:
400 ``MessageRejected``, 429 ``TooManyRequestsException``, 500 ``InternalFailure``,
503 ``ServiceUnavailable``, or any other SES error type by name.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import datetime as dt
import email
import email.policy
import email.utils
import hashlib
import hmac
import json
import re
import secrets
import uuid
from collections.abc import Iterable, Mapping
from email.message import EmailMessage
from typing import Any
from urllib.parse import quote, unquote

from aiohttp import web

from tests.peers.http import HttpPeer

DEFAULT_REGION = "eu-west-1"
DEFAULT_ACCESS_KEY_ID = "AKIDPOSTBELLTEST"
DEFAULT_SECRET_ACCESS_KEY = "postbell/TEST/secret+key0123456789abcdefGHIJ"
EMAIL_FROM = "Postbell <notify@postbell.test>"
SERVICE = "ses"
ALGORITHM = "AWS4-HMAC-SHA256"
MAX_SKEW = dt.timedelta(minutes=5)
MAX_LINE = 1000
_TAG = re.compile(r"^[A-Za-z0-9_-]{1,256}$")
_AMZ_DATE = "%Y%m%dT%H%M%SZ"
_TYPE_SUFFIX = ":http://internal.amazon.com/coral/com.amazonaws.sesv2/"

SIGNATURE_MISMATCH_TYPE = "SignatureDoesNotMatch"
SIGNATURE_MISMATCH = (
    "The request signature we calculated does not match the signature you provided. Check "
    "your AWS Secret Access Key and signing method. Consult the service documentation for "
    "details."
)

#: SES v2 error types postbell may meet, with their HTTP status (botocore's sesv2 model,
#: plus the common InternalFailure / ServiceUnavailable / ThrottlingException).
ERROR_STATUS: dict[str, int] = {
    "BadRequestException": 400,
    "MessageRejected": 400,
    "MailFromDomainNotVerifiedException": 400,
    "LimitExceededException": 400,
    "AccountSuspendedException": 400,
    "SendingPausedException": 400,
    "ThrottlingException": 400,
    "AccessDeniedException": 403,
    "NotFoundException": 404,
    "TooManyRequestsException": 429,
    "InternalFailure": 500,
    "ServiceUnavailable": 503,
}
#: The error type a scripted HTTP status stands for.
STATUS_ERROR: dict[int, str] = {
    400: "MessageRejected",
    403: "AccessDeniedException",
    404: "NotFoundException",
    429: "TooManyRequestsException",
    500: "InternalFailure",
    503: "ServiceUnavailable",
}


class SigV4Error(Exception):
    """A request SigV4 refuses: ``error_type`` as AWS names it, ``message`` its text."""

    def __init__(self, error_type: str, message: str) -> None:
        super().__init__(f"{error_type}: {message}")
        self.error_type = error_type
        self.message = message


# -- AWS Signature Version 4, from the specification ----------------------------------------


def _hmac(key: bytes, text: str) -> bytes:
    return hmac.new(key, text.encode(), hashlib.sha256).digest()


def signing_key(secret: str, date: str, region: str, service: str) -> bytes:
    """kSigning = HMAC(HMAC(HMAC(HMAC("AWS4" + secret, date), region), service), "aws4_request")."""
    k_date = _hmac(f"AWS4{secret}".encode(), date)
    k_region = _hmac(k_date, region)
    k_service = _hmac(k_region, service)
    return _hmac(k_service, "aws4_request")


def _uri_encode(text: str) -> str:
    """RFC 3986 encoding: everything but unreserved characters (A-Z a-z 0-9 - _ . ~)."""
    return quote(text, safe="-_.~")


def canonical_uri(raw_path: str) -> str:
    """The path as sent (already percent-encoded), normalized (empty and ``.`` segments
    dropped, ``..`` applied), each segment encoded once more: the double encoding AWS
    specifies for every service but S3."""
    segments: list[str] = []
    for segment in raw_path.split("/"):
        if segment in ("", "."):
            continue
        if segment == "..":
            if segments:
                segments.pop()
            continue
        segments.append(segment)
    path = "/" + "/".join(_uri_encode(s) for s in segments)
    return path + "/" if raw_path.endswith("/") and segments else path


def canonical_query(raw_query: str) -> str:
    """Parameters decoded, re-encoded strictly, sorted by name then value, joined by ``&``."""
    pairs: list[tuple[str, str]] = []
    for part in raw_query.split("&") if raw_query else []:
        name, _, value = part.partition("=")
        pairs.append((_uri_encode(unquote(name)), _uri_encode(unquote(value))))
    return "&".join(f"{n}={v}" for n, v in sorted(pairs))


def canonical_header_value(values: Iterable[str]) -> str:
    """Each value trimmed, runs of spaces collapsed; several values joined by commas."""
    return ",".join(" ".join(v.split()) for v in values)


def canonical_request(
    method: str,
    raw_path: str,
    raw_query: str,
    headers: Mapping[str, list[str]],
    signed_headers: list[str],
    payload_hash: str,
) -> str:
    """The six lines AWS hashes: method, URI, query, headers, signed header names, payload."""
    lines = "".join(
        f"{name}:{canonical_header_value(headers.get(name, []))}\n" for name in signed_headers
    )
    return "\n".join(
        [
            method.upper(),
            canonical_uri(raw_path),
            canonical_query(raw_query),
            lines,
            ";".join(signed_headers),
            payload_hash,
        ]
    )


def string_to_sign(amz_date: str, scope: str, canonical: str) -> str:
    """``AWS4-HMAC-SHA256\\n<amz date>\\n<scope>\\n<hex sha256 of the canonical request>``."""
    digest = hashlib.sha256(canonical.encode()).hexdigest()
    return f"{ALGORITHM}\n{amz_date}\n{scope}\n{digest}"


def _parse_authorization(value: str) -> dict[str, str]:
    if not value.startswith(ALGORITHM + " "):
        raise SigV4Error(
            "IncompleteSignatureException",
            f"Authorization header requires the {ALGORITHM} algorithm.",
        )
    fields: dict[str, str] = {}
    for part in value[len(ALGORITHM) + 1 :].split(","):
        name, sep, item = part.strip().partition("=")
        if sep:
            fields[name] = item
    for required in ("Credential", "SignedHeaders", "Signature"):
        if not fields.get(required):
            raise SigV4Error(
                "IncompleteSignatureException",
                f"Authorization header requires '{required}' parameter. Authorization={value}",
            )
    return fields


def verify_sigv4(
    *,
    method: str,
    raw_path: str,
    raw_query: str,
    headers: Mapping[str, list[str]],
    body: bytes,
    credentials: Mapping[str, str],
    region: str,
    service: str,
    now: dt.datetime | None = None,
    max_skew: dt.timedelta = MAX_SKEW,
) -> str:
    """Check a request's ``Authorization: AWS4-HMAC-SHA256 ...`` header.

    ``headers`` maps lowercase names to every value received; ``credentials`` maps
    access key ids to secrets. Answers the access key id, or raises ``SigV4Error``.
    The payload hash is always computed from ``body``; an ``x-amz-content-sha256``
    header must equal it.
    """
    authorization = headers.get("authorization", [])
    if not authorization:
        raise SigV4Error("MissingAuthenticationTokenException", "Missing Authentication Token")
    fields = _parse_authorization(authorization[0])
    scope_parts = fields["Credential"].split("/")
    if len(scope_parts) != 5 or scope_parts[4] != "aws4_request":
        raise SigV4Error(
            "IncompleteSignatureException",
            "Credential should be scoped with a valid terminator: 'aws4_request'.",
        )
    key_id, date, scope_region, scope_service, _ = scope_parts
    secret = credentials.get(key_id)
    if secret is None:
        raise SigV4Error(
            "UnrecognizedClientException", "The security token included in the request is invalid."
        )

    amz_date = (headers.get("x-amz-date") or [""])[0]
    try:
        when = dt.datetime.strptime(amz_date, _AMZ_DATE).replace(tzinfo=dt.UTC)
    except ValueError:
        raise SigV4Error(
            "IncompleteSignatureException", "Authorization header requires existence of X-Amz-Date."
        ) from None
    now = now or dt.datetime.now(dt.UTC)
    if abs(now - when) > max_skew:
        stamp = now.strftime(_AMZ_DATE)
        raise SigV4Error(
            "InvalidSignatureException",
            f"Signature expired: {amz_date} is now earlier than "
            f"{(now - max_skew).strftime(_AMZ_DATE)} ({stamp} - 5 min.)"
            if when < now
            else f"Signature not yet current: {amz_date} is still later than "
            f"{(now + max_skew).strftime(_AMZ_DATE)} ({stamp} + 5 min.)",
        )
    if date != amz_date[:8]:
        raise SigV4Error(
            "SignatureDoesNotMatch",
            "Date in Credential scope does not match YYYYMMDD from ISO-8601 version of date "
            f"from HTTP: '{date}' != '{amz_date[:8]}', from '{amz_date}'.",
        )
    if scope_region != region:
        raise SigV4Error(
            "SignatureDoesNotMatch",
            f"Credential should be scoped to a valid region, not '{scope_region}'. ",
        )
    if scope_service != service:
        raise SigV4Error(
            "SignatureDoesNotMatch",
            f"Credential should be scoped to correct service: '{service}'. ",
        )

    signed = fields["SignedHeaders"].split(";")
    if signed != sorted(signed) or any(h != h.lower() for h in signed):
        raise SigV4Error(SIGNATURE_MISMATCH_TYPE, SIGNATURE_MISMATCH)
    for required in ("host", "x-amz-date"):
        if required not in signed:
            raise SigV4Error(
                "SignatureDoesNotMatch",
                f"'{required}' must be a 'SignedHeader' in the AWS Authorization.",
            )

    payload_hash = hashlib.sha256(body).hexdigest()
    declared = headers.get("x-amz-content-sha256")
    if declared and declared[0] != payload_hash:
        raise SigV4Error(
            "SignatureDoesNotMatch",
            "The provided 'x-amz-content-sha256' header does not match what was computed.",
        )
    canonical = canonical_request(method, raw_path, raw_query, headers, signed, payload_hash)
    scope = "/".join(scope_parts[1:])
    expected = hmac.new(
        signing_key(secret, date, region, service),
        string_to_sign(amz_date, scope, canonical).encode(),
        hashlib.sha256,
    ).hexdigest()
    if not hmac.compare_digest(expected, fields["Signature"]):
        raise SigV4Error(SIGNATURE_MISMATCH_TYPE, SIGNATURE_MISMATCH)
    return key_id


# -- the peer -------------------------------------------------------------------------------


@dataclasses.dataclass
class SesMessage:
    """One email SES accepted. ``mime`` is the parsed raw message (None for Simple)."""

    ses_message_id: str
    kind: str  # "Raw" or "Simple"
    sender: str
    to: list[str]
    cc: list[str]
    bcc: list[str]
    subject: str | None
    message_id: str | None  # the Message-ID header (Raw only)
    text: str | None
    html: str | None
    tags: dict[str, str]
    mime: EmailMessage | None
    payload: dict[str, Any]

    @property
    def recipients(self) -> list[str]:
        return [*self.to, *self.cc, *self.bcc]


@dataclasses.dataclass(frozen=True)
class SesFailure:
    """A scripted SES error: its type (``x-amzn-ErrorType``), status and message."""

    error_type: str
    status: int | None = None
    message: str | None = None


class SesRejection(Exception):
    """A request SES answers with an error (type, status, message)."""

    def __init__(self, error_type: str, message: str, status: int | None = None) -> None:
        super().__init__(f"{error_type}: {message}")
        self.error_type = error_type
        self.message = message
        self.status = status or ERROR_STATUS.get(error_type, 400)


def error_response(
    error_type: str, message: str, status: int, headers: Mapping[str, str] | None = None
) -> web.Response:
    """SES v2's error answer: ``{"message"}`` and ``x-amzn-ErrorType``, ``x-amzn-RequestId``."""
    return web.json_response(
        {"message": message},
        status=status,
        headers={
            "x-amzn-ErrorType": error_type + _TYPE_SUFFIX,
            "x-amzn-RequestId": str(uuid.uuid4()),
            **(headers or {}),
        },
    )


def new_message_id() -> str:
    """An id shaped like SES's (``0102018f...-<uuid>-000000``)."""
    return f"0102{secrets.token_hex(6)}-{uuid.uuid4()}-000000"


def _addresses(value: Any, field: str) -> list[str]:
    if value is None:
        return []
    if not isinstance(value, list) or not all(isinstance(a, str) and "@" in a for a in value):
        raise SesRejection("BadRequestException", f"{field} must be a list of email addresses.")
    return list(value)


def _part(value: Any, field: str) -> str | None:
    if value is None:
        return None
    if not isinstance(value, dict) or not isinstance(value.get("Data"), str):
        raise SesRejection("BadRequestException", f"{field}.Data is required.")
    return str(value["Data"])


def _header_addresses(message: EmailMessage, *names: str) -> list[str]:
    values = [str(v) for name in names for v in message.get_all(name, [])]
    return [address for _, address in email.utils.getaddresses(values) if address]


def _body(message: EmailMessage, subtype: str) -> str | None:
    part = message.get_body(preferencelist=(subtype,))
    if part is None or part.get_content_type() != f"text/{subtype}":
        return None
    return str(part.get_content())


def parse_send_email(payload: Any) -> SesMessage:
    """Check a SendEmail request body; answer the email or raise ``SesRejection``."""
    if not isinstance(payload, dict):
        raise SesRejection("BadRequestException", "The request body must be a JSON object.")
    content = payload.get("Content")
    if not isinstance(content, dict) or not content:
        raise SesRejection("BadRequestException", "Content is required.")
    kinds = [k for k in ("Simple", "Raw", "Template") if content.get(k) is not None]
    if len(kinds) != 1:
        raise SesRejection(
            "BadRequestException", "Content must have exactly one of Simple, Raw or Template."
        )
    destination = payload.get("Destination") or {}
    if not isinstance(destination, dict):
        raise SesRejection("BadRequestException", "Destination must be an object.")
    to = _addresses(destination.get("ToAddresses"), "Destination.ToAddresses")
    cc = _addresses(destination.get("CcAddresses"), "Destination.CcAddresses")
    bcc = _addresses(destination.get("BccAddresses"), "Destination.BccAddresses")
    sender = payload.get("FromEmailAddress")
    if sender is not None and not isinstance(sender, str):
        raise SesRejection("BadRequestException", "FromEmailAddress must be a string.")
    tags: dict[str, str] = {}
    for tag in payload.get("EmailTags") or []:
        name, value = (tag.get("Name"), tag.get("Value")) if isinstance(tag, dict) else (None, None)
        if not (isinstance(name, str) and isinstance(value, str)):
            raise SesRejection("BadRequestException", "EmailTags need a Name and a Value.")
        if not _TAG.match(name) or not _TAG.match(value):
            raise SesRejection(
                "BadRequestException",
                f"Invalid tag {name}={value}: only ASCII letters, numbers, underscores and "
                "dashes, at most 256 characters.",
            )
        tags[name] = value

    if kinds[0] == "Template":
        raise SesRejection("BadRequestException", "Templated content is not supported here.")
    if kinds[0] == "Simple":
        simple = content["Simple"]
        if not isinstance(simple, dict) or not isinstance(simple.get("Body"), dict):
            raise SesRejection("BadRequestException", "Content.Simple.Body is required.")
        subject = _part(simple.get("Subject"), "Content.Simple.Subject")
        if subject is None:
            raise SesRejection("BadRequestException", "Content.Simple.Subject is required.")
        text = _part(simple["Body"].get("Text"), "Content.Simple.Body.Text")
        html = _part(simple["Body"].get("Html"), "Content.Simple.Body.Html")
        if text is None and html is None:
            raise SesRejection("BadRequestException", "Content.Simple.Body needs Text or Html.")
        if not sender:
            raise SesRejection("BadRequestException", "FromEmailAddress is required.")
        if not (to or cc or bcc):
            raise SesRejection("BadRequestException", "Destination needs at least one address.")
        return SesMessage(
            ses_message_id=new_message_id(),
            kind="Simple",
            sender=sender,
            to=to,
            cc=cc,
            bcc=bcc,
            subject=subject,
            message_id=None,
            text=text,
            html=html,
            tags=tags,
            mime=None,
            payload=payload,
        )

    raw = content["Raw"]
    data = raw.get("Data") if isinstance(raw, dict) else None
    if not isinstance(data, str):
        raise SesRejection("BadRequestException", "Content.Raw.Data is required.")
    try:
        octets = base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError):
        raise SesRejection("BadRequestException", "Content.Raw.Data is not valid base64.") from None
    head, separator, _ = octets.replace(b"\r\n", b"\n").partition(b"\n\n")
    if not separator or not head.strip():
        raise SesRejection("MessageRejected", "Illegal header: the message has no header block.")
    if any(len(line) > MAX_LINE for line in octets.splitlines()):
        raise SesRejection(
            "MessageRejected", f"Message has a line longer than {MAX_LINE} characters."
        )
    mime = email.message_from_bytes(octets, policy=email.policy.default)
    assert isinstance(mime, EmailMessage)
    header_from = mime.get("From")
    if not (sender or header_from):
        raise SesRejection("MessageRejected", "Missing required header 'From'.")
    if not (to or cc or bcc):
        to = _header_addresses(mime, "To")
        cc = _header_addresses(mime, "Cc")
        bcc = _header_addresses(mime, "Bcc")
    if not (to or cc or bcc):
        raise SesRejection(
            "MessageRejected", "Missing final '@domain': the message has no recipients."
        )
    return SesMessage(
        ses_message_id=new_message_id(),
        kind="Raw",
        sender=str(sender or header_from),
        to=to,
        cc=cc,
        bcc=bcc,
        subject=str(mime["Subject"]) if mime["Subject"] is not None else None,
        message_id=str(mime["Message-ID"]) if mime["Message-ID"] is not None else None,
        text=_body(mime, "plain"),
        html=_body(mime, "html"),
        tags=tags,
        mime=mime,
        payload=payload,
    )


def _failure(item: int | str | SesFailure) -> SesFailure:
    if isinstance(item, SesFailure):
        return item
    if isinstance(item, int):
        return SesFailure(STATUS_ERROR.get(item, "BadRequestException"), status=item)
    return SesFailure(item)


#: Default messages of scripted errors (``{address}`` and ``{region}`` filled in).
DEFAULT_MESSAGES: dict[str, str] = {
    "MessageRejected": (
        "Email address is not verified. The following identities failed the check in region "
        "{region}: {address}"
    ),
    "TooManyRequestsException": "Maximum sending rate exceeded.",
    "ThrottlingException": "Maximum sending rate exceeded.",
    "LimitExceededException": "Daily message quota exceeded.",
    "SendingPausedException": (
        "Sending is paused for this account. For more information, please check the AWS "
        "Service Health Dashboard."
    ),
    "AccountSuspendedException": (
        "The account's ability to send email has been permanently restricted."
    ),
    "InternalFailure": (
        "The request processing has failed because of an unknown error, exception or failure."
    ),
    "ServiceUnavailable": "The request has failed due to a temporary failure of the server.",
}


class SesPeer(HttpPeer):
    """SES v2 ``SendEmail`` on 127.0.0.1, SigV4-checked (see the module docstring).

    ``accepted`` holds each accepted email; ``rejected`` the (error type, message) of
    each refusal, in order; ``received`` (from ``HttpPeer``) every request.
    """

    def __init__(
        self,
        region: str = DEFAULT_REGION,
        access_key_id: str = DEFAULT_ACCESS_KEY_ID,
        secret_access_key: str = DEFAULT_SECRET_ACCESS_KEY,
    ) -> None:
        super().__init__()
        self.region = region
        self.access_key_id = access_key_id
        self.secret_access_key = secret_access_key
        self.accepted: list[SesMessage] = []
        self.rejected: list[tuple[str, str]] = []
        self.scripts: dict[str, list[SesFailure]] = {}

    @property
    def endpoint(self) -> str:
        """The SendEmail URL (``SES_ENDPOINT_URL`` + ``/v2/email/outbound-emails``)."""
        return f"{self.url}/v2/email/outbound-emails"

    def env(self) -> dict[str, str]:
        """The settings that point postbell at this peer."""
        return {
            "POSTBELL_EMAIL_PROVIDER": "ses",
            "AWS_REGION": self.region,
            "AWS_ACCESS_KEY_ID": self.access_key_id,
            "AWS_SECRET_ACCESS_KEY": self.secret_access_key,
            "SES_ENDPOINT_URL": self.url,
            "EMAIL_FROM": EMAIL_FROM,
        }

    def script(self, address: str, *failures: int | str | SesFailure) -> None:
        """Make the next sends to ``address`` fail, one per entry, in order: an HTTP
        status (400/429/500/503...), an SES error type name, or an ``SesFailure``."""
        items = [_failure(f) for f in failures]
        with self.lock:
            self.scripts.setdefault(address.lower(), []).extend(items)

    def messages_to(self, address: str) -> list[SesMessage]:
        """The accepted emails that include ``address`` as a recipient."""
        with self.lock:
            return [
                m for m in self.accepted if address.lower() in (r.lower() for r in m.recipients)
            ]

    def routes(self, app: web.Application) -> None:
        app.router.add_post("/v2/email/outbound-emails", self._send)

    def _next_failure(self, recipients: list[str]) -> tuple[str, SesFailure] | None:
        with self.lock:
            for address in recipients:
                queue = self.scripts.get(address.lower())
                if queue:
                    return address, queue.pop(0)
        return None

    def _refuse(self, error_type: str, message: str, status: int) -> web.Response:
        with self.lock:
            self.rejected.append((error_type, message))
        return error_response(error_type, message, status)

    async def _send(self, request: web.Request) -> web.Response:
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
        try:
            payload = json.loads(record.body)
        except ValueError:
            return self._refuse("BadRequestException", "The request body is not valid JSON.", 400)
        try:
            message = parse_send_email(payload)
        except SesRejection as exc:
            return self._refuse(exc.error_type, exc.message, exc.status)
        scripted = self._next_failure(message.recipients)
        if scripted is not None:
            address, failure = scripted
            template = DEFAULT_MESSAGES.get(failure.error_type, f"scripted {failure.error_type}")
            text = failure.message or template.format(address=address, region=self.region.upper())
            status = failure.status or ERROR_STATUS.get(failure.error_type, 400)
            return self._refuse(failure.error_type, text, status)
        with self.lock:
            self.accepted.append(message)
        return web.json_response(
            {"MessageId": message.ses_message_id}, headers={"x-amzn-RequestId": str(uuid.uuid4())}
        )
