"""Configuration, read once from the environment.

This module is the one place that reads ``os.environ``. Every other module gets a
``Settings`` value. A bad value fails at start with a one-line ``ConfigError`` that
names the variable; the CLI prints it and exits with status 2.
"""

from __future__ import annotations

import dataclasses
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Literal
from urllib.parse import urlsplit

LogFormat = Literal["json", "console"]
EmailProvider = Literal["smtp", "sendgrid", "ses", "console"]

CHANNELS = ("IN_APP", "EMAIL", "PUSH", "SMS", "WEBHOOK", "SLACK", "DISCORD")
_RATE_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*/\s*(s|sec|second|m|min|minute|h|hour)\s*$")
_RATE_UNITS = {"s": 1, "sec": 1, "second": 1, "m": 60, "min": 60, "minute": 60}
_RATE_UNITS |= {"h": 3600, "hour": 3600}


class ConfigError(Exception):
    """A configuration variable is missing or malformed; the message names it."""


@dataclasses.dataclass(frozen=True, slots=True)
class SmtpSettings:
    host: str
    port: int
    username: str | None
    password: str | None = dataclasses.field(repr=False)
    starttls: bool
    ca_file: str | None
    timeout: float


@dataclasses.dataclass(frozen=True, slots=True)
class Settings:
    database_url: str | None
    port: int
    host: str
    admin_key: str | None = dataclasses.field(repr=False)
    inbox_secrets: tuple[str, ...] = dataclasses.field(repr=False)
    public_url: str | None
    cors_origins: tuple[str, ...]
    log_format: LogFormat
    log_level: str
    db_pool_size: int
    email_provider: EmailProvider | None
    email_from: str
    smtp: SmtpSettings | None
    retry_max_attempts: int
    retry_max_attempts_by_channel: Mapping[str, int]
    retry_base_seconds: float
    retry_max_seconds: float
    batch_size: int
    batch_size_by_channel: Mapping[str, int]
    provider_rates: Mapping[str, float]  # channel -> sends per second
    send_at_horizon_days: int
    idempotency_ttl_hours: int
    retention_days: int | None
    poll_interval: float
    worker_concurrency: int
    data_dir: Path
    dev: bool

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, *, dev: bool = False) -> Settings:
        """Read and validate every variable; raise ``ConfigError`` naming the first bad one."""
        env = _Env(os.environ if environ is None else environ)
        smtp = _smtp_from_env(env)
        email_provider = env.choice(
            "POSTBELL_EMAIL_PROVIDER", ("smtp", "sendgrid", "ses", "console"), None
        )
        if email_provider is None:
            email_provider = "smtp" if smtp else ("console" if dev else None)
        if email_provider == "smtp" and smtp is None:
            raise ConfigError("POSTBELL_EMAIL_PROVIDER=smtp needs SMTP_HOST to be set")
        log_format = env.choice("POSTBELL_LOG_FORMAT", ("json", "console"), None)
        return cls(
            database_url=env.database_url("DATABASE_URL"),
            port=env.integer("PORT", 8000, minimum=0, maximum=65535),
            host=env.text("POSTBELL_HOST") or ("127.0.0.1" if dev else "0.0.0.0"),
            admin_key=env.secret("POSTBELL_ADMIN_KEY", min_length=16),
            inbox_secrets=env.csv("POSTBELL_INBOX_SECRET"),
            public_url=env.url("POSTBELL_PUBLIC_URL", schemes=("http", "https")),
            cors_origins=env.csv("POSTBELL_CORS_ORIGINS"),
            log_format=log_format or ("console" if dev else "json"),  # type: ignore[arg-type]
            log_level=env.choice(
                "POSTBELL_LOG_LEVEL", ("debug", "info", "warning", "error"), "info"
            )
            or "info",
            db_pool_size=env.integer("POSTBELL_DB_POOL_SIZE", 10, minimum=2, maximum=500),
            email_provider=email_provider,  # type: ignore[arg-type]
            email_from=env.text("EMAIL_FROM") or "postbell@localhost",
            smtp=smtp,
            retry_max_attempts=env.integer("POSTBELL_RETRY_MAX_ATTEMPTS", 8, minimum=1),
            retry_max_attempts_by_channel=env.per_channel("POSTBELL_RETRY_MAX_ATTEMPTS"),
            retry_base_seconds=env.number("POSTBELL_RETRY_BASE_SECONDS", 10.0, minimum=0.01),
            retry_max_seconds=env.number("POSTBELL_RETRY_MAX_SECONDS", 3600.0, minimum=0.01),
            batch_size=env.integer("POSTBELL_BATCH_SIZE", 500, minimum=1, maximum=10_000),
            batch_size_by_channel=env.per_channel("POSTBELL_BATCH_SIZE"),
            provider_rates=env.rates("POSTBELL_PROVIDER_RATE"),
            send_at_horizon_days=env.integer("POSTBELL_SEND_AT_HORIZON_DAYS", 365, minimum=1),
            idempotency_ttl_hours=env.integer("POSTBELL_IDEMPOTENCY_TTL_HOURS", 24, minimum=1),
            retention_days=env.integer_or_none("POSTBELL_RETENTION_DAYS", minimum=1),
            poll_interval=env.number("POSTBELL_POLL_INTERVAL", 1.0, minimum=0.05, maximum=60),
            worker_concurrency=env.integer("POSTBELL_WORKER_CONCURRENCY", 8, minimum=1),
            data_dir=Path(env.text("POSTBELL_DATA_DIR") or ".data"),
            dev=dev,
        )

    def max_attempts(self, channel: str) -> int:
        return self.retry_max_attempts_by_channel.get(channel, self.retry_max_attempts)

    def batch_size_for(self, channel: str) -> int:
        size = self.batch_size_by_channel.get(channel, self.batch_size)
        return min(size, 500) if channel == "PUSH" else size  # FCM send_each takes <= 500


