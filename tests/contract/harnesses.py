"""How each channel plugs its local peer into the one channel contract suite.

A harness knows its channel's settings (pointing at the peer), how to make a
recipient whose address reaches the peer, how to make the peer fail the next send
to that recipient (transiently or for good), and what the peer received for it.
Adding a channel = one harness here (and its peer in tests/peers/).
"""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Callable
from typing import Any, Literal

from postbell.workers.channels.base import CategoryOptions, Delivery, Recipient
from tests.peers.fake_fcm import FcmPeer
from tests.peers.fake_teams import TeamsPeer
from tests.peers.fake_telegram import TelegramPeer
from tests.peers.fake_twilio import TwilioPeer
from tests.peers.sendgrid import SendGridPeer
from tests.peers.ses import SesPeer
from tests.peers.smtp import SmtpPeer
from tests.peers.sns_sms import SnsSmsPeer
from tests.peers.webhooks import WebhookReceiver

Failure = Literal["transient", "permanent"]
_serial = itertools.count(1)


def _next() -> int:
    return next(_serial)


@dataclasses.dataclass
class Harness:
    """One channel (one provider of it) against its peer."""

    id: str
    channel: str
    env: Callable[[], dict[str, str]]
    recipient: Callable[[], Recipient]
    without_address: Callable[[], Recipient]
    #: make the peer fail the next send to this recipient
    fail_next: Callable[[Recipient, Failure], None]
    #: the message texts the peer accepted for this recipient, in order
    received: Callable[[Recipient], list[str]]
    #: reason a permanent failure is recorded with
    permanent_reason: str = "permanent_error"
    no_address_reason: str = "no_address"
    #: what routing adds to a delivery beyond its recipient (APPRISE: the category's URLs)
    prepare: Callable[[Delivery], Delivery] = lambda d: d


def smtp(peer: SmtpPeer) -> Harness:
    def recipient() -> Recipient:
        n = _next()
        return Recipient(external_id=f"c-{n}", email=f"contract-{n}@example.org", name="Ada")

    def fail_next(r: Recipient, kind: Failure) -> None:
        assert r.email
        reply = "451 4.3.0 try again later" if kind == "transient" else "554 5.7.1 rejected"
        peer.fail_next(r.email, reply)

    def received(r: Recipient) -> list[str]:
        assert r.email
        return [m.message.get_body(("plain",)).get_content() for m in peer.to(r.email)]  # type: ignore[union-attr]

    return Harness(
        "EMAIL/smtp",
        "EMAIL",
        peer.env,
        recipient,
        lambda: Recipient(external_id=f"c-{_next()}"),
        fail_next,
        received,
    )


def _email_api(peer: SendGridPeer | SesPeer, name: str, permanent: Any) -> Harness:
    def recipient() -> Recipient:
        n = _next()
        return Recipient(external_id=f"c-{n}", email=f"contract-{name}-{n}@example.org")

    def fail_next(r: Recipient, kind: Failure) -> None:
        assert r.email
        peer.script(r.email, 503 if kind == "transient" else permanent)

    def received(r: Recipient) -> list[str]:
        assert r.email
        return [str(m.text) for m in peer.messages_to(r.email)]

    return Harness(
        f"EMAIL/{name}",
        "EMAIL",
        peer.env,
        recipient,
        lambda: Recipient(external_id=f"c-{_next()}"),
        fail_next,
        received,
    )


def sendgrid(peer: SendGridPeer) -> Harness:
    return _email_api(peer, "sendgrid", 400)


def ses(peer: SesPeer) -> Harness:
    return _email_api(peer, "ses", "MessageRejected")


def push(peer: FcmPeer) -> Harness:
    def recipient() -> Recipient:
        token = f"contract-token-{_next()}"
        return Recipient(external_id=token, devices=({"token": token, "platform": "android"},))

    def token(r: Recipient) -> str:
        return r.devices[0]["token"]

    def fail_next(r: Recipient, kind: Failure) -> None:
        # 429: firebase-admin retries 500/503 itself (and would hide them here)
        peer.script(token(r), ["QUOTA_EXCEEDED" if kind == "transient" else "INVALID_TOKEN"])

    def received(r: Recipient) -> list[str]:
        return [m["notification"]["body"] for m in peer.messages_for(token(r))]

    return Harness(
        "PUSH/fcm",
        "PUSH",
        peer.env,
        recipient,
        lambda: Recipient(external_id=f"c-{_next()}"),
        fail_next,
        received,
        permanent_reason="unregistered",  # its one device refused: disabled for good
        no_address_reason="no_device",
    )


def sms(peer: TwilioPeer) -> Harness:
    def recipient() -> Recipient:
        return Recipient(external_id=f"c-{_next()}", phone=f"+1202555{_next():04d}")

    def fail_next(r: Recipient, kind: Failure) -> None:
        assert r.phone
        peer.script(r.phone, [503 if kind == "transient" else 21211])

    def received(r: Recipient) -> list[str]:
        assert r.phone
        return [m["Body"] for m in peer.to(r.phone)]

    return Harness(
        "SMS/twilio",
        "SMS",
        peer.env,
        recipient,
        lambda: Recipient(external_id=f"c-{_next()}"),
        fail_next,
        received,
        permanent_reason="invalid_address",
    )


