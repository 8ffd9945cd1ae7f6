"""Apprise URLs: operator-configured destinations that hold credentials.

One place decides what an Apprise URL may be (``check``), how it is shown
(``mask``: its scheme only), how text that might quote it is cleaned (``scrub``),
and keeps Apprise's own log lines — at debug level they carry whole URLs and
payloads — away from postbell's log (``quiet_logger``; ``capture`` collects its
warnings per thread for the delivery's ``last_error`` instead).

Apprise is imported on first use: the API and the worker load it only when a
category names Apprise URLs.
"""

from __future__ import annotations

import contextlib
import logging
import re
import threading
from collections.abc import Iterator, Sequence
from typing import Any

MAX_URLS = 20
MAX_URL_CHARS = 2048
_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]{0,31})://")
_LOCAL = threading.local()
_quieted = False


class _PerThread(logging.Handler):
    """Apprise's warnings, kept for the thread that is sending (see ``capture``)."""

    def emit(self, record: logging.LogRecord) -> None:
        lines: list[str] | None = getattr(_LOCAL, "lines", None)
        if lines is not None and record.levelno >= logging.WARNING:
            with contextlib.suppress(Exception):
                lines.append(record.getMessage())


def quiet_logger() -> None:
    """Keep the ``apprise`` logger out of postbell's log (idempotent)."""
    global _quieted
    if _quieted:
        return
    logger = logging.getLogger("apprise")
    logger.propagate = False
    logger.handlers[:] = [_PerThread()]
    logger.setLevel(logging.WARNING)
    _quieted = True


@contextlib.contextmanager
def capture() -> Iterator[list[str]]:
    """The warnings Apprise logs in this thread while the block runs."""
    quiet_logger()
    lines: list[str] = []
    _LOCAL.lines = lines
    try:
        yield lines
    finally:
        _LOCAL.lines = None


def scheme(url: str) -> str | None:
    match = _SCHEME.match(url)
    return match.group(1).lower() if match else None


def mask(url: str) -> str:
    """What an answer may show of an Apprise URL: its scheme, nothing that follows."""
    found = scheme(url)
    return f"{found}://***" if found else "***"


def scrub(text: str, urls: Sequence[str]) -> str:
    """``text`` without any part of ``urls`` that could be a secret."""
    for url in urls:
        rest = url.split("://", 1)[-1]
        pieces = sorted(
            {p for p in re.split(r"[/:@?&=#,]", rest) if len(p) >= 4} | {rest, url},
            key=len,
            reverse=True,
        )
        for piece in pieces:
            text = text.replace(piece, "***")
    return text


def load(url: str, asset: Any = None) -> Any:
    """The Apprise service for ``url``, or None when Apprise cannot send to it."""
    quiet_logger()
    import apprise

    return apprise.Apprise.instantiate(url, asset=asset, suppress_exceptions=True)


def check(url: str) -> str | None:
    """Why ``url`` cannot be an Apprise destination, or None when it can. The answer
    names the scheme at most, never the rest of the URL."""
    if len(url) > MAX_URL_CHARS:
        return f"longer than {MAX_URL_CHARS} characters"
    found = scheme(url)
    if found is None:
        return "not an Apprise URL (like ntfy://host/topic or json://host/path)"
    try:
        service = load(url)
    except Exception:
        service = None
    if service is None:
        return f"Apprise cannot send to this {found}:// URL (unknown service or bad form)"
    return None
