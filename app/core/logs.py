"""structlog set-up: JSON lines in production, pretty lines in dev.

Library loggers (procrastinate, uvicorn, psycopg) go through the same renderer. A
last processor blanks values under keys that name secrets or message content, as a
guard behind the rule that such values are never passed to a logger at all.
"""

from __future__ import annotations

import logging
import sys
import traceback
from collections.abc import MutableMapping
from typing import Any, TextIO

import psycopg
import structlog

from postbell.app.core.db import describe_error

_REDACTED_KEYS = frozenset(
    {
        "password",
        "secret",
        "token",
        "authorization",
        "api_key",
        "key",
        "body",
        "message_body",
        "html",
        "text",
        "args",
    }
)


def _redact(_: Any, __: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    for key in list(event):
        if key.lower() in _REDACTED_KEYS:
            event[key] = "[redacted]"
    return event


def _drop_job_args(record: logging.LogRecord) -> bool:
    # procrastinate attaches the full job (arguments included) to its records.
    # Our job arguments hold ids only, but the extra dicts are noise in JSON logs.
    for attr in ("job", "worker", "job_result"):
        if hasattr(record, attr):
            delattr(record, attr)
    return True


def exception_text(exc_info: Any) -> str:
    """A traceback without what must never reach a log: the frames (file, line,
    function, source line) and each exception's type, but for database errors only
    their SQLSTATE. Postgres puts bound parameters (secrets, bodies, addresses) into
    its error messages and CONTEXT, so a psycopg error's text is never printed."""
    _, exc, _ = exc_info
    chain: list[BaseException] = []
    while exc is not None and exc not in chain and len(chain) < 10:
        chain.append(exc)
        exc = exc.__cause__ or (None if exc.__suppress_context__ else exc.__context__)
    parts = []
    for exc in reversed(chain):
        frames = "".join(traceback.format_tb(exc.__traceback__))
        kind = f"{type(exc).__module__}.{type(exc).__qualname__}"
        parts.append(f"Traceback (most recent call last):\n{frames}{kind}: {_message(exc)}")
    return "\n\nThe above led to:\n\n".join(parts)


def _message(exc: BaseException) -> str:
    if isinstance(exc, psycopg.Error):
        return f"(database error, SQLSTATE {exc.sqlstate or 'none'}; message withheld)"
    return str(exc)[:500]


def _console_exception(sio: TextIO, exc_info: Any) -> None:
    sio.write("\n" + exception_text(exc_info))


def _one_line_database_errors(record: logging.LogRecord) -> bool:
    # psycopg_pool logs each failed connection attempt with libpq's text, hints and
    # line breaks included ("error connecting in 'x': connection failed: ...\n\tIs the
    # server running ...?"): say it in one line, as postbell's own events do.
    if record.name.startswith("psycopg") and isinstance(record.args, tuple):
        record.args = tuple(
            describe_error(arg) if isinstance(arg, BaseException) else arg for arg in record.args
        )
    return True


def configure(*, fmt: str = "json", level: str = "info") -> None:
    """Configure structlog and the standard library's logging once per process."""
    render_exception = structlog.processors.ExceptionRenderer(exception_text)
    shared: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        _redact,
    ]
    renderer: Any
    if fmt == "console":
        renderer = structlog.dev.ConsoleRenderer(
            colors=sys.stderr.isatty(), exception_formatter=_console_exception
        )
    else:
        renderer = structlog.processors.JSONRenderer()

    structlog.configure(
        processors=[
            *shared,
            render_exception,
            structlog.stdlib.ProcessorFormatter.wrap_for_formatter,
        ],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=True,
    )
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=[*shared, render_exception],
        processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, renderer],
    )
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(formatter)
    handler.addFilter(_drop_job_args)
    handler.addFilter(_one_line_database_errors)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # Per-job lines from procrastinate at info would be one line per batch job;
    # postbell logs its own outcome lines with counts instead.
    logging.getLogger("procrastinate").setLevel(max(logging.WARNING, root.level))
    logging.getLogger("uvicorn.access").disabled = True  # query strings may hold tokens
    # twilio's HTTP client logs whole requests (message bodies included) at INFO.
    noisy = (
        "psycopg.pool",
        "aiosmtplib",
        "asyncio",
        "httpx",
        "httpcore",
        "urllib3",
        "twilio",
        "firebase_admin",
        "google",
        "botocore",
        "aiohttp",
    )
    for noisy_logger in noisy:
        logging.getLogger(noisy_logger).setLevel(max(logging.WARNING, root.level))
