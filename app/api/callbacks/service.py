"""Provider delivery feedback: SendGrid's Event Webhook, Amazon SES through SNS,
Twilio's status callbacks (SMS and WhatsApp). Each is verified first; then its events
move deliveries from ``sent`` to ``delivered``, ``bounced``, ``complained`` or
``undelivered``. A hard bounce, a complaint or a carrier opt-out marks the address
inactive, so later deliveries to it are skipped (``address_inactive``) until it changes.

What keeps replayed or forged feedback from changing anything:

* a signature, checked before anything in the body is used (403);
* a signed time no older than POSTBELL_CALLBACK_MAX_AGE_SECONDS and not ahead of our
  clock by more than the allowed skew, where the provider signs one (SendGrid's
  timestamp header, SNS's ``Timestamp``; Twilio signs none) (403);
* the provider's event id, recorded with the feedback it applies, in one statement:
  a second copy of an event answers 200 ``{"status": "duplicate"}`` and changes
  nothing (``deliveries_feedback``);
* deliveries move only forward, and an address is marked inactive only by the event
  that moved its delivery and only while it is still the address the provider named.

Bodies are decoded by msgspec into the shapes below: malformed JSON (nesting too
deep included) is 400, a value of the wrong type or size 422 naming the field;
nothing is recorded for either.
"""

from __future__ import annotations

import dataclasses
import hashlib
import re
import time
from collections.abc import Iterable, Mapping
from typing import Annotated, Any, TypeVar
from urllib.parse import parse_qs, parse_qsl

import aiohttp
import msgspec
import structlog

from postbell.app.api.callbacks import verify
from postbell.app.core import db
from postbell.app.core.errors import Forbidden, Invalid, Malformed, Unavailable
from postbell.app.core.settings import Settings

log = structlog.get_logger("postbell.callbacks")

#: The delivery id in a Message-ID postbell wrote: <delivery-id@sender-domain>.
#: postbell's Message-ID: <delivery-id.notification-id@domain> (older: <delivery-id@domain>)
_MESSAGE_ID = re.compile(r"<?([0-9]{1,18})(?:\.[0-9a-f]{32})?@")
#: A delivery id postbell wrote: a positive bigint, as ASCII digits.
_DELIVERY_ID = re.compile(r"[1-9][0-9]{0,17}")
_TWILIO_SID = re.compile(r"[A-Za-z0-9]{2,64}")
_TWILIO_STATUS = re.compile(r"[a-z_-]{1,32}")
_TWILIO_CODE = re.compile(r"[0-9]{0,10}")
_CERT_CACHE: dict[str, tuple[float, bytes]] = {}
CERT_TTL_SECONDS = 3600
MAX_CERT_BYTES = 64 * 1024
MAX_FORM_FIELDS = 100
REASON_MAX = 200

Key = Annotated[str, msgspec.Meta(min_length=1, max_length=200)]


@dataclasses.dataclass(frozen=True, slots=True)
class Feedback:
    event_key: str  # the provider's id of this event: a second copy of it changes nothing
    delivery_id: int
    status: str  # delivered | bounced | complained | undelivered
    reason: str
    addresses: tuple[str, ...] = ()  # the address(es) the provider reports this for
    inactive: bool = False  # a hard bounce, complaint or opt-out of those addresses


@dataclasses.dataclass(frozen=True, slots=True)
class Applied:
    events: int  # events about a delivery of ours
    fresh: int  # of them, not seen before
    moved: int  # deliveries that changed status
    marked: int  # recipients whose address became inactive

    @property
    def status(self) -> str:
        """What the callback answers: "duplicate" when every event was seen before."""
        return "duplicate" if self.events and not self.fresh else "processed"


async def apply(pool: db.Pool, provider: str, channel: str, items: Iterable[Feedback]) -> Applied:
    """Record feedback and its event ids in one statement (see ``deliveries_feedback``)."""
    items = [i for i in items if i.delivery_id > 0]
    if not items:
        return Applied(0, 0, 0, 0)
    async with pool.connection() as conn:
        row = await db.fetch_one(
            conn,
            "deliveries_feedback",
            {
                "provider": provider,
                "channel": channel,
                "event_keys": [i.event_key for i in items],
                "ids": [i.delivery_id for i in items],
                "statuses": [i.status for i in items],
                "reasons": [i.reason[:REASON_MAX] for i in items],
                "addresses": [msgspec.json.encode(i.addresses).decode() for i in items],
                "inactive": [i.inactive for i in items],
            },
        )
    assert row is not None
    applied = Applied(int(row["events"]), int(row["fresh"]), int(row["moved"]), int(row["marked"]))
    log.info(
        "provider_feedback",
        provider=provider,
        channel=channel,
        events=applied.events,
        duplicates=applied.events - applied.fresh,
        moved=applied.moved,
        marked_inactive=applied.marked,
    )
    return applied