def _hook(peer: WebhookReceiver, channel: str, field: str, text: Callable[[Any], str]) -> Harness:
    def recipient() -> Recipient:
        url = peer.url_for(f"/contract/{channel.lower()}/{_next()}")
        return Recipient(external_id=f"c-{_next()}", **{field: url})

    def path(r: Recipient) -> str:
        return str(getattr(r, field)).removeprefix(peer.url)

    def fail_next(r: Recipient, kind: Failure) -> None:
        peer.script(path(r), [503 if kind == "transient" else 404])

    def received(r: Recipient) -> list[str]:
        # the receiver records refused requests too: only those it answered 2xx count
        return [text(body) for body in peer.accepted_json(path(r))]

    return Harness(
        f"{channel}/http",
        channel,
        lambda: {"WEBHOOK_SIGNING_SECRET": "contract-secret"},
        recipient,
        lambda: Recipient(external_id=f"c-{_next()}"),
        fail_next,
        received,
    )


def webhook(peer: WebhookReceiver) -> Harness:
    return _hook(peer, "WEBHOOK", "webhook_url", lambda body: body["body"])


def slack(peer: WebhookReceiver) -> Harness:
    return _hook(peer, "SLACK", "slack_webhook_url", lambda body: body["text"])


def discord(peer: WebhookReceiver) -> Harness:
    return _hook(peer, "DISCORD", "discord_webhook_url", lambda body: body["content"])


def sns(peer: SnsSmsPeer) -> Harness:
    def recipient() -> Recipient:
        return Recipient(external_id=f"c-{_next()}", phone=f"+4420790{_next():05d}")

    def fail_next(r: Recipient, kind: Failure) -> None:
        assert r.phone
        peer.script(r.phone, "Throttled" if kind == "transient" else "InvalidParameter")

    def received(r: Recipient) -> list[str]:
        assert r.phone
        return [m.message for m in peer.to(r.phone)]

    return Harness(
        "SMS/sns",
        "SMS",
        peer.env,
        recipient,
        lambda: Recipient(external_id=f"c-{_next()}"),
        fail_next,
        received,
        permanent_reason="invalid_address",
    )


def whatsapp(peer: TwilioPeer) -> Harness:
    def recipient() -> Recipient:
        number = f"+5511955{_next():05d}"
        peer.open_session(number)
        return Recipient(external_id=f"c-{_next()}", whatsapp=number)

    def fail_next(r: Recipient, kind: Failure) -> None:
        peer.script(f"whatsapp:{r.whatsapp}", [503 if kind == "transient" else 63003])

    def received(r: Recipient) -> list[str]:
        return [m["Body"] for m in peer.to(f"whatsapp:{r.whatsapp}")]

    return Harness(
        "WHATSAPP/twilio",
        "WHATSAPP",
        peer.env,
        recipient,
        lambda: Recipient(external_id=f"c-{_next()}", phone="+15005550009"),
        fail_next,
        received,
        permanent_reason="invalid_address",
    )


def telegram(peer: TelegramPeer) -> Harness:
    def recipient() -> Recipient:
        return Recipient(
            external_id=f"c-{_next()}", telegram_chat_id=peer.chat(str(7_000_000 + _next()))
        )

    def fail_next(r: Recipient, kind: Failure) -> None:
        assert r.telegram_chat_id
        peer.script(r.telegram_chat_id, 500 if kind == "transient" else 403)

    def received(r: Recipient) -> list[str]:
        assert r.telegram_chat_id
        return [m.visible for m in peer.to(r.telegram_chat_id)]

    return Harness(
        "TELEGRAM/bot-api",
        "TELEGRAM",
        peer.env,
        recipient,
        lambda: Recipient(external_id=f"c-{_next()}"),
        fail_next,
        received,
        permanent_reason="unsubscribed",  # the member blocked the bot
    )


def teams(peer: TeamsPeer) -> Harness:
    def recipient() -> Recipient:
        return Recipient(
            external_id=f"c-{_next()}", teams_webhook_url=peer.url_for(f"/contract/teams/{_next()}")
        )

    def path(r: Recipient) -> str:
        return str(r.teams_webhook_url).removeprefix(peer.url)

    def fail_next(r: Recipient, kind: Failure) -> None:
        peer.script(path(r), 503 if kind == "transient" else 404)

    def received(r: Recipient) -> list[str]:
        return [card["body"][-1]["text"] for card in peer.cards_at(path(r))]

    return Harness(
        "TEAMS/webhook",
        "TEAMS",
        dict,
        recipient,
        lambda: Recipient(external_id=f"c-{_next()}"),
        fail_next,
        received,
    )


def apprise(peer: WebhookReceiver) -> Harness:
    """Apprise's json:// service against the webhook receiver: the URLs are the
    category's, so ``prepare`` puts the recipient's path in the delivery's options."""
    paths: dict[str, str] = {}

    def recipient() -> Recipient:
        r = Recipient(external_id=f"c-apprise-{_next()}")
        paths[r.external_id] = f"/contract/apprise/{_next()}"
        return r

    def prepare(d: Delivery) -> Delivery:
        path = paths.get(d.recipient.external_id)
        if path is None:
            return d
        url = f"json://127.0.0.1:{peer.port}{path}"
        return dataclasses.replace(d, category_options=CategoryOptions(apprise_urls=(url,)))

    def fail_next(r: Recipient, kind: Failure) -> None:
        peer.script(paths[r.external_id], [503 if kind == "transient" else 404])

    def received(r: Recipient) -> list[str]:
        return [body["message"] for body in peer.accepted_json(paths[r.external_id])]

    return Harness(
        "APPRISE/json",
        "APPRISE",
        dict,
        recipient,
        lambda: Recipient(external_id=f"c-{_next()}"),
        fail_next,
        received,
        prepare=prepare,
    )
