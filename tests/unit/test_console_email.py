"""The console email provider prints the rendered email in dev, and only there."""

from __future__ import annotations

import io
import uuid

from postbell.app.core.settings import Settings
from postbell.workers.channels.base import Delivery, Recipient
from postbell.workers.channels.email import EmailChannel
from postbell.workers.channels.email.console import ConsoleTransport


def _email() -> object:
    channel = EmailChannel(ConsoleTransport(), "Postbell <n@postbell.test>")
    delivery = Delivery(
        id=1,
        attempts=0,
        notification_id=uuid.uuid4(),
        recipient=Recipient("u1", email="jorg@example.org", name="Jörg"),
        body="Hallo Jörg",
        title="Einladung für Jörg",
        rendered={"subject": "Einladung für Jörg", "html": "<p>Hallo</p>", "text": "Hallo Jörg"},
        content_key=("k", 1),
    )
    return channel.build(delivery)


async def test_prints_subject_and_text_when_shown() -> None:
    out = io.StringIO()
    await ConsoleTransport(show=True, out=out).send([_email()])  # type: ignore[list-item]
    text = out.getvalue()
    assert "Subject: Einladung für Jörg" in text and "Hallo Jörg" in text
    assert "<p>" not in text


async def test_prints_nothing_otherwise() -> None:
    out = io.StringIO()
    await ConsoleTransport(show=False, out=out).send([_email()])  # type: ignore[list-item]
    assert out.getvalue() == ""


def test_shown_in_dev_only() -> None:
    base = {"DATABASE_URL": "postgresql://x@127.0.0.1/x", "POSTBELL_EMAIL_PROVIDER": "console"}
    dev = EmailChannel.from_settings(Settings.from_env(base, dev=True))
    prod = EmailChannel.from_settings(Settings.from_env(base))
    assert dev is not None and prod is not None
    assert dev.transport.show is True  # type: ignore[attr-defined]
    assert prod.transport.show is False  # type: ignore[attr-defined]
