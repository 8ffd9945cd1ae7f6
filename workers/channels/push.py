"""PUSH: Firebase Cloud Messaging through the official firebase-admin SDK.

One delivery goes to every active device of its recipient (Android, iOS, web), in
calls of at most 500 messages (``send_each_async``, the SDK's async variant, so the
event loop stays free; the one synchronous step, refreshing the OAuth token, runs in
a thread). A token FCM calls unregistered or invalid is disabled and never used
again; the recipient's other devices still get the message. A delivery is ``sent``
when any of its devices got it.
"""

from __future__ import annotations

import asyncio
import dataclasses
import warnings
from collections.abc import Sequence
from typing import ClassVar

import firebase_admin
import structlog
from firebase_admin import credentials, exceptions, messaging

from postbell.app.core.settings import FcmSettings, Settings
from postbell.workers.channels.base import Channel, Delivery, Outcome, invalid_content
from postbell.workers.channels.http import retry_after_seconds

log = structlog.get_logger("postbell.push")

FCM_BATCH = 500  # send_each accepts at most 500 messages per call
_URL_PATH = "/v1/projects/{0}/messages:send"


@dataclasses.dataclass(frozen=True, slots=True)
class TokenResult:
    ok: bool
    name: str | None = None
    disable: bool = False  # the token is dead for good
    transient: bool = False
    error: str | None = None
    retry_after: float | None = None


def classify(exc: BaseException) -> TokenResult:
    """FCM's errors, sorted once: dead token, transient, or permanent for this message."""
    text = f"FCM {type(exc).__name__}: {exc}"[:500]
    if isinstance(exc, (messaging.UnregisteredError, messaging.SenderIdMismatchError)):
        return TokenResult(ok=False, disable=True, error=text)
    if isinstance(exc, exceptions.InvalidArgumentError):
        # INVALID_ARGUMENT is a malformed token or a malformed message; only the first
        # condemns the token.
        return TokenResult(ok=False, disable="registration token" in str(exc).lower(), error=text)
    if isinstance(exc, messaging.QuotaExceededError):
        response = getattr(exc, "http_response", None)
        headers = response.headers if response is not None else None
        return TokenResult(
            ok=False, transient=True, error=text, retry_after=retry_after_seconds(headers)
        )
    if isinstance(exc, exceptions.FirebaseError) and exc.code in (
        exceptions.NOT_FOUND,
        exceptions.FAILED_PRECONDITION,
        exceptions.OUT_OF_RANGE,
    ):
        return TokenResult(ok=False, error=text)
    # UNAVAILABLE, INTERNAL, DEADLINE_EXCEEDED, UNKNOWN, auth and network errors: our
    # side or theirs, not the recipient's. Retried.
    return TokenResult(ok=False, transient=True, error=text)


def build_message(delivery: Delivery, token: str, platform: str) -> messaging.Message:
    data = {
        "delivery_id": str(delivery.id),
        "notification_id": str(delivery.notification_id),
        "category": delivery.category or "",
        "action_url": delivery.action_url or "",
    }
    urgent = delivery.priority in ("high", "urgent")
    notification = messaging.Notification(
        title=delivery.title or delivery.subject, body=delivery.body
    )
    with warnings.catch_warnings():
        # firebase-admin 7.7 deprecates `token` for `fid` (Firebase installation ids);
        # devices register FCM registration tokens, which FCM v1 still takes as `token`.
        warnings.simplefilter("ignore", DeprecationWarning)
        message = messaging.Message(token=token, notification=notification, data=data)
    if platform == "android":
        message.android = messaging.AndroidConfig(priority="high" if urgent else "normal")
    elif platform == "ios":
        message.apns = messaging.APNSConfig(headers={"apns-priority": "10" if urgent else "5"})
    elif platform == "web" and delivery.action_url and delivery.action_url.startswith("https://"):
        message.webpush = messaging.WebpushConfig(
            fcm_options=messaging.WebpushFCMOptions(link=delivery.action_url)
        )
    return message