T = TypeVar("T")


def decode(body: bytes | str, shape: type[T], *, what: str, field: str | None = None) -> T:
    """``body`` as ``shape``: Malformed (400) when it is not JSON, Invalid (422) naming
    the field when a value has the wrong type. Nesting deeper than the interpreter's
    recursion limit is malformed, never a 500."""
    try:
        return msgspec.json.decode(body, type=shape)
    except msgspec.ValidationError as exc:
        message, _, path = str(exc).partition(" - at `")
        at = path.rstrip("`").removeprefix("$").removeprefix(".")
        joint = "" if not field or not at or at.startswith("[") else "."
        where = f"{field or ''}{joint}{at}" or None
        raise Invalid(f"{what}: {message}", field=where) from None
    except (msgspec.DecodeError, RecursionError):
        detail = f"{what} is not valid JSON (or is nested too deeply)"
        raise Malformed(detail, field=field) from None


def delivery_id(value: str | int | None, *, field: str) -> int:
    """A delivery id postbell wrote into a message; 0 when there is none (the event is
    about a message postbell did not send); Invalid when it cannot be one of ours."""
    if value is None:
        return 0
    if isinstance(value, int) and 0 < value < 2**63:
        return value
    if isinstance(value, str) and _DELIVERY_ID.fullmatch(value):
        return int(value)
    raise Invalid("not a postbell delivery id (a positive 64-bit integer)", field=field)


def _refuse_stale(signed_at: float, settings: Settings, *, what: str, field: str) -> None:
    now = time.time()
    if not verify.fresh(signed_at, now=now, max_age=settings.callback_max_age_seconds):
        age = round(now - signed_at)
        when = f"{age} s old" if age >= 0 else f"{-age} s ahead of this host's clock"
        raise Forbidden(
            f"{what} was signed {when}; POSTBELL_CALLBACK_MAX_AGE_SECONDS allows"
            f" {settings.callback_max_age_seconds} s (a replay, or a clock that is off)",
            field=field,
        )


# -- SendGrid ----------------------------------------------------------------------------


class SendGridEvent(msgspec.Struct):
    """The fields of a SendGrid event postbell reads (it ignores the others)."""

    event: str | None = None
    email: str | None = None
    sg_event_id: Key | None = None
    type: str | None = None
    reason: str | None = None
    postbell_delivery_id: str | int | None = None  # our custom arg, echoed back


def _sendgrid_key(event: SendGridEvent) -> str:
    if event.sg_event_id is not None:
        return event.sg_event_id
    # SendGrid documents sg_event_id on every event; without one, the event's facts
    # are its identity (two copies of them would change nothing twice anyway).
    return "sha256:" + hashlib.sha256(msgspec.json.encode(event)).hexdigest()


def sendgrid_feedback(events: list[SendGridEvent]) -> list[Feedback]:
    items = []
    for n, event in enumerate(events):
        kind = event.event
        if kind not in ("delivered", "bounce", "dropped", "spamreport"):
            continue
        did = delivery_id(event.postbell_delivery_id, field=f"[{n}].postbell_delivery_id")
        key = _sendgrid_key(event)
        addresses = (event.email,) if event.email else ()
        if kind == "delivered":
            items.append(Feedback(key, did, "delivered", "delivered", addresses))
        elif kind == "bounce":
            bounce_type = event.type or "bounce"
            hard = bounce_type == "bounce"  # "blocked" is a soft bounce
            status = "bounced" if hard else "undelivered"
            reason = f"sendgrid:{bounce_type}"
            items.append(Feedback(key, did, status, reason, addresses, inactive=hard))
        elif kind == "dropped":
            reason = f"sendgrid:dropped:{event.reason or ''}"
            items.append(Feedback(key, did, "undelivered", reason, addresses))
        else:
            reason = "sendgrid:spamreport"
            items.append(Feedback(key, did, "complained", reason, addresses, inactive=True))
    return items


