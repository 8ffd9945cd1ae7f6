"""The channel contract: every channel plugin, against its own local peer, keeps the
same promises (River runs one driver suite against every driver; this is that).

* a delivery that reaches the provider is ``sent`` (with the provider's id when it
  gives one), and the provider got exactly that message;
* a transient provider error is ``retry``, a permanent one ``fail`` (dead at once);
* a delivery without the channel's address is ``skip`` with ``no_address``
  (``no_device`` for PUSH), and nothing is sent;
* a batch with mixed outcomes answers one outcome per delivery, in order, and the
  failures in it never stop, repeat or reorder the others' sends.

The channel is built exactly as a worker builds it (``REGISTRY[...].from_settings``)
and driven through the ``Channel`` protocol: no database, no routing.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Callable

import pytest

from postbell.app.core.channels import CHANNELS
from postbell.workers.channels.base import Channel, Delivery, Recipient
from postbell.workers.channels.registry import REGISTRY
from tests.conftest import make_settings
from tests.contract import harnesses
from tests.contract.harnesses import Harness

#: Channels whose sends reach a provider; IN_APP is written by routing itself.
PROVIDER_CHANNELS = [c for c in CHANNELS if c != "IN_APP"]

HARNESSES: dict[str, Callable[[pytest.FixtureRequest], Harness]] = {
    "EMAIL/smtp": lambda r: harnesses.smtp(r.getfixturevalue("smtp")),
    "EMAIL/sendgrid": lambda r: harnesses.sendgrid(r.getfixturevalue("sendgrid")),
    "EMAIL/ses": lambda r: harnesses.ses(r.getfixturevalue("ses")),
    "PUSH/fcm": lambda r: harnesses.push(r.getfixturevalue("fcm")),
    "SMS/twilio": lambda r: harnesses.sms(r.getfixturevalue("twilio")),
    "WEBHOOK/http": lambda r: harnesses.webhook(r.getfixturevalue("receiver")),
    "SLACK/http": lambda r: harnesses.slack(r.getfixturevalue("receiver")),
    "DISCORD/http": lambda r: harnesses.discord(r.getfixturevalue("receiver")),
    "SMS/sns": lambda r: harnesses.sns(r.getfixturevalue("sns_sms")),
    "WHATSAPP/twilio": lambda r: harnesses.whatsapp(r.getfixturevalue("twilio")),
    "TELEGRAM/bot-api": lambda r: harnesses.telegram(r.getfixturevalue("telegram")),
    "TEAMS/webhook": lambda r: harnesses.teams(r.getfixturevalue("teams")),
    "APPRISE/json": lambda r: harnesses.apprise(r.getfixturevalue("receiver")),
}


def test_every_provider_channel_has_a_harness() -> None:
    """A new channel cannot land without plugging its peer into this suite."""
    assert sorted({h.split("/")[0] for h in HARNESSES}) == sorted(PROVIDER_CHANNELS)


@pytest.fixture(params=sorted(HARNESSES))
def harness(request: pytest.FixtureRequest) -> Harness:
    return HARNESSES[request.param](request)


@pytest.fixture
async def channel(harness: Harness) -> AsyncIterator[Channel]:
    settings = make_settings(
        "postgresql://contract@127.0.0.1/unused",
        POSTBELL_WEBHOOK_ALLOW_PRIVATE="1",
        **harness.env(),
    )
    built = REGISTRY[harness.channel].from_settings(settings)  # type: ignore[index]
    assert built is not None, f"{harness.id}: not configured by its harness's settings"
    try:
        yield built
    finally:
        await built.close()


def delivery(harness: Harness, recipient: Recipient, body: str) -> Delivery:
    return harness.prepare(make_delivery(recipient, body))


def make_delivery(recipient: Recipient, body: str) -> Delivery:
    return Delivery(
        id=int(uuid.uuid4().int % 2**62),
        attempts=0,
        notification_id=uuid.uuid4(),
        recipient=recipient,
        title="Contract",
        body=body,
        action_url="https://example.org/a",
        category=None,
        priority="normal",
    )


def text(tag: str) -> str:
    return f"contract {tag} {uuid.uuid4().hex[:8]}"


async def test_send_ok(harness: Harness, channel: Channel) -> None:
    r, body = harness.recipient(), text("ok")
    (outcome,) = await channel.send([delivery(harness, r, body)])
    assert (outcome.kind, outcome.error) == ("sent", None)
    assert [body in got for got in harness.received(r)] == [True]


async def test_transient_error_is_retry(harness: Harness, channel: Channel) -> None:
    r = harness.recipient()
    harness.fail_next(r, "transient")
    (outcome,) = await channel.send([delivery(harness, r, text("transient"))])
    assert outcome.kind == "retry" and outcome.error
    assert harness.received(r) == []


async def test_permanent_error_is_fail(harness: Harness, channel: Channel) -> None:
    r = harness.recipient()
    harness.fail_next(r, "permanent")
    (outcome,) = await channel.send([delivery(harness, r, text("permanent"))])
    assert (outcome.kind, outcome.reason) == ("fail", harness.permanent_reason)
    assert outcome.error
    assert harness.received(r) == []


async def test_missing_address_is_skipped(harness: Harness, channel: Channel) -> None:
    (outcome,) = await channel.send([delivery(harness, harness.without_address(), text("nowhere"))])
    assert (outcome.kind, outcome.reason) == ("skip", harness.no_address_reason)


async def test_mixed_batch_answers_each_delivery_in_order(
    harness: Harness, channel: Channel
) -> None:
    recipients = [harness.recipient() for _ in range(6)]
    harness.fail_next(recipients[1], "transient")
    harness.fail_next(recipients[3], "permanent")
    missing = harness.without_address()
    bodies = [text(f"mixed-{i}") for i in range(7)]
    order = [*recipients[:4], missing, *recipients[4:]]
    batch = [delivery(harness, r, b) for r, b in zip(order, bodies, strict=True)]
    outcomes = await channel.send(batch)
    assert [o.kind for o in outcomes] == ["sent", "retry", "sent", "fail", "skip", "sent", "sent"]
    for index, r in [
        (0, recipients[0]),
        (2, recipients[2]),
        (5, recipients[4]),
        (6, recipients[5]),
    ]:
        assert [bodies[index] in got for got in harness.received(r)] == [True]
    assert harness.received(recipients[1]) == harness.received(recipients[3]) == []


async def test_a_failed_delivery_sends_on_retry(harness: Harness, channel: Channel) -> None:
    """A transient failure leaves no trace that stops the next attempt."""
    r, body = harness.recipient(), text("again")
    harness.fail_next(r, "transient")
    (first,) = await channel.send([delivery(harness, r, body)])
    (second,) = await channel.send([delivery(harness, r, body)])
    assert (first.kind, second.kind) == ("retry", "sent")
    assert [body in got for got in harness.received(r)] == [True]
