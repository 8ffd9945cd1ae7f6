"""Run one test peer by hand: ``.venv/bin/python -m tests.peers NAME``.

It starts the peer on 127.0.0.1 (a free port), prints the environment variables that
point postbell at it (paste them into the shell that runs ``make dev`` or
``postbell worker``), then prints one line per request or message it receives until
Ctrl-C. The peers are the same objects the tests use, so what you see is what a test
sees.

    .venv/bin/python -m tests.peers smtp        # SMTP with STARTTLS and AUTH
    .venv/bin/python -m tests.peers webhooks    # webhook / Slack / Discord receiver
"""

from __future__ import annotations

import argparse
import shlex
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any


def _smtp(folder: Path) -> Any:
    from tests.peers.smtp import SmtpPeer

    return SmtpPeer(folder)


def _webhooks(folder: Path) -> Any:
    from tests.peers.webhooks import WebhookReceiver

    return WebhookReceiver()


def _fcm(folder: Path) -> Any:
    from tests.peers.fake_fcm import FcmPeer

    return FcmPeer(folder)


def _twilio(folder: Path) -> Any:
    from tests.peers.fake_twilio import TwilioPeer

    return TwilioPeer()


def _sendgrid(folder: Path) -> Any:
    from tests.peers.sendgrid import SendGridPeer

    return SendGridPeer()


def _ses(folder: Path) -> Any:
    from tests.peers.ses import SesPeer

    return SesPeer()


def _sns_sms(folder: Path) -> Any:
    from tests.peers.sns_sms import SnsSmsPeer

    return SnsSmsPeer()


def _telegram(folder: Path) -> Any:
    from tests.peers.fake_telegram import TelegramPeer

    return TelegramPeer()


PEERS: dict[str, Callable[[Path], Any]] = {
    "smtp": _smtp,
    "webhooks": _webhooks,
    "fcm": _fcm,
    "twilio": _twilio,
    "sendgrid": _sendgrid,
    "ses": _ses,
    "sns-sms": _sns_sms,
    "telegram": _telegram,
}


def describe(item: Any) -> str:
    """One line for what a peer received: a message (SMTP) or a request (HTTP)."""
    if hasattr(item, "rcpt_tos"):
        subject = item.message.get("Subject", "")
        return f"mail from {item.mail_from} to {', '.join(item.rcpt_tos)}: {subject!r}"
    body = item.body[:200].decode("utf-8", "replace")
    return f"{item.method} {item.path} {body}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m tests.peers",
        description="Run one of postbell's test peers by hand and print what it receives.",
    )
    parser.add_argument("peer", choices=sorted(PEERS), help="which peer to run")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="postbell-peer-") as folder:
        peer = PEERS[args.peer](Path(folder)).start()
        env = peer.env() if hasattr(peer, "env") else {}
        if not env:
            print(f"# {args.peer} listens on {peer.url}: point a recipient's URL at it")
        for name, value in env.items():
            print(f"export {name}={shlex.quote(value)}")
        print(f"# {args.peer} is running; Ctrl-C stops it", flush=True)
        seen = 0
        try:
            while True:
                received = list(peer.received)
                for item in received[seen:]:
                    print(describe(item), flush=True)
                seen = len(received)
                time.sleep(0.2)
        except KeyboardInterrupt:
            return 0
        finally:
            peer.stop()


if __name__ == "__main__":
    sys.exit(main())