async def sendgrid(
    pool: db.Pool, settings: Settings, headers: Mapping[str, str], body: bytes
) -> Applied:
    if not settings.sendgrid_webhook_key:
        raise Forbidden(
            "SENDGRID_WEBHOOK_PUBLIC_KEY is not configured: SendGrid events cannot be verified"
        )
    signed_at = verify.sendgrid_timestamp(headers)
    if signed_at is None:
        raise Forbidden(
            "the SendGrid timestamp header is missing or not a Unix time (ASCII digits)",
            field=verify.SENDGRID_TIMESTAMP,
        )
    if not verify.sendgrid(verify.load_sendgrid_key(settings.sendgrid_webhook_key), headers, body):
        raise Forbidden("the SendGrid signature does not verify", field=verify.SENDGRID_SIGNATURE)
    _refuse_stale(signed_at, settings, what="this SendGrid POST", field=verify.SENDGRID_TIMESTAMP)
    events = decode(body, list[SendGridEvent], what="a SendGrid Event Webhook body (an array)")
    return await apply(pool, "sendgrid", "EMAIL", sendgrid_feedback(events))


# -- Amazon SES through SNS -----------------------------------------------------------------


class SnsMessage(msgspec.Struct):
    """An SNS HTTP(S) delivery, as posted; missing fields leave it unverifiable (403)."""

    type: str | None = msgspec.field(default=None, name="Type")
    message_id: Key | None = msgspec.field(default=None, name="MessageId")
    topic_arn: str | None = msgspec.field(default=None, name="TopicArn")
    subject: str | None = msgspec.field(default=None, name="Subject")
    message: str | None = msgspec.field(default=None, name="Message")
    timestamp: str | None = msgspec.field(default=None, name="Timestamp")
    signature_version: str | None = msgspec.field(default=None, name="SignatureVersion")
    signature: str | None = msgspec.field(default=None, name="Signature")
    signing_cert_url: str | None = msgspec.field(default=None, name="SigningCertURL")
    signing_cert_url_lower: str | None = msgspec.field(default=None, name="SigningCertUrl")
    subscribe_url: str | None = msgspec.field(default=None, name="SubscribeURL")
    token: str | None = msgspec.field(default=None, name="Token")

    def signed_fields(self) -> dict[str, Any]:
        return {
            "Type": self.type,
            "MessageId": self.message_id,
            "TopicArn": self.topic_arn,
            "Subject": self.subject,
            "Message": self.message,
            "Timestamp": self.timestamp,
            "SignatureVersion": self.signature_version,
            "Signature": self.signature,
            "SubscribeURL": self.subscribe_url,
            "Token": self.token,
        }


class SesAddress(msgspec.Struct, rename="camel"):
    email_address: str | None = None


class SesBounce(msgspec.Struct, rename="camel"):
    bounce_type: str | None = None
    bounce_sub_type: str | None = None
    bounced_recipients: list[SesAddress] = []


class SesComplaint(msgspec.Struct, rename="camel"):
    complaint_feedback_type: str | None = None
    complained_recipients: list[SesAddress] = []


class SesHeader(msgspec.Struct):
    name: str | None = None
    value: str | None = None


class SesMail(msgspec.Struct):
    tags: dict[str, list[str]] = {}
    headers: list[SesHeader] = []


class SesEvent(msgspec.Struct, rename="camel"):
    """An SES event record (event publishing) or notification (identity feedback)."""

    event_type: str | None = None
    notification_type: str | None = None
    mail: SesMail = msgspec.field(default_factory=SesMail)
    bounce: SesBounce = msgspec.field(default_factory=SesBounce)
    complaint: SesComplaint = msgspec.field(default_factory=SesComplaint)


def ses_delivery_id(mail: SesMail) -> int:
    """The delivery an SES event is about: our tag, else our Message-ID header."""
    tagged = mail.tags.get("postbell_delivery_id")
    if tagged:
        return delivery_id(tagged[0], field="Message.mail.tags.postbell_delivery_id")
    for header in mail.headers:
        if (header.name or "").lower() == "message-id":
            match = _MESSAGE_ID.match(header.value or "")
            if match:
                return int(match.group(1))
    return 0


