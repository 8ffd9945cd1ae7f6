"""EMAIL: HTML + plain-text messages through a provider chosen by POSTBELL_EMAIL_PROVIDER.

* ``smtp``: aiosmtplib over a small set of reused connections (STARTTLS, AUTH);
  works for any relay, Gmail's SMTP and Amazon SES's SMTP interface (``smtp.py``).
* ``sendgrid`` and ``ses``: their HTTP APIs (``sendgrid.py``, ``ses.py``).
* ``console``: the ``dev`` default when no SMTP is configured (``console.py``).

The channel builds one message per delivery (``mime.py``) and hands the batch to
its transport. Every message carries ``Message-ID:
<delivery-id.notification-id@sender-domain>`` (``message_id``): stable across retries,
so a receiver can drop the duplicate an at-least-once resend may cause.
"""

from __future__ import annotations

import dataclasses
import email.utils
import html
import re
from collections.abc import Sequence
from typing import ClassVar
from urllib.parse import quote

from postbell.app.core.settings import Settings
from postbell.app.core.tokens import click_token, open_token, unsubscribe_token
from postbell.workers.channels.base import Channel, Delivery, Outcome, invalid_content
from postbell.workers.channels.email import mime
from postbell.workers.channels.email.console import ConsoleTransport
from postbell.workers.channels.email.mime import OutgoingEmail
from postbell.workers.channels.email.sendgrid import SendGridTransport
from postbell.workers.channels.email.ses import SesTransport
from postbell.workers.channels.email.smtp import SmtpTransport
from postbell.workers.channels.email.transport import EmailTransport


def message_id(delivery: Delivery, domain: str) -> str:
    """``<delivery-id.notification-uuid@sender-domain>``: the same on every retry of a
    delivery (receivers drop an at-least-once resend by it), and unique across
    installations (a staging and a production install sending from one domain, or a
    database rebuilt from scratch, never reuse one: the notification id is random)."""
    return f"<{delivery.id}.{delivery.notification_id.hex}@{domain}>"


class Unsubscribe:
    """RFC 8058 one-click unsubscribe links: POST /api/unsubscribe?token=... opts the
    recipient out of the category's EMAIL (app/recipients/unsubscribe.py)."""

    def __init__(self, public_url: str, secret: str) -> None:
        self.base = public_url.rstrip("/") + "/api/unsubscribe?token="
        self.secret = secret

    def url(self, external_id: str, category: str) -> str:
        return self.base + quote(unsubscribe_token(self.secret, external_id, category))


_HREF_RE = re.compile(r'href="(https?://[^"]+)"', re.IGNORECASE)


class Tracking:
    """Opens and clicks of an experiment's emails (POSTBELL_TRACK_OPENS,
    POSTBELL_TRACK_CLICKS): every http(s) link of the HTML part goes through
    ``/r/{token}`` (which redirects only to the URL it signs), and a 1x1 image
    ``/o/{token}`` ends the body. Only deliveries of an experiment are tracked."""

    def __init__(self, public_url: str, secret: str, *, opens: bool, clicks: bool) -> None:
        self.base = public_url.rstrip("/")
        self.secret = secret
        self.opens = opens
        self.clicks = clicks

    def apply(self, delivery: Delivery, content: mime.Content) -> mime.Content:
        page = content.html
        if self.clicks:

            def link(match: re.Match[str]) -> str:
                url = html.unescape(match.group(1))
                token = click_token(self.secret, delivery.id, url)
                return f'href="{self.base}/r/{quote(token, safe=".")}"'

            page = _HREF_RE.sub(link, page)
        if self.opens:
            token = quote(open_token(self.secret, delivery.id), safe=".")
            pixel = f'<img src="{self.base}/o/{token}" width="1" height="1" alt="">'
            page = page.replace("</body>", pixel + "</body>") if "</body>" in page else page + pixel
        if page == content.html:
            return content
        return dataclasses.replace(content, html=page, html_qp=mime.quoted_printable(page))


