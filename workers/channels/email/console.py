"""The ``console`` email provider of ``postbell dev``: logs instead of sending."""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import TextIO

import structlog

from postbell.workers.channels.base import Outcome
from postbell.workers.channels.email.mime import OutgoingEmail

log = structlog.get_logger("postbell.email")


class ConsoleTransport:
    """Logs instead of sending (``POSTBELL_EMAIL_PROVIDER=console``): ids only, no content.

    Under ``postbell dev`` (``show``), it also prints each email's recipient, subject
    and plain-text part to the terminal, where the developer sees the rendered
    message; that goes to the process's stdout, never through the logs, and never
    outside dev."""

    def __init__(self, show: bool = False, out: TextIO | None = None) -> None:
        self.show = show
        self.out = out

    async def send(self, messages: Sequence[OutgoingEmail]) -> list[Outcome]:
        for message in messages:
            log.info(
                "email_console",
                delivery_id=str(message.delivery_id),
                to_domain=message.to_address.rpartition("@")[2],
                note="console provider: not sent; set SMTP_HOST to send for real",
            )
            if self.show:
                self._print(message)
        return [Outcome.sent(m.message_id) for m in messages]

    def _print(self, message: OutgoingEmail) -> None:
        out = self.out or sys.stdout
        rule = "-" * 72
        out.write(
            f"{rule}\nemail (console, not sent) to {message.to_header}\n"
            f"Subject: {message.content.subject}\n\n{message.content.text}\n{rule}\n"
        )
        out.flush()

    async def close(self) -> None:
        return None