def _addresses(recipients: list[SesAddress]) -> tuple[str, ...]:
    return tuple(r.email_address for r in recipients if r.email_address)


def ses_feedback(message_id: str, event: SesEvent) -> list[Feedback]:
    kind = event.event_type or event.notification_type
    if kind not in ("Delivery", "Bounce", "Complaint"):
        return []
    did = ses_delivery_id(event.mail)
    if kind == "Delivery":
        return [Feedback(message_id, did, "delivered", "delivered")]
    if kind == "Bounce":
        bounce = event.bounce
        hard = bounce.bounce_type == "Permanent"
        reason = f"ses:{bounce.bounce_type or ''}/{bounce.bounce_sub_type or ''}"
        status = "bounced" if hard else "undelivered"
        addresses = _addresses(bounce.bounced_recipients)
        return [Feedback(message_id, did, status, reason, addresses, inactive=hard)]
    complaint = event.complaint
    reason = f"ses:complaint/{complaint.complaint_feedback_type or 'abuse'}"
    addresses = _addresses(complaint.complained_recipients)
    return [Feedback(message_id, did, "complained", reason, addresses, inactive=True)]


async def _cert(url: str) -> bytes:
    cached = _CERT_CACHE.get(url)
    if cached and cached[0] > time.monotonic():
        return cached[1]
    timeout = aiohttp.ClientTimeout(total=10)
    # No redirects: the URL checked is the URL fetched.
    async with (
        aiohttp.ClientSession(timeout=timeout) as session,
        session.get(url, allow_redirects=False) as response,
    ):
        response.raise_for_status()
        pem = await response.content.read(MAX_CERT_BYTES + 1)
    if len(pem) > MAX_CERT_BYTES:
        raise ValueError("the certificate is larger than any signing certificate")
    _CERT_CACHE[url] = (time.monotonic() + CERT_TTL_SECONDS, pem)
    return pem


async def ses(pool: db.Pool, settings: Settings, body: bytes) -> str:
    # A valid SNS signature only proves the message came from *some* AWS account:
    # without the topics to trust, anyone could subscribe this endpoint to their own
    # topic and publish bounces that mark addresses inactive.
    if not settings.sns_topic_arns:
        raise Forbidden(
            "SNS_TOPIC_ARNS is not configured: SES feedback is accepted only from the "
            "SNS topics it names"
        )
    message = decode(body, SnsMessage, what="an SNS message (a JSON object)")
    cert_url = message.signing_cert_url or message.signing_cert_url_lower or ""
    if not verify.sns_url_ok(cert_url, settings.sns_cert_url_prefixes, certificate=True):
        raise Forbidden(
            "the SNS signing certificate URL is not an Amazon SNS host's (https://sns.<region>"
            ".amazonaws.com/....pem) nor under SNS_CERT_URL_PREFIXES",
            field="SigningCertURL",
        )
    try:
        pem = await _cert(cert_url)
    except (aiohttp.ClientError, TimeoutError, ValueError):
        raise Forbidden("the SNS signing certificate could not be fetched") from None
    if not verify.sns(message.signed_fields(), pem):
        raise Forbidden("the SNS signature does not verify", field="Signature")
    signed_at = verify.sns_timestamp(message.timestamp or "")
    if signed_at is None:
        raise Forbidden("the SNS Timestamp is not an ISO 8601 UTC time", field="Timestamp")
    _refuse_stale(signed_at, settings, what="this SNS message", field="Timestamp")
    if message.topic_arn not in settings.sns_topic_arns:
        raise Forbidden("this SNS topic is not one postbell accepts (SNS_TOPIC_ARNS)")
    if message.type == "SubscriptionConfirmation":
        subscribe = message.subscribe_url or ""
        if not verify.sns_url_ok(subscribe, settings.sns_cert_url_prefixes, certificate=False):
            raise Forbidden("the SubscribeURL is not Amazon's", field="SubscribeURL")
        timeout = aiohttp.ClientTimeout(total=10)
        try:
            async with (
                aiohttp.ClientSession(timeout=timeout) as session,
                session.get(subscribe, allow_redirects=False) as response,
            ):
                response.raise_for_status()
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise Unavailable(f"the SNS subscription could not be confirmed: {exc}") from None
        log.info("sns_subscription_confirmed", topic=message.topic_arn)
        return "subscribed"
    if message.type != "Notification":
        return "ignored"
    assert message.message is not None and message.message_id is not None  # signed: present
    event = decode(message.message, SesEvent, what="the SES event (Message)", field="Message")
    applied = await apply(pool, "ses", "EMAIL", ses_feedback(message.message_id, event))
    return applied.status


