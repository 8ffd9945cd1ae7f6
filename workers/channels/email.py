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
import html
import ssl
from collections.abc import Sequence
from email.message import EmailMessage
from typing import ClassVar, Protocol

import aiosmtplib
import structlog

from app.settings import Settings, SmtpSettings
from workers.channels import Channel, Delivery, Outcome

log = structlog.get_logger("postbell.email")

# SMTP replies that say the mailbox does not exist or will never accept mail.
HARD_BOUNCE_CODES = frozenset({550, 551, 553})


class EmailTransport(Protocol):
    async def send(self, messages: Sequence[EmailMessage]) -> list[Outcome]: ...

    async def close(self) -> None: ...


class EmailChannel:
    name: ClassVar[str] = "EMAIL"
    address_field: ClassVar[str | None] = "email"
    inactive_field: ClassVar[str | None] = "email_inactive_at"

    def __init__(self, transport: EmailTransport, sender: str) -> None:
        self.transport = transport
        self.sender = sender
        _, address = email.utils.parseaddr(sender)
        self.domain = address.rpartition("@")[2] or "postbell.localhost"

    @classmethod
    def from_settings(cls, settings: Settings) -> Channel | None:
        from workers.channels.email_http import SendGridTransport, SesTransport

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
        return cls(transport, settings.email_from)

    async def send(self, deliveries: Sequence[Delivery]) -> list[Outcome]:
        return await self.transport.send([self.build(d) for d in deliveries])

    async def close(self) -> None:
        await self.transport.close()

    def build(self, delivery: Delivery) -> EmailMessage:
        recipient = delivery.recipient
        assert recipient.email, "the router skips recipients without an address"
        message = EmailMessage()
        message["From"] = self.sender
        message["To"] = email.utils.formataddr((recipient.name or "", recipient.email))
        message["Subject"] = delivery.subject
        message["Date"] = email.utils.formatdate(localtime=False)
        message["Message-ID"] = f"<{delivery.id}@{self.domain}>"
        message["X-Postbell-Delivery"] = str(delivery.id)
        message["X-Postbell-Notification"] = str(delivery.notification_id)
        text = delivery.body
        if delivery.action_url:
            text = f"{text}\n\n{delivery.action_url}"
        message.set_content(text)
        message.add_alternative(_html(delivery), subtype="html")
        return message


def _html(delivery: Delivery) -> str:
    paragraphs = "".join(
        f"<p>{html.escape(p).replace(chr(10), '<br>')}</p>"
        for p in delivery.body.split("\n\n")
        if p.strip()
    )
    title = f"<h1>{html.escape(delivery.title)}</h1>" if delivery.title else ""
    action = ""
    if delivery.action_url:
        url = html.escape(delivery.action_url, quote=True)
        action = f'<p><a href="{url}">Open</a></p>'
    return f"<!doctype html><html><body>{title}{paragraphs}{action}</body></html>"


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

    async def send(self, messages: Sequence[EmailMessage]) -> list[Outcome]:
        outcomes: list[Outcome | None] = [None] * len(messages)
        lanes = min(self.connections, len(messages))

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
                    await client.send_message(messages[index])
                    outcomes[index] = Outcome.sent(messages[index]["Message-ID"])
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

    async def send(self, messages: Sequence[EmailMessage]) -> list[Outcome]:
        for message in messages:
            _, address = email.utils.parseaddr(str(message["To"]))
            log.info(
                "email_console",
                delivery_id=str(message["X-Postbell-Delivery"]),
                to_domain=address.rpartition("@")[2],
                note="console provider: not sent; set SMTP_HOST to send for real",
            )
        return [Outcome.sent(str(m["Message-ID"])) for m in messages]

    async def close(self) -> None:
        return None
