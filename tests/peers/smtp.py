"""A real SMTP server for tests: aiosmtpd with STARTTLS (self-signed) and AUTH.

It records every message it accepts. ``script`` makes it answer RCPT TO with given
replies, per address, in order (e.g. ``["451 4.3.0 try later", "250 OK"]``), so
tests can make transient and permanent failures. ``stop()``/``start()`` simulate an
outage on the same port.
"""

from __future__ import annotations

import asyncio
import dataclasses
import email
import email.policy
import threading
from email.message import EmailMessage
from pathlib import Path
from typing import Any

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword

from tests.peers.net import free_port
from tests.peers.tls import make_certificate, server_context

USERNAME = "postbell"
PASSWORD = "s3cret-pass"


@dataclasses.dataclass
class Received:
    mail_from: str
    rcpt_tos: list[str]
    message: EmailMessage
    authenticated_as: str | None
    tls: bool


class _Handler:
    def __init__(self, peer: SmtpPeer) -> None:
        self.peer = peer

    async def handle_RCPT(
        self, server: Any, session: Any, envelope: Any, address: str, rcpt_options: Any
    ) -> str:
        gate = self.peer.held.get(address)
        if gate is not None:
            with self.peer._lock:
                self.peer.waiting.append(address)
            while not gate.is_set():  # the sender is provably mid-send
                await asyncio.sleep(0.02)
        reply = self.peer._next_reply(address)
        if reply is not None and not reply.startswith("250"):
            return reply
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        if self.peer.delay:
            await asyncio.sleep(self.peer.delay)  # a slow relay (in the peer's own loop)
        message = email.message_from_bytes(envelope.content, policy=email.policy.default)
        auth = session.auth_data
        with self.peer._lock:
            self.peer.received.append(
                Received(
                    mail_from=envelope.mail_from,
                    rcpt_tos=list(envelope.rcpt_tos),
                    message=message,  # type: ignore[arg-type]
                    authenticated_as=auth.login.decode() if auth else None,
                    tls=session.ssl is not None,
                )
            )
        return "250 Message accepted"


def _authenticator(
    server: Any, session: Any, envelope: Any, mechanism: str, auth_data: Any
) -> AuthResult:
    ok = isinstance(auth_data, LoginPassword) and (
        auth_data.login == USERNAME.encode() and auth_data.password == PASSWORD.encode()
    )
    return AuthResult(success=ok, auth_data=auth_data if ok else None)


class SmtpPeer:
    def __init__(self, folder: Path) -> None:
        self.cert, self.key = make_certificate(folder)
        self.port = free_port()
        self.received: list[Received] = []
        self.script: dict[str, list[str]] = {}
        self.delay = 0.0
        #: addresses whose RCPT TO waits until the event is set (``hold``)
        self.held: dict[str, threading.Event] = {}
        self.waiting: list[str] = []
        self._lock = threading.Lock()
        self._controller: Controller | None = None

    def _next_reply(self, address: str) -> str | None:
        with self._lock:
            replies = self.script.get(address)
            return replies.pop(0) if replies else None

    def start(self) -> SmtpPeer:
        self._controller = Controller(
            _Handler(self),
            hostname="127.0.0.1",
            port=self.port,
            tls_context=server_context(self.cert, self.key),
            require_starttls=True,
            authenticator=_authenticator,
            auth_require_tls=True,
            auth_required=True,
            ready_timeout=10,
        )
        self._controller.start()
        return self

    def stop(self) -> None:
        if self._controller is not None:
            self._controller.stop()
            self._controller = None

    def env(self) -> dict[str, str]:
        """The settings that point postbell at this server."""
        return {
            "SMTP_HOST": "127.0.0.1",
            "SMTP_PORT": str(self.port),
            "SMTP_USERNAME": USERNAME,
            "SMTP_PASSWORD": PASSWORD,
            "SMTP_STARTTLS": "true",
            "SMTP_CA_FILE": str(self.cert),
            "EMAIL_FROM": "Postbell <notify@postbell.test>",
        }

    def hold(self, address: str) -> threading.Event:
        """Keep RCPT TO for ``address`` waiting until the returned event is set."""
        gate = threading.Event()
        self.held[address] = gate
        return gate

    def fail_next(self, address: str, *replies: str) -> None:
        """Answer the next RCPT TOs of ``address`` with these replies, in order."""
        with self._lock:
            self.script.setdefault(address, []).extend(replies)

    def to(self, address: str) -> list[Received]:
        with self._lock:
            return [r for r in self.received if address in r.rcpt_tos]