def _smtp_from_env(env: _Env) -> SmtpSettings | None:
    host = env.text("SMTP_HOST")
    if not host:
        return None
    port = env.integer("SMTP_PORT", 587, minimum=1, maximum=65535)
    ca_file = env.text("SMTP_CA_FILE")
    if ca_file and not Path(ca_file).is_file():
        raise ConfigError(f"SMTP_CA_FILE: no such file {ca_file!r}")
    return SmtpSettings(
        host=host,
        port=port,
        username=env.text("SMTP_USERNAME"),
        password=env.text("SMTP_PASSWORD"),
        starttls=env.boolean("SMTP_STARTTLS", port == 587),
        ca_file=ca_file,
        timeout=env.number("SMTP_TIMEOUT", 30.0, minimum=0.1),
    )


class _Env:
    """Typed accessors over a mapping; each raises ConfigError naming the variable."""

    def __init__(self, environ: Mapping[str, str]) -> None:
        self._environ = environ

    def text(self, name: str) -> str | None:
        value = self._environ.get(name, "").strip()
        return value or None

    def secret(self, name: str, *, min_length: int) -> str | None:
        value = self.text(name)
        if value is not None and len(value) < min_length:
            raise ConfigError(f"{name} must be at least {min_length} characters long")
        return value

    def integer(
        self, name: str, default: int, *, minimum: int | None = None, maximum: int | None = None
    ) -> int:
        value = self.integer_or_none(name, minimum=minimum, maximum=maximum)
        return default if value is None else value

    def integer_or_none(
        self, name: str, *, minimum: int | None = None, maximum: int | None = None
    ) -> int | None:
        raw = self.text(name)
        if raw is None:
            return None
        try:
            value = int(raw)
        except ValueError:
            raise ConfigError(f"{name} must be an integer, got {raw!r}") from None
        _check_range(name, value, minimum, maximum)
        return value

    def number(
        self,
        name: str,
        default: float,
        *,
        minimum: float | None = None,
        maximum: float | None = None,
    ) -> float:
        raw = self.text(name)
        if raw is None:
            return default
        try:
            value = float(raw)
        except ValueError:
            raise ConfigError(f"{name} must be a number, got {raw!r}") from None
        _check_range(name, value, minimum, maximum)
        return value

    def boolean(self, name: str, default: bool) -> bool:
        raw = self.text(name)
        if raw is None:
            return default
        lowered = raw.lower()
        if lowered in ("1", "true", "yes", "on"):
            return True
        if lowered in ("0", "false", "no", "off"):
            return False
        raise ConfigError(f"{name} must be true or false, got {raw!r}")

    def choice(self, name: str, choices: tuple[str, ...], default: str | None) -> str | None:
        raw = self.text(name)
        if raw is None:
            return default
        if raw.lower() not in choices:
            raise ConfigError(f"{name} must be one of {', '.join(choices)}, got {raw!r}")
        return raw.lower()

    def csv(self, name: str) -> tuple[str, ...]:
        raw = self.text(name) or ""
        return tuple(part.strip() for part in raw.split(",") if part.strip())

    def url(self, name: str, *, schemes: tuple[str, ...]) -> str | None:
        raw = self.text(name)
        if raw is None:
            return None
        try:
            parts = urlsplit(raw)
        except ValueError:
            raise ConfigError(f"{name} is not a valid URL") from None
        if parts.scheme not in schemes:
            raise ConfigError(
                f"{name} must be a {'/'.join(schemes)} URL, got scheme {parts.scheme!r}"
            )
        if parts.scheme.startswith("http") and not parts.hostname:
            raise ConfigError(f"{name} has no host name")
        return raw

    def database_url(self, name: str) -> str | None:
        """A postgres:// URL or a libpq "key=value" connection string."""
        raw = self.text(name)
        if raw is None:
            return None
        if "://" in raw:
            return self.url(name, schemes=("postgres", "postgresql"))
        from psycopg.conninfo import conninfo_to_dict

        try:
            conninfo_to_dict(raw)
        except Exception:
            raise ConfigError(
                f"{name} is neither a postgres:// URL nor a libpq connection string"
            ) from None
        return raw

    def per_channel(self, prefix: str) -> dict[str, int]:
        out: dict[str, int] = {}
        for channel in CHANNELS:
            value = self.integer_or_none(f"{prefix}_{channel}", minimum=1)
            if value is not None:
                out[channel] = value
        return out

    def rates(self, prefix: str) -> dict[str, float]:
        out: dict[str, float] = {}
        for channel in CHANNELS:
            name = f"{prefix}_{channel}"
            raw = self.text(name)
            if raw is None:
                continue
            match = _RATE_RE.match(raw.lower())
            if not match or float(match.group(1)) <= 0:
                raise ConfigError(f"{name} must look like '14/s' or '100/min', got {raw!r}")
            out[channel] = float(match.group(1)) / _RATE_UNITS[match.group(2)]
        return out


def _check_range(name: str, value: float, minimum: float | None, maximum: float | None) -> None:
    if minimum is not None and value < minimum:
        raise ConfigError(f"{name} must be at least {minimum}, got {value}")
    if maximum is not None and value > maximum:
        raise ConfigError(f"{name} must be at most {maximum}, got {value}")
