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
