"""Each channel classifies provider errors once: transient, permanent, or a dead address."""

from __future__ import annotations

import hashlib
import hmac

import pytest
from firebase_admin import exceptions as fb_exceptions
from firebase_admin import messaging
from twilio.base.exceptions import TwilioRestException

from postbell.workers.channels.base import Outcome
from postbell.workers.channels.http import classify_status, retry_after_seconds
from postbell.workers.channels.push import TokenResult, classify, summarize
from postbell.workers.channels.sms.twilio import classify as classify_sms
from postbell.workers.channels.webhook import signature


@pytest.mark.parametrize(
    ("status", "kind"),
    [
        (200, "sent"),
        (202, "sent"),
        (204, "sent"),
        (301, "fail"),
        (400, "fail"),
        (401, "fail"),
        (404, "fail"),
        (410, "fail"),
        (408, "retry"),
        (429, "retry"),
        (500, "retry"),
        (503, "retry"),
    ],
)
def test_http_status_classes(status: int, kind: str) -> None:
    assert classify_status(status, {}, "webhook").kind == kind


def test_retry_after_as_seconds_or_date() -> None:
    assert retry_after_seconds({"Retry-After": "7"}) == 7.0
    assert retry_after_seconds({"Retry-After": "Wed, 21 Oct 2015 07:28:00 GMT"}) == 0.0
    assert retry_after_seconds({}) is None
    assert classify_status(429, {"Retry-After": "3"}, "x").retry_after == 3.0
    assert retry_after_seconds({"Retry-After": "soon"}) is None


def test_rate_limit_reset_when_there_is_no_retry_after() -> None:
    """SendGrid's 429 carries X-RateLimit-Reset (a Unix time) and no Retry-After."""
    import time

    waited = retry_after_seconds({"X-RateLimit-Reset": str(int(time.time()) + 30)})
    assert waited is not None and 28 <= waited <= 30
    assert retry_after_seconds({"X-RateLimit-Reset": "12"}) == 12.0
    assert retry_after_seconds({"X-RateLimit-Reset": "1000000001"}) == 0.0
    assert retry_after_seconds({"Retry-After": "2", "X-RateLimit-Reset": "12"}) == 2.0


def test_webhook_signature_is_hmac_of_timestamp_dot_body() -> None:
    body = b'{"id":"1"}'
    expected = hmac.new(b"k", b"1700000000." + body, hashlib.sha256).hexdigest()
    assert signature("k", body, 1_700_000_000) == f"t=1700000000,v1={expected}"


def test_fcm_errors() -> None:
    assert classify(messaging.UnregisteredError("gone")).disable
    assert classify(
        fb_exceptions.InvalidArgumentError(
            "The registration token is not a valid FCM registration token"
        )
    ).disable
    invalid_payload = classify(fb_exceptions.InvalidArgumentError("Message payload too big"))
    assert not invalid_payload.disable and not invalid_payload.transient
    assert classify(fb_exceptions.UnavailableError("try later")).transient
    assert classify(messaging.QuotaExceededError("slow down")).transient


def test_push_summary_across_devices() -> None:
    ok = TokenResult(ok=True, name="projects/p/messages/1")
    dead = TokenResult(ok=False, disable=True, error="unregistered")
    busy = TokenResult(ok=False, transient=True, error="unavailable", retry_after=5)
    sent = summarize([dead, ok], ["a", "b"])
    assert (sent.kind, sent.provider_message_id, sent.disable_tokens) == (
        "sent",
        "projects/p/messages/1",
        ("a",),
    )
    retry = summarize([dead, busy], ["a", "b"])
    assert (retry.kind, retry.retry_after, retry.disable_tokens) == ("retry", 5, ("a",))
    gone = summarize([dead, dead], ["a", "b"])
    assert (gone.kind, gone.reason, gone.disable_tokens) == ("fail", "unregistered", ("a", "b"))
    assert summarize([], []) == Outcome.skip("no_device")


@pytest.mark.parametrize(
    ("status", "code", "kind", "reason", "inactive"),
    [
        (400, 21610, "fail", "unsubscribed", True),
        (400, 21211, "fail", "invalid_address", False),
        (400, 21000, "fail", "permanent_error", False),
        (429, 20429, "retry", None, False),
        (503, 20500, "retry", None, False),
        (401, 20003, "retry", None, False),
    ],
)
def test_twilio_errors(
    status: int, code: int, kind: str, reason: str | None, inactive: bool
) -> None:
    outcome = classify_sms(TwilioRestException(status, "https://api/x", msg="m", code=code))
    assert (outcome.kind, outcome.reason, outcome.address_inactive) == (kind, reason, inactive)


def test_twilio_network_error_is_transient() -> None:
    assert classify_sms(ConnectionResetError("reset")).kind == "retry"