# -- Twilio ----------------------------------------------------------------------------------


def form_fields(body: bytes) -> dict[str, str]:
    """An application/x-www-form-urlencoded body (UTF-8); Malformed (400) when it is not
    one, has more than MAX_FORM_FIELDS fields or names one twice."""
    try:
        pairs = parse_qsl(
            body.decode("utf-8"),
            keep_blank_values=True,
            max_num_fields=MAX_FORM_FIELDS,
            errors="strict",
        )
    except ValueError:  # UnicodeDecodeError included
        raise Malformed(
            f"the body is not a UTF-8 form of at most {MAX_FORM_FIELDS} fields"
        ) from None
    fields: dict[str, str] = {}
    for name, value in pairs:
        if name in fields:
            raise Malformed(f"the form names {name!r} twice", field=name)
        fields[name] = value
    return fields


def twilio_delivery_id(query: str) -> int:
    """The delivery a status callback is about: ``?d=<id>`` on the URL postbell gave."""
    try:
        values = parse_qs(query, keep_blank_values=True, max_num_fields=10, errors="strict")
    except ValueError:
        raise Malformed("the query string is not a UTF-8 form", field="d") from None
    found = values.get("d")
    if found is None:
        return 0
    if len(found) != 1:
        raise Invalid("d must appear once", field="d")
    return delivery_id(found[0], field="d")


WHATSAPP_PREFIX = "whatsapp:"


def twilio_channel(params: Mapping[str, str]) -> str:
    """SMS, or WHATSAPP for a message between ``whatsapp:`` addresses."""
    ends = (params.get("To", ""), params.get("From", ""))
    return "WHATSAPP" if any(e.startswith(WHATSAPP_PREFIX) for e in ends) else "SMS"


def twilio_feedback(delivery: int, params: Mapping[str, str]) -> list[Feedback]:
    """What a status callback reports. Every callback carries MessageSid and
    MessageStatus (422 without them); statuses other than delivered, undelivered and
    failed (queued, sent, ...) change nothing."""
    sid = params.get("MessageSid", "")
    status = params.get("MessageStatus", "")
    code = params.get("ErrorCode", "")
    if not _TWILIO_SID.fullmatch(sid):
        raise Invalid("MessageSid must be Twilio's message id", field="MessageSid")
    if not _TWILIO_STATUS.fullmatch(status):
        raise Invalid("MessageStatus must be a Twilio message status", field="MessageStatus")
    if not _TWILIO_CODE.fullmatch(code):
        raise Invalid("ErrorCode must be a Twilio error number", field="ErrorCode")
    if status not in ("delivered", "undelivered", "failed"):
        return []
    key = f"{sid}:{status}:{code}"
    to = params.get("To", "").removeprefix(WHATSAPP_PREFIX)
    addresses = (to,) if to else ()
    if status == "delivered":
        return [Feedback(key, delivery, "delivered", "delivered", addresses)]
    reason = f"twilio:{status}:{code}".rstrip(":")
    return [Feedback(key, delivery, "undelivered", reason, addresses, inactive=code == "21610")]


async def twilio(
    pool: db.Pool, settings: Settings, query: bytes, body: bytes, signature: str
) -> Applied:
    if settings.twilio is None or not settings.public_url:
        raise Forbidden(
            "Twilio callbacks need TWILIO_AUTH_TOKEN and POSTBELL_PUBLIC_URL to verify them"
        )
    try:
        query_text = query.decode("ascii")
    except UnicodeDecodeError:
        raise Malformed("the query string is not ASCII", field="d") from None
    params = form_fields(body)
    url = f"{settings.public_url.rstrip('/')}/api/callbacks/twilio" + (
        f"?{query_text}" if query_text else ""
    )
    if not signature or not verify.twilio(settings.twilio.auth_token, url, params, signature):
        raise Forbidden("the Twilio signature does not verify", field="X-Twilio-Signature")
    delivery = twilio_delivery_id(query_text)
    feedback = twilio_feedback(delivery, params)
    return await apply(pool, "twilio", twilio_channel(params), feedback)
