"""The ``console`` email provider of ``postbell dev``: logs instead of sending."""

from __future__ import annotations

from collections.abc import Sequence

import structlog

from postbell.workers.channels.base import Outcome
from postbell.workers.channels.email.mime import OutgoingEmail

log = structlog.get_logger("postbell.email")


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
