"""Configuration, read once from the environment.

This module is the one place that reads ``os.environ``. Every other module gets a
``Settings`` value. A bad value fails at start with a one-line ``ConfigError`` that
names the variable; the CLI prints it and exits with status 2.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import email.utils
import json
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

from postbell.app.core.addresses import AddressGuard
from postbell.app.core.channels import CHANNELS

LogFormat = Literal["json", "console"]
EmailProvider = Literal["smtp", "sendgrid", "ses", "console"]
SmsProvider = Literal["twilio", "sns"]

_RATE_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*/\s*(s|sec|second|m|min|minute|h|hour)\s*$")
_RATE_UNITS = {"s": 1, "sec": 1, "second": 1, "m": 60, "min": 60, "minute": 60}
_RATE_UNITS |= {"h": 3600, "hour": 3600}


#: How far ahead of this host's clock a provider's signed time may be (their clocks
#: and ours both drift; NTP keeps them well inside this).
CALLBACK_CLOCK_SKEW_SECONDS = 300

#: Paces that hold without a POSTBELL_PROVIDER_RATE_<CHANNEL>: Telegram's Bot API
#: allows about 30 messages a second per bot and answers 429 beyond it.
DEFAULT_PROVIDER_RATES: Mapping[str, float] = {"TELEGRAM": 25.0}

#: Bounds of the process counts: ``serve --workers`` / WEB_CONCURRENCY and
#: ``worker --concurrency`` / POSTBELL_WORKER_CONCURRENCY.
MAX_WEB_WORKERS = 128
MAX_WORKER_CONCURRENCY = 1000
#: POSTBELL_MAX_IN_FLIGHT's default and bound: 1,000 requests in flight are ~3,000/s
#: to receivers answering in 300 ms, in tens of MB (one socket and buffer each).
MAX_IN_FLIGHT = 1000
MAX_IN_FLIGHT_BOUND = 20_000


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
class SendGridSettings:
    api_key: str = dataclasses.field(repr=False)
    api_url: str


@dataclasses.dataclass(frozen=True, slots=True)
class SesSettings:
    region: str
    access_key_id: str
    secret_access_key: str = dataclasses.field(repr=False)
    endpoint_url: str
    #: SES_CONFIGURATION_SET: sent with every email (its event destination feeds
    #: /api/callbacks/ses); None: the sending identity's default configuration set
    configuration_set: str | None = None


@dataclasses.dataclass(frozen=True, slots=True)
class FcmSettings:
    credentials: Mapping[str, Any] = dataclasses.field(repr=False)  # the service-account JSON
    api_url: str | None  # overrides https://fcm.googleapis.com (emulators, tests)

    @property
    def project_id(self) -> str:
        return str(self.credentials["project_id"])


@dataclasses.dataclass(frozen=True, slots=True)
class TwilioSettings:
    account_sid: str
    auth_token: str = dataclasses.field(repr=False)
    from_number: str | None
    messaging_service_sid: str | None
    api_url: str | None
    #: TWILIO_WHATSAPP_FROM: the WhatsApp-enabled sender, E.164 (WHATSAPP needs it)
    whatsapp_from: str | None = None

    @property
    def sms_sender(self) -> bool:
        """Whether SMS can be sent: a from number or a messaging service."""
        return bool(self.from_number or self.messaging_service_sid)


@dataclasses.dataclass(frozen=True, slots=True)
class SnsSettings:
    """Amazon SNS ``Publish`` to a phone number: SMS through AWS (POSTBELL_SMS_PROVIDER=sns)."""

    region: str
    access_key_id: str
    secret_access_key: str = dataclasses.field(repr=False)
    endpoint_url: str
    #: SNS_SENDER_ID: an alphanumeric sender ID, sent where carriers take one (not +1)
    sender_id: str | None = None
    #: SNS_ORIGINATION_NUMBER: the number (or short code) to send from, E.164
    origination_number: str | None = None


@dataclasses.dataclass(frozen=True, slots=True)
class TelegramSettings:
    #: TELEGRAM_BOT_TOKEN: part of every request's path, so never in a log or an error
    bot_token: str = dataclasses.field(repr=False)
    api_url: str = "https://api.telegram.org"


@dataclasses.dataclass(frozen=True, slots=True)
class Settings:
    database_url: str | None
    port: int
    host: str
    admin_key: str | None = dataclasses.field(repr=False)
    #: a Bearer credential that opens /metrics only (a Prometheus scraper's)
    metrics_token: str | None = dataclasses.field(repr=False)
    inbox_secrets: tuple[str, ...] = dataclasses.field(repr=False)
    public_url: str | None
    #: POSTBELL_TRACK_OPENS / POSTBELL_TRACK_CLICKS: an open pixel, and redirect links,
    #: in emails (they need POSTBELL_PUBLIC_URL and POSTBELL_INBOX_SECRET)
    track_opens: bool
    track_clicks: bool
    cors_origins: tuple[str, ...]
    log_format: LogFormat
    log_level: str
    db_pool_size: int
    email_provider: EmailProvider | None
    email_from: str
    smtp: SmtpSettings | None
    sendgrid: SendGridSettings | None
    ses: SesSettings | None
    fcm: FcmSettings | None
    twilio: TwilioSettings | None
    #: POSTBELL_SMS_PROVIDER: which provider SMS goes through (None: SMS not configured)
    sms_provider: SmsProvider | None
    sns: SnsSettings | None
    telegram: TelegramSettings | None
    #: POSTBELL_APPRISE_THREADS: Apprise sends at once per worker process (it blocks)
    apprise_threads: int
    webhook_signing_secret: str | None = dataclasses.field(repr=False)
    sendgrid_webhook_key: str | None  # the Event Webhook's public verification key
    sns_cert_url_prefixes: tuple[str, ...]  # extra allowed SigningCertURL prefixes (emulators)
    sns_topic_arns: tuple[str, ...]  # the SNS topics SES feedback is accepted from
    #: POSTBELL_CALLBACK_MAX_AGE_SECONDS: the oldest signed time (SendGrid's timestamp
    #: header, SNS's Timestamp) a provider callback may carry
    callback_max_age_seconds: int
    #: POSTBELL_WEBHOOK_ALLOW_PRIVATE and POSTBELL_WEBHOOK_ALLOW_ADDRESSES (the SSRF guard)
    address_guard: AddressGuard
    http_timeout: float
    retry_max_attempts: int
    retry_max_attempts_by_channel: Mapping[str, int]
    retry_base_seconds: float
    retry_max_seconds: float
    batch_size: int
    batch_size_by_channel: Mapping[str, int]
    #: POSTBELL_MAX_IN_FLIGHT(_<CHANNEL>): the most requests an HTTP channel (WEBHOOK,
    #: SLACK, DISCORD, TEAMS) has in flight per worker process; below it the number
    #: follows the receivers' latency (workers/channels/gate.py)
    max_in_flight: int
    max_in_flight_by_channel: Mapping[str, int]
    provider_rates: Mapping[str, float]  # channel -> sends per second
    #: per API process, per second (None: no limit); see app/api/limits.py
    rate_limit_key: float | None
    rate_limit_token: float | None
    rate_limit_auth_failures: float | None
    max_streams_per_recipient: int
    send_at_horizon_days: int
    idempotency_ttl_hours: int
    retention_days: int | None
    poll_interval: float
    worker_concurrency: int
    #: POSTBELL_FANOUT_PARALLEL: connections one big topic fan-out routes its chunks
    #: on at once (at most half the pool; see Runtime.fanout_parallel)
    fanout_parallel: int
    #: WEB_CONCURRENCY: server processes of ``postbell serve`` (Heroku's buildpack sets it)
    web_concurrency: int
    heartbeat_seconds: float
    data_dir: Path
    dev: bool

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, *, dev: bool = False) -> Settings:
        """Read and validate every variable; raise ``ConfigError`` naming the first bad one."""
        env = _Env(os.environ if environ is None else environ)
        smtp = _smtp_from_env(env)
        sendgrid = _sendgrid_from_env(env)
        ses = _ses_from_env(env)
        email_provider = env.choice(
            "POSTBELL_EMAIL_PROVIDER", ("smtp", "sendgrid", "ses", "console"), None
        )
        if email_provider is None:
            email_provider = (
                "smtp" if smtp else "sendgrid" if sendgrid else "console" if dev else None
            )
        needs: dict[str, tuple[object, str]] = {
            "smtp": (smtp, "SMTP_HOST"),
            "sendgrid": (sendgrid, "SENDGRID_API_KEY"),
            "ses": (ses, "AWS_REGION, AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY"),
        }
        if email_provider in needs and needs[email_provider][0] is None:
            missing = needs[email_provider][1]
            raise ConfigError(f"POSTBELL_EMAIL_PROVIDER={email_provider} needs {missing} to be set")
        log_format = env.choice("POSTBELL_LOG_FORMAT", ("json", "console"), None)
        twilio = _twilio_from_env(env)
        sns = _sns_from_env(env)
        sms_provider = env.choice("POSTBELL_SMS_PROVIDER", ("twilio", "sns"), None)
        if sms_provider is None and twilio is not None and twilio.sms_sender:
            sms_provider = "twilio"
        if sms_provider == "twilio" and (twilio is None or not twilio.sms_sender):
            raise ConfigError(
                "POSTBELL_SMS_PROVIDER=twilio needs TWILIO_ACCOUNT_SID, TWILIO_AUTH_TOKEN and"
                " TWILIO_FROM_NUMBER (or TWILIO_MESSAGING_SERVICE_SID) to be set"
            )
        if sms_provider == "sns" and sns is None:
            raise ConfigError(
                "POSTBELL_SMS_PROVIDER=sns needs AWS_REGION, AWS_ACCESS_KEY_ID and"
                " AWS_SECRET_ACCESS_KEY to be set"
            )
        return cls(
            database_url=env.database_url("DATABASE_URL"),
            port=env.integer("PORT", 8000, minimum=0, maximum=65535),
            host=env.text("POSTBELL_HOST") or ("127.0.0.1" if dev else "0.0.0.0"),
            admin_key=env.secret("POSTBELL_ADMIN_KEY", min_length=16),
            metrics_token=env.secret("POSTBELL_METRICS_TOKEN", min_length=16),
            inbox_secrets=env.csv("POSTBELL_INBOX_SECRET"),
            public_url=env.url("POSTBELL_PUBLIC_URL", schemes=("http", "https")),
            track_opens=env.boolean("POSTBELL_TRACK_OPENS", False),
            track_clicks=env.boolean("POSTBELL_TRACK_CLICKS", False),
            cors_origins=env.csv("POSTBELL_CORS_ORIGINS"),
            log_format=log_format or ("console" if dev else "json"),  # type: ignore[arg-type]
            log_level=env.choice(
                "POSTBELL_LOG_LEVEL", ("debug", "info", "warning", "error"), "info"
            )
            or "info",
            db_pool_size=env.integer("POSTBELL_DB_POOL_SIZE", 10, minimum=2, maximum=500),
            email_provider=email_provider,  # type: ignore[arg-type]
            email_from=_email_from(env),
            smtp=smtp,
            sendgrid=sendgrid,
            ses=ses,
            fcm=_fcm_from_env(env),
            twilio=twilio,
            sms_provider=sms_provider,  # type: ignore[arg-type]
            sns=sns,
            telegram=_telegram_from_env(env),
            apprise_threads=env.integer("POSTBELL_APPRISE_THREADS", 4, minimum=1, maximum=64),
            webhook_signing_secret=env.text("WEBHOOK_SIGNING_SECRET"),
            sendgrid_webhook_key=_sendgrid_webhook_key(env),
            sns_cert_url_prefixes=_sns_cert_url_prefixes(env),
            sns_topic_arns=env.csv("SNS_TOPIC_ARNS"),
            callback_max_age_seconds=env.integer(
                "POSTBELL_CALLBACK_MAX_AGE_SECONDS", 3900, minimum=60, maximum=7 * 86400
            ),
            address_guard=_address_guard(env),
            http_timeout=env.number("POSTBELL_HTTP_TIMEOUT", 15.0, minimum=0.1, maximum=300),
            retry_max_attempts=env.integer("POSTBELL_RETRY_MAX_ATTEMPTS", 8, minimum=1),
            retry_max_attempts_by_channel=env.per_channel("POSTBELL_RETRY_MAX_ATTEMPTS"),
            retry_base_seconds=env.number("POSTBELL_RETRY_BASE_SECONDS", 10.0, minimum=0.01),
            retry_max_seconds=env.number("POSTBELL_RETRY_MAX_SECONDS", 3600.0, minimum=0.01),
            batch_size=env.integer("POSTBELL_BATCH_SIZE", 500, minimum=1, maximum=10_000),
            batch_size_by_channel=env.per_channel("POSTBELL_BATCH_SIZE"),
            max_in_flight=env.integer(
                "POSTBELL_MAX_IN_FLIGHT", MAX_IN_FLIGHT, minimum=1, maximum=MAX_IN_FLIGHT_BOUND
            ),
            max_in_flight_by_channel=env.per_channel(
                "POSTBELL_MAX_IN_FLIGHT", maximum=MAX_IN_FLIGHT_BOUND
            ),
            provider_rates=env.rates("POSTBELL_PROVIDER_RATE"),
            rate_limit_key=env.rate("POSTBELL_RATE_LIMIT_KEY", 5000.0, off=True),
            rate_limit_token=env.rate("POSTBELL_RATE_LIMIT_TOKEN", 20.0, off=True),
            rate_limit_auth_failures=env.rate("POSTBELL_RATE_LIMIT_AUTH_FAILURES", 10.0, off=True),
            max_streams_per_recipient=env.integer(
                "POSTBELL_MAX_STREAMS_PER_RECIPIENT", 10, minimum=1, maximum=10_000
            ),
            send_at_horizon_days=env.integer("POSTBELL_SEND_AT_HORIZON_DAYS", 365, minimum=1),
            idempotency_ttl_hours=env.integer("POSTBELL_IDEMPOTENCY_TTL_HOURS", 24, minimum=1),
            retention_days=env.integer_or_none("POSTBELL_RETENTION_DAYS", minimum=1),
            poll_interval=env.number("POSTBELL_POLL_INTERVAL", 1.0, minimum=0.05, maximum=60),
            worker_concurrency=env.integer(
                "POSTBELL_WORKER_CONCURRENCY", 16, minimum=1, maximum=MAX_WORKER_CONCURRENCY
            ),
            fanout_parallel=env.integer("POSTBELL_FANOUT_PARALLEL", 2, minimum=1, maximum=64),
            web_concurrency=env.integer("WEB_CONCURRENCY", 1, minimum=1, maximum=MAX_WEB_WORKERS),
            heartbeat_seconds=env.number("POSTBELL_HEARTBEAT_SECONDS", 10.0, minimum=0.2),
            data_dir=Path(env.text("POSTBELL_DATA_DIR") or ".data"),
            dev=dev,
        )

    def provider_rate(self, channel: str) -> float | None:
        """Sends per second for ``channel`` shared by every worker
        (POSTBELL_PROVIDER_RATE_<CHANNEL>, else the provider's documented pace)."""
        return self.provider_rates.get(channel, DEFAULT_PROVIDER_RATES.get(channel))

    def max_attempts(self, channel: str) -> int:
        return self.retry_max_attempts_by_channel.get(channel, self.retry_max_attempts)

    def max_in_flight_for(self, channel: str) -> int:
        return self.max_in_flight_by_channel.get(channel, self.max_in_flight)

    def batch_size_for(self, channel: str) -> int:
        size = self.batch_size_by_channel.get(channel, self.batch_size)
        return min(size, 500) if channel == "PUSH" else size  # FCM send_each takes <= 500

    @property
    def provider_event_keep_seconds(self) -> int:
        """How long a provider event id is remembered: the freshness window plus the
        skew allowed on both sides (the signer's clock and the database's), so a copy
        is either still remembered or refused as stale."""
        return self.callback_max_age_seconds + 2 * CALLBACK_CLOCK_SKEW_SECONDS


def sendgrid_public_key(value: str) -> Any:
    """SendGrid's Event Webhook verification key as SendGrid shows it (base64 DER), or
    as PEM: an elliptic-curve public key; ValueError when it is none."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    data = value.encode() if "BEGIN PUBLIC KEY" in value else base64.b64decode(value)
    key = (
        serialization.load_pem_public_key(data)
        if data.startswith(b"-----")
        else serialization.load_der_public_key(data)
    )
    if not isinstance(key, ec.EllipticCurvePublicKey):
        raise ValueError("not an elliptic-curve public key")
    return key


def _sendgrid_webhook_key(env: _Env) -> str | None:
    value = env.text("SENDGRID_WEBHOOK_PUBLIC_KEY")
    if value is not None:
        try:
            sendgrid_public_key(value)
        except (ValueError, TypeError, binascii.Error):
            raise ConfigError(
                "SENDGRID_WEBHOOK_PUBLIC_KEY is not an elliptic-curve public key"
                " (paste the verification key SendGrid shows, base64, or a PEM)"
            ) from None
    return value


def _address_guard(env: _Env) -> AddressGuard:
    allow_private = env.boolean("POSTBELL_WEBHOOK_ALLOW_PRIVATE", False)
    try:
        return AddressGuard.from_entries(allow_private, env.csv("POSTBELL_WEBHOOK_ALLOW_ADDRESSES"))
    except ValueError as exc:
        raise ConfigError(f"POSTBELL_WEBHOOK_ALLOW_ADDRESSES: {exc}") from None


def _sns_cert_url_prefixes(env: _Env) -> tuple[str, ...]:
    """SNS_CERT_URL_PREFIXES: where else (an emulator) SNS signing certificates may be
    fetched from. Each is a URL with a host and no credentials; it allows that exact
    scheme, host and port, and paths under its own."""
    prefixes = env.csv("SNS_CERT_URL_PREFIXES")
    for prefix in prefixes:
        try:
            parts = urlsplit(prefix)
            parts.port  # noqa: B018 - raises ValueError on a bad port
        except ValueError:
            raise ConfigError(f"SNS_CERT_URL_PREFIXES: {prefix!r} is not a valid URL") from None
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ConfigError(
                f"SNS_CERT_URL_PREFIXES: {prefix!r} must be an http(s) URL with a host name"
            )
        credentials = parts.username is not None or parts.password is not None
        if credentials or parts.query or parts.fragment:
            raise ConfigError(
                f"SNS_CERT_URL_PREFIXES: {prefix!r} must have no credentials, query or fragment"
            )
    return prefixes


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


def _sendgrid_from_env(env: _Env) -> SendGridSettings | None:
    key = env.text("SENDGRID_API_KEY")
    url = env.url("SENDGRID_API_URL", schemes=("http", "https"))
    if not key:
        return None
    return SendGridSettings(api_key=key, api_url=(url or "https://api.sendgrid.com").rstrip("/"))


def _email_from(env: _Env) -> str:
    """EMAIL_FROM: an address, optionally with a display name (any Unicode); the
    address itself ASCII, as postbell sends without SMTPUTF8."""
    sender = env.text("EMAIL_FROM") or "postbell@localhost"
    _, address = email.utils.parseaddr(sender)
    local, _, domain = address.rpartition("@")
    if not (local and domain and address.isascii() and " " not in address):
        raise ConfigError(
            "EMAIL_FROM must be an email address with an ASCII address, like"
            f" 'Postbell <noreply@example.org>', got {sender!r}"
        )
    return sender


def _ses_from_env(env: _Env) -> SesSettings | None:
    region = env.text("AWS_REGION")
    key_id = env.text("AWS_ACCESS_KEY_ID")
    secret = env.text("AWS_SECRET_ACCESS_KEY")
    url = env.url("SES_ENDPOINT_URL", schemes=("http", "https"))
    if not (region and key_id and secret):
        return None
    configuration_set = env.text("SES_CONFIGURATION_SET")
    if configuration_set is not None and not _SES_NAME.fullmatch(configuration_set):
        raise ConfigError(
            "SES_CONFIGURATION_SET must be 1-64 letters, digits, '-' or '_',"
            f" got {configuration_set!r}"
        )
    endpoint = url or f"https://email.{region}.amazonaws.com"
    return SesSettings(region, key_id, secret, endpoint.rstrip("/"), configuration_set)


_SES_NAME = re.compile(r"[A-Za-z0-9_-]{1,64}")


def _fcm_from_env(env: _Env) -> FcmSettings | None:
    raw = env.text("FCM_CREDENTIALS_JSON")
    name = "FCM_CREDENTIALS_JSON"
    path = env.text("GOOGLE_APPLICATION_CREDENTIALS")
    if raw is None and path is not None:
        name = "GOOGLE_APPLICATION_CREDENTIALS"
        try:
            raw = Path(path).read_text()
        except OSError as exc:
            raise ConfigError(f"{name}: cannot read {path!r} ({exc.strerror})") from None
    if raw is None:
        return None
    try:
        credentials = json.loads(raw)
    except ValueError:
        raise ConfigError(f"{name} is not valid JSON") from None
    if not isinstance(credentials, dict) or credentials.get("type") != "service_account":
        raise ConfigError(f"{name} is not a service-account key (type must be service_account)")
    for field in ("project_id", "private_key", "client_email"):
        if not credentials.get(field):
            raise ConfigError(f"{name} has no {field}")
    url = env.url("FCM_API_URL", schemes=("http", "https"))
    return FcmSettings(credentials=credentials, api_url=url.rstrip("/") if url else None)


_E164 = re.compile(r"^\+[1-9]\d{6,14}$")


def _twilio_from_env(env: _Env) -> TwilioSettings | None:
    sid = env.text("TWILIO_ACCOUNT_SID")
    token = env.text("TWILIO_AUTH_TOKEN")
    sender = env.text("TWILIO_FROM_NUMBER")
    service = env.text("TWILIO_MESSAGING_SERVICE_SID")
    whatsapp = env.text("TWILIO_WHATSAPP_FROM")
    url = env.url("TWILIO_API_URL", schemes=("http", "https"))
    if not (sid or token):
        return None
    if not (sid and token):
        raise ConfigError("TWILIO_ACCOUNT_SID and TWILIO_AUTH_TOKEN must be set together")
    if not (sender or service or whatsapp):
        raise ConfigError(
            "TWILIO_FROM_NUMBER (or TWILIO_MESSAGING_SERVICE_SID, or TWILIO_WHATSAPP_FROM)"
            " must be set"
        )
    if sender and not _E164.match(sender):
        raise ConfigError(f"TWILIO_FROM_NUMBER must be an E.164 number, got {sender!r}")
    if whatsapp is not None:
        whatsapp = whatsapp.removeprefix("whatsapp:")
        if not _E164.match(whatsapp):
            raise ConfigError(
                "TWILIO_WHATSAPP_FROM must be an E.164 number (like +14155238886),"
                f" got {whatsapp!r}"
            )
    return TwilioSettings(
        sid, token, sender, service, url.rstrip("/") if url else None, whatsapp_from=whatsapp
    )


_SENDER_ID = re.compile(r"^(?=.*[A-Za-z])[A-Za-z0-9]{1,11}$")


def _sns_from_env(env: _Env) -> SnsSettings | None:
    """SNS reuses SES's AWS credentials and region; SNS_ENDPOINT_URL points elsewhere."""
    region = env.text("AWS_REGION")
    key_id = env.text("AWS_ACCESS_KEY_ID")
    secret = env.text("AWS_SECRET_ACCESS_KEY")
    url = env.url("SNS_ENDPOINT_URL", schemes=("http", "https"))
    sender_id = env.text("SNS_SENDER_ID")
    origination = env.text("SNS_ORIGINATION_NUMBER")
    if sender_id is not None and not _SENDER_ID.match(sender_id):
        raise ConfigError(
            "SNS_SENDER_ID must be 1-11 letters and digits with at least one letter,"
            f" got {sender_id!r}"
        )
    if origination is not None and not (_E164.match(origination) or origination.isdigit()):
        raise ConfigError(
            f"SNS_ORIGINATION_NUMBER must be an E.164 number or a short code, got {origination!r}"
        )
    if not (region and key_id and secret):
        return None
    endpoint = (url or f"https://sns.{region}.amazonaws.com").rstrip("/")
    return SnsSettings(region, key_id, secret, endpoint, sender_id, origination)


_BOT_TOKEN = re.compile(r"^[0-9]{1,20}:[A-Za-z0-9_-]{20,100}$")


def _telegram_from_env(env: _Env) -> TelegramSettings | None:
    token = env.text("TELEGRAM_BOT_TOKEN")
    url = env.url("TELEGRAM_API_URL", schemes=("http", "https"))
    if token is None:
        return None
    if not _BOT_TOKEN.match(token):
        # Never the value: it is a credential.
        raise ConfigError(
            "TELEGRAM_BOT_TOKEN does not look like a bot token (digits, ':', then"
            " 20-100 letters, digits, '-' or '_', as @BotFather gives it)"
        )
    return TelegramSettings(token, (url or "https://api.telegram.org").rstrip("/"))


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
        from psycopg.conninfo import conninfo_to_dict

        is_url = "://" in raw
        if is_url:
            self.url(name, schemes=("postgres", "postgresql"))
        try:
            params = conninfo_to_dict(raw)
        except Exception:
            # No detail: libpq's message quotes the part it cannot read, maybe the password.
            what = (
                "a URL libpq can read"
                if is_url
                else "a postgres:// URL or a libpq connection string"
            )
            raise ConfigError(f"{name} is not {what}") from None
        for port in str(params.get("port") or "").split(","):  # "a,b": several hosts
            if port and not (port.isdigit() and 1 <= int(port) <= 65535):
                raise ConfigError(f"{name}: the port must be a number from 1 to 65535")
        return raw

    def _check_channel_suffixes(self, prefix: str) -> None:
        """``<prefix>_<CHANNEL>`` for a channel that does not exist is a typo, not a no-op."""
        for name in self._environ:
            if name.startswith(prefix + "_") and name[len(prefix) + 1 :] not in CHANNELS:
                raise ConfigError(
                    f"{name}: no channel {name[len(prefix) + 1 :]!r};"
                    f" the channels are {', '.join(CHANNELS)}"
                )

    def per_channel(self, prefix: str, *, maximum: int | None = None) -> dict[str, int]:
        self._check_channel_suffixes(prefix)
        out: dict[str, int] = {}
        for channel in CHANNELS:
            value = self.integer_or_none(f"{prefix}_{channel}", minimum=1, maximum=maximum)
            if value is not None:
                out[channel] = value
        return out

    def rates(self, prefix: str) -> dict[str, float]:
        self._check_channel_suffixes(prefix)
        out: dict[str, float] = {}
        for channel in CHANNELS:
            rate = self.rate(f"{prefix}_{channel}", None)
            if rate is not None:
                out[channel] = rate
        return out

    def rate(self, name: str, default: float | None, *, off: bool = False) -> float | None:
        """A rate like ``14/s`` or ``100/min``, in per second; with ``off``, the word
        ``off`` turns it off (None)."""
        raw = self.text(name)
        if raw is None:
            return default
        if off and raw.lower() == "off":
            return None
        match = _RATE_RE.match(raw.lower())
        if not match or float(match.group(1)) <= 0:
            hint = " (or 'off')" if off else ""
            raise ConfigError(f"{name} must look like '14/s' or '100/min'{hint}, got {raw!r}")
        return float(match.group(1)) / _RATE_UNITS[match.group(2)]


def _check_range(name: str, value: float, minimum: float | None, maximum: float | None) -> None:
    if minimum is not None and value < minimum:
        raise ConfigError(f"{name} must be at least {minimum}, got {value}")
    if maximum is not None and value > maximum:
        raise ConfigError(f"{name} must be at most {maximum}, got {value}")
