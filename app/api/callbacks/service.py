"""Provider delivery feedback: SendGrid's Event Webhook, Amazon SES through SNS,
Twilio's status callbacks. Each is verified first; then its events move deliveries
from ``sent`` to ``delivered``, ``bounced``, ``complained`` or ``undelivered``. A
hard bounce, a complaint or a carrier opt-out marks the address inactive, so later
deliveries to it are skipped (``address_inactive``) until it changes.
"""

from __future__ import annotations

import dataclasses
import json
import re
import time
from collections.abc import Iterable, Mapping
from typing import Any

import aiohttp
import structlog

from postbell.app.api.callbacks import verify
from postbell.app.core import db
from postbell.app.core.errors import Forbidden, Invalid, Unavailable
from postbell.app.core.settings import Settings

log = structlog.get_logger("postbell.callbacks")

_MESSAGE_ID = re.compile(r"^<?(\d+)@")
_CERT_CACHE: dict[str, tuple[float, bytes]] = {}
CERT_TTL_SECONDS = 3600


@dataclasses.dataclass(frozen=True, slots=True)
class Feedback:
    delivery_id: int
    status: str  # delivered | bounced | complained | undelivered
    reason: str
    inactive: bool = False


async def apply(pool: db.Pool, channel: str, items: Iterable[Feedback]) -> int:
    """Record feedback in one transaction; answer how many deliveries moved."""
    items = [i for i in items if i.delivery_id > 0]
    if not items:
        return 0
    async with pool.connection() as conn, conn.transaction():
        moved = await db.fetch_all(
            conn,
            "deliveries_feedback",
            {
                "channel": channel,
                "ids": [i.delivery_id for i in items],
                "statuses": [i.status for i in items],
                "reasons": [i.reason for i in items],
            },
        )
        inactive = [i.delivery_id for i in items if i.inactive]
        if inactive:
            await db.execute(
                conn, "recipients_mark_inactive", {"delivery_ids": inactive, "channel": channel}
            )
    log.info("provider_feedback", channel=channel, events=len(items), moved=len(moved))
    return len(moved)


def _int(value: Any) -> int:
    try:
        return int(str(value))
    except (TypeError, ValueError):
        return 0


# -- SendGrid ----------------------------------------------------------------------------


def sendgrid_feedback(events: Any) -> list[Feedback]:
    if not isinstance(events, list):
        raise Invalid("a SendGrid Event Webhook body is a JSON array of events")
    items = []
    for event in events:
        if not isinstance(event, dict):
            continue
        delivery_id = _int(event.get("postbell_delivery_id"))
        kind = event.get("event")
        if kind == "delivered":
            items.append(Feedback(delivery_id, "delivered", "delivered"))
        elif kind == "bounce":
            hard = event.get("type", "bounce") == "bounce"  # "blocked" is a soft bounce
            status = "bounced" if hard else "undelivered"
            items.append(
                Feedback(
                    delivery_id, status, f"sendgrid:{event.get('type', 'bounce')}", inactive=hard
                )
            )
        elif kind == "dropped":
            items.append(
                Feedback(
                    delivery_id, "undelivered", f"sendgrid:dropped:{event.get('reason', '')}"[:200]
                )
            )
        elif kind == "spamreport":
            items.append(Feedback(delivery_id, "complained", "sendgrid:spamreport", inactive=True))
    return items


async def sendgrid(
    pool: db.Pool, settings: Settings, headers: Mapping[str, str], body: bytes
) -> int:
    if not settings.sendgrid_webhook_key:
        raise Forbidden(
            "SENDGRID_WEBHOOK_PUBLIC_KEY is not configured: SendGrid events cannot be verified"
        )
    if not verify.sendgrid(verify.load_sendgrid_key(settings.sendgrid_webhook_key), headers, body):
        raise Forbidden("the SendGrid signature does not verify")
    try:
        events = json.loads(body)
    except ValueError:
        raise Invalid("the body is not JSON") from None
    return await apply(pool, "EMAIL", sendgrid_feedback(events))


# -- Amazon SES through SNS -----------------------------------------------------------------


def ses_delivery_id(mail: Mapping[str, Any]) -> int:
    """The delivery an SES event is about: our tag, else our Message-ID header."""
    tags = mail.get("tags") or {}
    tagged = tags.get("postbell_delivery_id")
    if isinstance(tagged, list) and tagged:
        return _int(tagged[0])
    for header in mail.get("headers") or []:
        if isinstance(header, dict) and str(header.get("name", "")).lower() == "message-id":
            match = _MESSAGE_ID.match(str(header.get("value", "")))
            if match:
                return int(match.group(1))
    return 0


