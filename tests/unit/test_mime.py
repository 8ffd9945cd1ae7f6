"""The lean MIME writer's output parses back, without defects, into what was meant."""

from __future__ import annotations

import email
import email.policy
import uuid

from postbell.workers.channels.base import Delivery, Recipient
from postbell.workers.channels.email import EmailChannel, Unsubscribe
from postbell.workers.channels.email.mime import content_of


def parse(raw: bytes) -> email.message.EmailMessage:
    message = email.message_from_bytes(raw, policy=email.policy.default)
    assert isinstance(message, email.message.EmailMessage)
    return message


def delivery(**over: object) -> Delivery:
    base: dict[str, object] = {
        "id": 42,
        "attempts": 0,
        "notification_id": uuid.UUID("12345678-1234-5678-1234-567812345678"),
        "recipient": Recipient(external_id="u1", email="zoe@example.org", name="Zoë Ünal"),
        "body": "Grüße! Line one\n\nA line with = signs and a very long sentence " + "x" * 120,
        "title": "Événement — ce soir à 19 h, ne manquez pas la rencontre de la communauté locale",
        "action_url": "https://example.org/e/1?a=1&b=2",
    }
    base.update(over)
    return Delivery(**base)  # type: ignore[arg-type]


class _NoTransport:
    async def send(self, messages: object) -> list[object]:
        return []

    async def close(self) -> None:
        return None


def test_round_trip_with_non_ascii_everywhere() -> None:
    channel = EmailChannel(_NoTransport(), "Communauté <notify@postbell.test>")  # type: ignore[arg-type]
    d = delivery()
    message = parse(channel.build(d).as_bytes())
    assert message.defects == []
    assert message["Subject"] == d.title
    assert message["To"] == "Zoë Ünal <zoe@example.org>"
    assert message["From"] == "Communauté <notify@postbell.test>"
    assert message["Message-ID"] == "<42.12345678123456781234567812345678@postbell.test>"
    assert message["X-Postbell-Delivery"] == "42"
    text = message.get_body(preferencelist=("plain",))
    html = message.get_body(preferencelist=("html",))
    assert text is not None and html is not None
    # Line breaks travel as CRLF (the canonical form); a reader normalises them.
    assert (
        text.get_content().replace("\r\n", "\n").rstrip()
        == d.body + "\n\nhttps://example.org/e/1?a=1&b=2"
    )
    assert "<h1>Événement" in html.get_content()
    assert 'href="https://example.org/e/1?a=1&amp;b=2"' in html.get_content()
    assert all(len(line) <= 998 for line in channel.build(d).as_bytes().split(b"\r\n"))


def test_recipients_of_one_notification_share_the_rendered_content() -> None:
    channel = EmailChannel(_NoTransport(), "n@postbell.test")  # type: ignore[arg-type]
    shared: dict[object, object] = {}
    first = channel.build(delivery(id=1), shared)  # type: ignore[arg-type]
    second = channel.build(
        delivery(id=2, recipient=Recipient(external_id="u2", email="b@example.org")), shared
    )  # type: ignore[arg-type]
    assert first.content is second.content
    assert parse(second.as_bytes())["To"] == "b@example.org"


def test_list_unsubscribe_only_for_optional_categories() -> None:
    channel = EmailChannel(
        _NoTransport(), "n@postbell.test", Unsubscribe("https://pb.example.org", "s3")
    )  # type: ignore[arg-type]
    optional = parse(channel.build(delivery(category="events")).as_bytes())
    assert optional["List-Unsubscribe"].startswith("<https://pb.example.org/api/unsubscribe?token=")
    assert optional["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    required = parse(
        channel.build(delivery(category="security", category_required=True)).as_bytes()
    )
    assert required["List-Unsubscribe"] is None
    assert parse(channel.build(delivery(category=None)).as_bytes())["List-Unsubscribe"] is None


def test_body_that_looks_like_a_boundary_cannot_break_the_message() -> None:
    d = delivery(body="--=_pb_12345678123456781234567812345678\nnot a boundary")
    content = content_of(d)
    assert content.boundary not in content.text_qp


def test_message_ids_are_stable_per_delivery_and_unique_across_installations() -> None:
    """The same delivery (a retry) gets the same Message-ID; the same delivery id in
    another installation (another notification uuid) gets another one."""
    import uuid

    from postbell.workers.channels.email import message_id

    recipient = Recipient(external_id="r", email="r@example.org")
    first = Delivery(id=7, attempts=0, notification_id=uuid.uuid4(), recipient=recipient, body="b")
    retry = Delivery(
        id=7, attempts=3, notification_id=first.notification_id, recipient=recipient, body="b"
    )
    elsewhere = Delivery(
        id=7, attempts=0, notification_id=uuid.uuid4(), recipient=recipient, body="b"
    )
    assert message_id(first, "example.org") == message_id(retry, "example.org")
    assert message_id(first, "example.org") != message_id(elsewhere, "example.org")
