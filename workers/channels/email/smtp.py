"""SMTP through aiosmtplib: STARTTLS (or implicit TLS on 465), AUTH, reused sessions."""

from __future__ import annotations

import asyncio
import email.utils
import ssl
from collections.abc import Sequence

import aiosmtplib

from postbell.app.core.settings import SmtpSettings
from postbell.workers.channels.base import Outcome
from postbell.workers.channels.email.mime import OutgoingEmail

# SMTP replies that say the mailbox does not exist or will never accept mail.
HARD_BOUNCE_CODES = frozenset({550, 551, 553})


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