def ses_feedback(event: Mapping[str, Any]) -> list[Feedback]:
    kind = event.get("eventType") or event.get("notificationType")
    delivery_id = ses_delivery_id(event.get("mail") or {})
    if kind == "Delivery":
        return [Feedback(delivery_id, "delivered", "delivered")]
    if kind == "Bounce":
        bounce = event.get("bounce") or {}
        hard = bounce.get("bounceType") == "Permanent"
        reason = f"ses:{bounce.get('bounceType', '')}/{bounce.get('bounceSubType', '')}"
        return [Feedback(delivery_id, "bounced" if hard else "undelivered", reason, inactive=hard)]
    if kind == "Complaint":
        kind_of = (event.get("complaint") or {}).get("complaintFeedbackType", "abuse")
        return [Feedback(delivery_id, "complained", f"ses:complaint/{kind_of}", inactive=True)]
    return []


async def _cert(url: str) -> bytes:
    cached = _CERT_CACHE.get(url)
    if cached and cached[0] > time.monotonic():
        return cached[1]
    timeout = aiohttp.ClientTimeout(total=10)
    async with aiohttp.ClientSession(timeout=timeout) as session, session.get(url) as response:
        response.raise_for_status()
        pem = await response.read()
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
    try:
        message = json.loads(body)
    except ValueError:
        raise Forbidden("not an SNS message") from None
    if not isinstance(message, dict):
        raise Forbidden("not an SNS message")
    cert_url = str(message.get("SigningCertURL") or message.get("SigningCertUrl") or "")
    if not verify.sns_url_ok(cert_url, settings.sns_cert_url_prefixes, certificate=True):
        raise Forbidden("the SNS signing certificate is not Amazon's")
    try:
        pem = await _cert(cert_url)
    except (aiohttp.ClientError, TimeoutError):
        raise Forbidden("the SNS signing certificate could not be fetched") from None
    if not verify.sns(message, pem):
        raise Forbidden("the SNS signature does not verify")
    if message.get("TopicArn") not in settings.sns_topic_arns:
        raise Forbidden("this SNS topic is not one postbell accepts (SNS_TOPIC_ARNS)")
    kind = message.get("Type")
    if kind == "SubscriptionConfirmation":
        subscribe = str(message.get("SubscribeURL", ""))
        if not verify.sns_url_ok(subscribe, settings.sns_cert_url_prefixes, certificate=False):
            raise Forbidden("the SubscribeURL is not Amazon's")
        timeout = aiohttp.ClientTimeout(total=10)
        try:
            async with (
                aiohttp.ClientSession(timeout=timeout) as session,
                session.get(subscribe) as response,
            ):
                response.raise_for_status()
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise Unavailable(f"the SNS subscription could not be confirmed: {exc}") from None
        log.info("sns_subscription_confirmed", topic=message.get("TopicArn"))
        return "subscribed"
    if kind != "Notification":
        return "ignored"
    try:
        event = json.loads(str(message.get("Message", "")))
    except ValueError:
        return "ignored"
    await apply(pool, "EMAIL", ses_feedback(event))
    return "processed"


# -- Twilio ----------------------------------------------------------------------------------


def twilio_feedback(delivery_id: int, params: Mapping[str, str]) -> list[Feedback]:
    status = params.get("MessageStatus", "")
    code = params.get("ErrorCode") or ""
    if status == "delivered":
        return [Feedback(delivery_id, "delivered", "delivered")]
    if status in ("undelivered", "failed"):
        return [
            Feedback(
                delivery_id,
                "undelivered",
                f"twilio:{status}:{code}".rstrip(":"),
                inactive=code == "21610",
            )
        ]
    return []


async def twilio(
    pool: db.Pool, settings: Settings, query: str, params: Mapping[str, str], signature: str
) -> int:
    if settings.twilio is None or not settings.public_url:
        raise Forbidden(
            "Twilio callbacks need TWILIO_AUTH_TOKEN and POSTBELL_PUBLIC_URL to verify them"
        )
    url = f"{settings.public_url.rstrip('/')}/api/callbacks/twilio" + (f"?{query}" if query else "")
    if not signature or not verify.twilio(settings.twilio.auth_token, url, params, signature):
        raise Forbidden("the Twilio signature does not verify")
    delivery_id = _int(dict(p.split("=", 1) for p in query.split("&") if "=" in p).get("d"))
    return await apply(pool, "SMS", twilio_feedback(delivery_id, params))
