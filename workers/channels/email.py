"""EMAIL: HTML + plain-text messages through a provider chosen by POSTBELL_EMAIL_PROVIDER.

* ``smtp``: aiosmtplib over a small set of reused connections (STARTTLS, AUTH);
  works for any relay, Gmail's SMTP and Amazon SES's SMTP interface.
* ``sendgrid`` and ``ses``: their HTTP APIs (workers/channels/email_http.py).
* ``console``: the ``dev`` default when no SMTP is configured; logs one line per
  message (ids and the recipient's domain, never the content) instead of sending.

Every message carries ``Message-ID: <delivery-id@sender-domain>``, stable across
retries, so a receiver can drop the duplicate an at-least-once resend may cause.
"""

from __future__ import annotations

import asyncio
import email.utils
import ssl
from collections.abc import Sequence
from typing import ClassVar, Protocol
from urllib.parse import quote

import aiosmtplib
import structlog

from postbell.app.api.recipients.unsubscribe import unsubscribe_token
from postbell.app.core.settings import Settings, SmtpSettings
from postbell.workers.channels import Channel, Delivery, Outcome, mime
from postbell.workers.channels.mime import OutgoingEmail

log = structlog.get_logger("postbell.email")


class Unsubscribe:
    """RFC 8058 one-click unsubscribe links: POST /api/unsubscribe?token=... opts the
    recipient out of the category's EMAIL (app/recipients/unsubscribe.py)."""

    def __init__(self, public_url: str, secret: str) -> None:
        self.base = public_url.rstrip("/") + "/api/unsubscribe?token="
        self.secret = secret

    def url(self, external_id: str, category: str) -> str:
        return self.base + quote(unsubscribe_token(self.secret, external_id, category))


# SMTP replies that say the mailbox does not exist or will never accept mail.
HARD_BOUNCE_CODES = frozenset({550, 551, 553})


class EmailTransport(Protocol):
    async def send(self, messages: Sequence[OutgoingEmail]) -> list[Outcome]: ...

    async def close(self) -> None: ...


class EmailChannel:
    name: ClassVar[str] = "EMAIL"
    address_field: ClassVar[str | None] = "email"
    inactive_field: ClassVar[str | None] = "email_inactive_at"

    def __init__(
        self, transport: EmailTransport, sender: str, unsubscribe: Unsubscribe | None = None
    ) -> None:
        self.transport = transport
        self.sender = sender
        _, self.sender_address = email.utils.parseaddr(sender)
        self.domain = self.sender_address.rpartition("@")[2] or "postbell.localhost"
        self.unsubscribe = unsubscribe

    @classmethod
    def from_settings(cls, settings: Settings) -> Channel | None:
        from postbell.workers.channels.email_http import SendGridTransport, SesTransport

        transport: EmailTransport
        if settings.email_provider == "smtp" and settings.smtp is not None:
            transport = SmtpTransport(settings.smtp)
        elif settings.email_provider == "sendgrid" and settings.sendgrid is not None:
            transport = SendGridTransport(settings.sendgrid, timeout=settings.http_timeout)
        elif settings.email_provider == "ses" and settings.ses is not None:
            transport = SesTransport(settings.ses, timeout=settings.http_timeout)
        elif settings.email_provider == "console":
            transport = ConsoleTransport()
        else:
            return None
        unsubscribe = None
        if settings.public_url and settings.inbox_secrets:
            unsubscribe = Unsubscribe(settings.public_url, settings.inbox_secrets[0])
        return cls(transport, settings.email_from, unsubscribe)

    async def send(self, deliveries: Sequence[Delivery]) -> list[Outcome]:
        shared: dict[object, mime.Content] = {}
        return await self.transport.send([self.build(d, shared) for d in deliveries])

    async def close(self) -> None:
        await self.transport.close()

    def build(
        self, delivery: Delivery, shared: dict[object, mime.Content] | None = None
    ) -> OutgoingEmail:
        """The email for one delivery; ``shared`` caches what a notification's
        recipients have in common."""
        recipient = delivery.recipient
        assert recipient.email, "the router skips recipients without an address"
        cache = shared if shared is not None else {}
        content = cache.get(delivery.notification_id)
        if content is None:
            content = cache[delivery.notification_id] = mime.content_of(delivery)
        extra: tuple[tuple[str, str], ...] = ()
        if self.unsubscribe and delivery.category and not delivery.category_required:
            link = self.unsubscribe.url(recipient.external_id, delivery.category)
            extra = (
                ("List-Unsubscribe", f"<{link}>"),
                ("List-Unsubscribe-Post", "List-Unsubscribe=One-Click"),
            )
        return OutgoingEmail(
            delivery_id=delivery.id,
            notification_id=str(delivery.notification_id),
            sender=self.sender,
            sender_address=self.sender_address,
            to_name=recipient.name,
            to_address=recipient.email,
            message_id=f"<{delivery.id}@{self.domain}>",
            content=content,
            extra_headers=extra,
        )