class EmailChannel:
    name: ClassVar[str] = "EMAIL"
    address_field: ClassVar[str | None] = "email"
    inactive_field: ClassVar[str | None] = "email_inactive_at"

    def __init__(
        self,
        transport: EmailTransport,
        sender: str,
        unsubscribe: Unsubscribe | None = None,
        tracking: Tracking | None = None,
    ) -> None:
        self.tracking = tracking
        self.transport = transport
        self.sender = sender
        _, self.sender_address = email.utils.parseaddr(sender)
        self.domain = self.sender_address.rpartition("@")[2] or "postbell.localhost"
        self.unsubscribe = unsubscribe

    @classmethod
    def from_settings(cls, settings: Settings) -> Channel | None:
        transport: EmailTransport
        if settings.email_provider == "smtp" and settings.smtp is not None:
            transport = SmtpTransport(settings.smtp)
        elif settings.email_provider == "sendgrid" and settings.sendgrid is not None:
            transport = SendGridTransport(settings.sendgrid, timeout=settings.http_timeout)
        elif settings.email_provider == "ses" and settings.ses is not None:
            transport = SesTransport(settings.ses, timeout=settings.http_timeout)
        elif settings.email_provider == "console":
            transport = ConsoleTransport(show=settings.dev)
        else:
            return None
        unsubscribe = None
        if settings.public_url and settings.inbox_secrets:
            unsubscribe = Unsubscribe(settings.public_url, settings.inbox_secrets[0])
        tracking = None
        tracked = settings.track_opens or settings.track_clicks
        if tracked and settings.public_url and settings.inbox_secrets:
            tracking = Tracking(
                settings.public_url,
                settings.inbox_secrets[0],
                opens=settings.track_opens,
                clicks=settings.track_clicks,
            )
        return cls(transport, settings.email_from, unsubscribe, tracking)

    async def send(self, deliveries: Sequence[Delivery]) -> list[Outcome]:
        shared: dict[object, mime.Content] = {}
        outcomes: list[Outcome | None] = [None] * len(deliveries)
        messages: list[OutgoingEmail] = []
        for index, delivery in enumerate(deliveries):
            if not delivery.recipient.email:
                outcomes[index] = Outcome.skip("no_address")
                continue
            try:
                messages.append(self.build(delivery, shared))
            except Exception as exc:  # this message only: the batch goes on without it
                outcomes[index] = invalid_content("email", exc)
        sent = iter(await self.transport.send(messages) if messages else [])
        return [o if o is not None else next(sent) for o in outcomes]

    async def close(self) -> None:
        await self.transport.close()

    def build(
        self, delivery: Delivery, shared: dict[object, mime.Content] | None = None
    ) -> OutgoingEmail:
        """The email for one delivery; ``shared`` caches what a notification's
        recipients have in common."""
        recipient = delivery.recipient
        assert recipient.email, "send() skips deliveries without an address"
        cache = shared if shared is not None else {}
        # a notification's recipients share its parts; an experiment's, their variant's
        shared_by = delivery.content_key or (delivery.notification_id, delivery.variant)
        content = cache.get(shared_by)
        if content is None:
            content = cache[shared_by] = mime.content_of(delivery)
        if self.tracking is not None and delivery.variant is not None:
            content = self.tracking.apply(delivery, content)  # this delivery's own links
        extra: tuple[tuple[str, str], ...] = ()
        if self.unsubscribe and delivery.category and not delivery.category_required:
            link = self.unsubscribe.url(recipient.external_id, delivery.category)
            extra = (
                ("List-Unsubscribe", f"<{link}>"),
                ("List-Unsubscribe-Post", "List-Unsubscribe=One-Click"),
            )
        if delivery.replay_id is not None:
            # the same Message-ID (the delivery's): a mail client shows the resend once
            extra += (("X-Postbell-Replay", str(delivery.replay_id)),)
        return OutgoingEmail(
            delivery_id=delivery.id,
            notification_id=str(delivery.notification_id),
            sender=self.sender,
            sender_address=self.sender_address,
            to_name=recipient.name,
            to_address=recipient.email,
            message_id=message_id(delivery, self.domain),
            content=content,
            extra_headers=extra,
        )