@pytest.mark.parametrize(
    ("status", "code", "kind", "reason", "inactive"),
    [
        (400, "OptedOut", "fail", "unsubscribed", True),
        (429, "Throttled", "retry", None, False),
        (400, "Throttling", "retry", None, False),
        (500, "InternalError", "retry", None, False),
        (403, "AuthorizationError", "retry", None, False),
        (403, "SignatureDoesNotMatch", "retry", None, False),
        (400, "InvalidParameter", "fail", "invalid_address", False),
        (400, "KMSDisabled", "fail", "permanent_error", False),
    ],
)
def test_sns_errors(status: int, code: str, kind: str, reason: str | None, inactive: bool) -> None:
    from postbell.workers.channels.sms.sns import classify as classify_sns

    message = "Invalid parameter: PhoneNumber Reason: x" if code == "InvalidParameter" else "m"
    body = f"<ErrorResponse><Error><Type>Sender</Type><Code>{code}</Code><Message>{message}</Message></Error></ErrorResponse>"
    outcome = classify_sns(status, {}, body)
    assert (outcome.kind, outcome.reason, outcome.address_inactive) == (kind, reason, inactive)
    assert code in (outcome.error or "")


@pytest.mark.parametrize(
    ("code", "kind", "reason", "inactive"),
    [
        (63016, "fail", "template_required", False),
        (21656, "fail", "template_rejected", False),
        (63028, "fail", "template_rejected", False),
        (63003, "fail", "invalid_address", False),
        (63018, "retry", None, False),
        (21610, "fail", "unsubscribed", True),
        (21211, "fail", "invalid_address", False),
    ],
)
def test_whatsapp_errors(code: int, kind: str, reason: str | None, inactive: bool) -> None:
    from postbell.workers.channels.whatsapp import classify_whatsapp

    outcome = classify_whatsapp(TwilioRestException(400, "https://api/x", msg="m", code=code))
    assert (outcome.kind, outcome.reason, outcome.address_inactive) == (kind, reason, inactive)


@pytest.mark.parametrize(
    ("status", "description", "kind", "reason", "inactive", "retry_after"),
    [
        (429, "Too Many Requests: retry after 7", "retry", None, False, 7.0),
        (403, "Forbidden: bot was blocked by the user", "fail", "unsubscribed", True, None),
        (403, "Forbidden: user is deactivated", "fail", "invalid_address", True, None),
        (403, "Forbidden: bot was kicked from the group chat", "fail", "unsubscribed", True, None),
        (
            403,
            "Forbidden: bot can't initiate conversation with a user",
            "fail",
            "permanent_error",
            False,
            None,
        ),
        (400, "Bad Request: chat not found", "fail", "invalid_address", False, None),
        (400, "Bad Request: can't parse entities: x", "fail", "invalid_content", False, None),
        (401, "Unauthorized", "retry", None, False, None),
        (502, "Bad Gateway", "retry", None, False, None),
    ],
)
def test_telegram_answers(
    status: int,
    description: str,
    kind: str,
    reason: str | None,
    inactive: bool,
    retry_after: float | None,
) -> None:
    from postbell.workers.channels.telegram import classify as classify_telegram

    answer = {"ok": False, "error_code": status, "description": description}
    if retry_after is not None:
        answer["parameters"] = {"retry_after": int(retry_after)}
    outcome = classify_telegram(status, answer)
    assert (outcome.kind, outcome.reason, outcome.address_inactive, outcome.retry_after) == (
        kind,
        reason,
        inactive,
        retry_after,
    )


async def test_telegram_connection_errors_never_carry_the_token() -> None:
    """The bot token is in the URL's path: a failed connection's error text hides it."""
    from postbell.app.core.settings import Settings
    from postbell.workers.channels.base import Delivery, Recipient
    from postbell.workers.channels.registry import REGISTRY
    from tests.peers.net import free_port

    token = "123456789:AAEhBOweik6ad9r_QXMENQjcrGbqCr4K-ra"
    settings = Settings.from_env(
        {"TELEGRAM_BOT_TOKEN": token, "TELEGRAM_API_URL": f"http://127.0.0.1:{free_port()}"}
    )
    channel = REGISTRY["TELEGRAM"].from_settings(settings)
    assert channel is not None and token not in repr(channel)
    import uuid

    delivery = Delivery(
        id=1,
        attempts=0,
        notification_id=uuid.uuid4(),
        recipient=Recipient(external_id="r", telegram_chat_id="42"),
        body="b",
    )
    try:
        (outcome,) = await channel.send([delivery])
    finally:
        await channel.close()
    assert outcome.kind == "retry" and outcome.error and token not in outcome.error


def test_teams_reports_inside_a_200_are_classified() -> None:
    """Office 365 connectors answer 200 with "returned HTTP error 429" inside: retried."""
    from postbell.app.core.settings import Settings
    from postbell.workers.channels.teams import TeamsChannel

    channel = TeamsChannel(Settings.from_env({}))
    inner = "Microsoft Teams endpoint returned HTTP error 429 with ContextId x"
    assert channel.outcome(200, {}, inner).kind == "retry"
    assert channel.outcome(200, {}, "1").kind == "sent"
    assert channel.outcome(202, {}, "").kind == "sent"
    assert channel.outcome(400, {}, "bad card").kind == "fail"


def test_apprise_urls_are_masked_and_scrubbed() -> None:
    """Answers show an Apprise URL's scheme only; error texts lose every piece of it."""
    from postbell.app.core import apprise_urls

    url = "tgram://123456789:AAEhBOweik6ad9r/-100987654321"
    assert apprise_urls.mask(url) == "tgram://***"
    assert apprise_urls.mask("no scheme") == "***"
    text = "failed for 123456789 with AAEhBOweik6ad9r at -100987654321"
    assert apprise_urls.scrub(text, [url]) == "failed for *** with *** at ***"