def summarize(results: Sequence[TokenResult], tokens: Sequence[str]) -> Outcome:
    """One delivery's outcome from the results of its devices."""
    if not results:
        return Outcome.skip("no_device")
    dead = tuple(t for t, r in zip(tokens, results, strict=True) if r.disable)
    if any(r.ok for r in results):
        name = next(r.name for r in results if r.ok)
        return Outcome("sent", provider_message_id=name, disable_tokens=dead)
    transient = [r for r in results if r.transient]
    if transient:
        waits = [r.retry_after for r in transient if r.retry_after is not None]
        outcome = Outcome.retry(
            transient[0].error or "FCM unavailable", retry_after=max(waits) if waits else None
        )
        return dataclasses.replace(outcome, disable_tokens=dead)
    reason = "unregistered" if len(dead) == len(results) else "permanent_error"
    error = next((r.error for r in results if r.error), "FCM refused the message")
    return dataclasses.replace(Outcome.fail(error, reason), disable_tokens=dead)


class PushChannel:
    name: ClassVar[str] = "PUSH"
    address_field: ClassVar[str | None] = "@devices"  # an active device, see delivery_skip_reason()
    inactive_field: ClassVar[str | None] = None

    def __init__(self, fcm: FcmSettings, timeout: float) -> None:
        if fcm.api_url:
            # The FCM v1 URL is a class attribute of the SDK, not a public option: this
            # is the one place postbell points it elsewhere (FCM_API_URL, for emulators
            # and tests).
            messaging._MessagingService.FCM_URL = fcm.api_url + _URL_PATH
        self.credential = credentials.Certificate(dict(fcm.credentials))
        self.app = firebase_admin.initialize_app(
            self.credential,
            options={"projectId": fcm.project_id, "httpTimeout": timeout},
            name=f"postbell-push-{id(self)}",
        )

    @classmethod
    def from_settings(cls, settings: Settings) -> Channel | None:
        if settings.fcm is None:
            return None
        return cls(settings.fcm, settings.http_timeout)

    async def _fresh_token(self) -> None:
        google_credential = self.credential.get_credential()
        if not google_credential.valid:
            import google.auth.transport.requests

            await asyncio.to_thread(
                google_credential.refresh, google.auth.transport.requests.Request()
            )

    async def send(self, deliveries: Sequence[Delivery]) -> list[Outcome]:
        pairs: list[tuple[int, str, messaging.Message]] = []
        broken: dict[int, Outcome] = {}
        for index, delivery in enumerate(deliveries):
            try:
                built = [
                    (index, d["token"], build_message(delivery, d["token"], d["platform"]))
                    for d in delivery.recipient.devices
                ]
            except Exception as exc:  # this delivery only: the batch goes on without it
                broken[index] = invalid_content("FCM", exc)
                continue
            pairs.extend(built)
        results: list[TokenResult] = []
        if pairs:
            try:
                await self._fresh_token()
            except Exception as exc:
                failure = TokenResult(
                    ok=False, transient=True, error=f"FCM auth: {type(exc).__name__}: {exc}"
                )
                results = [failure] * len(pairs)
            else:
                for start in range(0, len(pairs), FCM_BATCH):
                    chunk = [m for _, _, m in pairs[start : start + FCM_BATCH]]
                    results.extend(await self._send_chunk(chunk))
        per_delivery: list[list[TokenResult]] = [[] for _ in deliveries]
        per_tokens: list[list[str]] = [[] for _ in deliveries]
        for (index, token, _), result in zip(pairs, results, strict=True):
            per_delivery[index].append(result)
            per_tokens[index].append(token)
        return [
            broken.get(i) or summarize(r, t)
            for i, (r, t) in enumerate(zip(per_delivery, per_tokens, strict=True))
        ]

    async def _send_chunk(self, chunk: list[messaging.Message]) -> list[TokenResult]:
        try:
            batch = await messaging.send_each_async(chunk, app=self.app)
        except Exception as exc:
            failure = classify(exc)
            return [dataclasses.replace(failure, disable=False)] * len(chunk)
        return [
            TokenResult(ok=True, name=r.message_id) if r.success else classify(r.exception)
            for r in batch.responses
        ]

    async def close(self) -> None:
        # delete_app() closes the SDK's async HTTP client with asyncio.run(), which
        # cannot run inside this event loop: do it from a thread.
        try:
            await asyncio.to_thread(firebase_admin.delete_app, self.app)
        except Exception as exc:
            log.debug("fcm_close_failed", error=str(exc))