def classify_smtp_error(exc: BaseException) -> Outcome:
    """One place that decides whether an SMTP failure is worth retrying."""
    if isinstance(exc, aiosmtplib.SMTPRecipientsRefused) and exc.recipients:
        exc = exc.recipients[0]
    if isinstance(exc, aiosmtplib.SMTPAuthenticationError):
        # Our credentials, not the recipient's address: retry while the operator fixes them.
        return Outcome.retry(f"SMTP authentication failed ({exc.code})")
    if isinstance(exc, aiosmtplib.SMTPResponseException):
        text = f"SMTP {exc.code} {exc.message}".strip()
        if 400 <= exc.code < 500:
            return Outcome.retry(text)
        if isinstance(exc, aiosmtplib.SMTPRecipientRefused) and exc.code in HARD_BOUNCE_CODES:
            return Outcome.fail(text, "invalid_address", address_inactive=True)
        return Outcome.fail(text)
    if isinstance(exc, (aiosmtplib.SMTPException, OSError, asyncio.TimeoutError)):
        return Outcome.retry(f"SMTP connection: {type(exc).__name__}: {exc}")
    return Outcome.retry(f"SMTP: {type(exc).__name__}")


class SmtpTransport:
    """Sends over up to ``connections`` reused SMTP sessions, one message at a time each."""

    def __init__(
        self,
        smtp: SmtpSettings,
        *,
        connections: int = 8,
        tls_context: ssl.SSLContext | None = None,
    ) -> None:
        self.smtp = smtp
        self.connections = connections
        self.tls_context = tls_context or ssl.create_default_context(cafile=smtp.ca_file)
        self._idle: list[aiosmtplib.SMTP] = []

    def _client(self) -> aiosmtplib.SMTP:
        implicit_tls = self.smtp.port == 465
        return aiosmtplib.SMTP(
            hostname=self.smtp.host,
            port=self.smtp.port,
            username=self.smtp.username,
            password=self.smtp.password,
            use_tls=implicit_tls,
            start_tls=self.smtp.starttls and not implicit_tls,
            tls_context=self.tls_context,
            timeout=self.smtp.timeout,
        )

    async def send(self, messages: Sequence[OutgoingEmail]) -> list[Outcome]:
        outcomes: list[Outcome | None] = [None] * len(messages)
        lanes = min(self.connections, len(messages))
        date = email.utils.formatdate(usegmt=True)

        async def lane(start: int) -> None:
            client = self._idle.pop() if self._idle else self._client()
            broken: Outcome | None = None
            for index in range(start, len(messages), lanes):
                if broken is not None:  # the server is unreachable: don't wait on it again
                    outcomes[index] = broken
                    continue
                try:
                    if not client.is_connected:
                        await client.connect()
                    message = messages[index]
                    await client.sendmail(
                        message.sender_address, [message.to_address], message.as_bytes(date)
                    )
                    outcomes[index] = Outcome.sent(message.message_id)
                except Exception as exc:
                    outcome = classify_smtp_error(exc)
                    outcomes[index] = outcome
                    if not client.is_connected or isinstance(exc, (OSError, asyncio.TimeoutError)):
                        client.close()
                        if isinstance(
                            exc, (aiosmtplib.SMTPConnectError, OSError, asyncio.TimeoutError)
                        ):
                            broken = outcome
                    else:
                        await _reset(client)
            if client.is_connected and broken is None:
                self._idle.append(client)
            else:
                client.close()

        await asyncio.gather(*(lane(i) for i in range(lanes)))
        return [o if o is not None else Outcome.retry("not attempted") for o in outcomes]

    async def close(self) -> None:
        idle, self._idle = self._idle, []
        for client in idle:
            try:
                await client.quit()
            except Exception:
                client.close()


async def _reset(client: aiosmtplib.SMTP) -> None:
    """After a refused message, clear the transaction so the session can go on."""
    try:
        await client.rset()
    except Exception:
        client.close()


class ConsoleTransport:
    """Logs instead of sending (``POSTBELL_EMAIL_PROVIDER=console``): ids only, no content."""

    async def send(self, messages: Sequence[OutgoingEmail]) -> list[Outcome]:
        for message in messages:
            log.info(
                "email_console",
                delivery_id=str(message.delivery_id),
                to_domain=message.to_address.rpartition("@")[2],
                note="console provider: not sent; set SMTP_HOST to send for real",
            )
        return [Outcome.sent(m.message_id) for m in messages]

    async def close(self) -> None:
        return None
