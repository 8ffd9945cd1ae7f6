"""Configuration is read once; a bad value fails with one line naming the variable."""

from __future__ import annotations

import pytest

from postbell.app.core.settings import ConfigError, Settings


def test_defaults_without_any_variable() -> None:
    """An empty environment is valid: dev-friendly defaults, no channel configured but IN_APP."""
    settings = Settings.from_env({})
    assert (settings.port, settings.db_pool_size, settings.retry_max_attempts) == (8000, 10, 8)
    assert settings.email_provider is None
    assert settings.log_format == "json"
    assert (settings.callback_max_age_seconds, settings.sns_cert_url_prefixes) == (3900, ())


def test_dev_defaults_to_console_email_and_pretty_logs() -> None:
    settings = Settings.from_env({}, dev=True)
    assert (settings.email_provider, settings.log_format, settings.host) == (
        "console",
        "console",
        "127.0.0.1",
    )


def test_smtp_host_selects_smtp_provider() -> None:
    settings = Settings.from_env({"SMTP_HOST": "mail.example.org", "SMTP_PASSWORD": "pw"})
    assert settings.email_provider == "smtp"
    assert settings.smtp is not None and settings.smtp.port == 587 and settings.smtp.starttls
    assert "pw" not in repr(settings)


@pytest.mark.parametrize(
    ("env", "variable"),
    [
        ({"PORT": "eighty"}, "PORT"),
        ({"SENDGRID_WEBHOOK_PUBLIC_KEY": "not-a-key"}, "SENDGRID_WEBHOOK_PUBLIC_KEY"),
        ({"SENDGRID_WEBHOOK_PUBLIC_KEY": "aGVsbG8="}, "SENDGRID_WEBHOOK_PUBLIC_KEY"),
        ({"POSTBELL_RATE_LIMIT_KEY": "lots"}, "POSTBELL_RATE_LIMIT_KEY"),
        ({"POSTBELL_MAX_STREAMS_PER_RECIPIENT": "0"}, "POSTBELL_MAX_STREAMS_PER_RECIPIENT"),
        ({"PORT": "70000"}, "PORT"),
        ({"DATABASE_URL": "mysql://x/y"}, "DATABASE_URL"),
        ({"DATABASE_URL": "postgresql://u:pw@db:port/x"}, "DATABASE_URL"),
        ({"DATABASE_URL": "postgresql://u:pw@db:99999/x"}, "DATABASE_URL"),
        ({"DATABASE_URL": "host=db port=abc"}, "DATABASE_URL"),
        ({"DATABASE_URL": "postgresql://u:pw@db/x?no_such_option=1"}, "DATABASE_URL"),
        ({"WEB_CONCURRENCY": "lots"}, "WEB_CONCURRENCY"),
        ({"WEB_CONCURRENCY": "0"}, "WEB_CONCURRENCY"),
        ({"WEB_CONCURRENCY": "1000"}, "WEB_CONCURRENCY"),
        ({"POSTBELL_WORKER_CONCURRENCY": "100000"}, "POSTBELL_WORKER_CONCURRENCY"),
        ({"POSTBELL_PUBLIC_URL": "ftp://example.org"}, "POSTBELL_PUBLIC_URL"),
        ({"POSTBELL_DB_POOL_SIZE": "0"}, "POSTBELL_DB_POOL_SIZE"),
        ({"POSTBELL_EMAIL_PROVIDER": "pigeon"}, "POSTBELL_EMAIL_PROVIDER"),
        ({"POSTBELL_EMAIL_PROVIDER": "smtp"}, "POSTBELL_EMAIL_PROVIDER"),
        ({"SMTP_HOST": "h", "SMTP_STARTTLS": "maybe"}, "SMTP_STARTTLS"),
        ({"SMTP_HOST": "h", "SMTP_CA_FILE": "/nonexistent.pem"}, "SMTP_CA_FILE"),
        ({"POSTBELL_PROVIDER_RATE_SMS": "fast"}, "POSTBELL_PROVIDER_RATE_SMS"),
        ({"POSTBELL_RETRY_MAX_ATTEMPTS_EMAIL": "-1"}, "POSTBELL_RETRY_MAX_ATTEMPTS_EMAIL"),
        ({"POSTBELL_ADMIN_KEY": "short"}, "POSTBELL_ADMIN_KEY"),
        ({"POSTBELL_LOG_FORMAT": "xml"}, "POSTBELL_LOG_FORMAT"),
        ({"EMAIL_FROM": "not an address"}, "EMAIL_FROM"),
        ({"EMAIL_FROM": "Zoë <zoë@example.org>"}, "EMAIL_FROM"),
        ({"POSTBELL_CALLBACK_MAX_AGE_SECONDS": "soon"}, "POSTBELL_CALLBACK_MAX_AGE_SECONDS"),
        ({"POSTBELL_CALLBACK_MAX_AGE_SECONDS": "30"}, "POSTBELL_CALLBACK_MAX_AGE_SECONDS"),
        ({"POSTBELL_CALLBACK_MAX_AGE_SECONDS": "999999"}, "POSTBELL_CALLBACK_MAX_AGE_SECONDS"),
        ({"SNS_CERT_URL_PREFIXES": "ftp://127.0.0.1/"}, "SNS_CERT_URL_PREFIXES"),
        ({"SNS_CERT_URL_PREFIXES": "localhost:4566"}, "SNS_CERT_URL_PREFIXES"),
        ({"SNS_CERT_URL_PREFIXES": "http://u:p@127.0.0.1:4566/"}, "SNS_CERT_URL_PREFIXES"),
        ({"SNS_CERT_URL_PREFIXES": "http://127.0.0.1:99999/"}, "SNS_CERT_URL_PREFIXES"),
        ({"SNS_CERT_URL_PREFIXES": "http://127.0.0.1:4566/?x=1"}, "SNS_CERT_URL_PREFIXES"),
        (
            {
                "AWS_REGION": "eu-west-1",
                "AWS_ACCESS_KEY_ID": "AKIDEXAMPLE",
                "AWS_SECRET_ACCESS_KEY": "secret",
                "SES_CONFIGURATION_SET": "has spaces",
            },
            "SES_CONFIGURATION_SET",
        ),
    ],
)
def test_bad_value_names_the_variable(env: dict[str, str], variable: str) -> None:
    with pytest.raises(ConfigError) as raised:
        Settings.from_env(env)
    message = str(raised.value)
    assert variable in message
    assert "\n" not in message


@pytest.mark.parametrize(
    "url", ["postgresql://ada:s3cr%zz@db/x", "host=db password=s3cr et", "password='s3cr"]
)
def test_an_unreadable_database_url_is_refused_without_quoting_it(url: str) -> None:
    """libpq's own message quotes the part it cannot read, which may be the password."""
    with pytest.raises(ConfigError) as raised:
        Settings.from_env({"DATABASE_URL": url})
    assert "DATABASE_URL" in str(raised.value) and "s3cr" not in str(raised.value)


def test_a_database_url_with_several_hosts_is_fine() -> None:
    url = "postgresql://ada@db1:5432,db2/x?target_session_attrs=read-write"
    assert Settings.from_env({"DATABASE_URL": url}).database_url == url


def test_rates_and_per_channel_overrides() -> None:
    settings = Settings.from_env(
        {
            "POSTBELL_PROVIDER_RATE_SMS": "1/s",
            "POSTBELL_PROVIDER_RATE_EMAIL": "120/min",
            "POSTBELL_RETRY_MAX_ATTEMPTS_EMAIL": "3",
            "POSTBELL_BATCH_SIZE_PUSH": "900",
        }
    )
    assert settings.provider_rates == {"SMS": 1.0, "EMAIL": 2.0}
    assert (settings.max_attempts("EMAIL"), settings.max_attempts("SMS")) == (3, 8)
    assert settings.batch_size_for("PUSH") == 500  # FCM's limit wins


def test_email_from_takes_a_unicode_display_name() -> None:
    settings = Settings.from_env({"EMAIL_FROM": "Zoë's Club <club@example.org>"})
    assert settings.email_from == "Zoë's Club <club@example.org>"


def test_callback_window_and_certificate_prefixes() -> None:
    """The freshness window is read in seconds; the provider event ids outlive it by
    twice the allowed clock skew; certificate prefixes are kept as written."""
    settings = Settings.from_env(
        {
            "POSTBELL_CALLBACK_MAX_AGE_SECONDS": "600",
            "SNS_CERT_URL_PREFIXES": "http://127.0.0.1:4566/, https://sns.local/certs",
        }
    )
    assert (settings.callback_max_age_seconds, settings.provider_event_keep_seconds) == (600, 1200)
    assert settings.sns_cert_url_prefixes == ("http://127.0.0.1:4566/", "https://sns.local/certs")


def test_telegram_token_is_checked_and_never_repeated() -> None:
    """A malformed bot token stops with a line that names the variable, not the value;
    a good one never shows in the settings' repr."""
    with pytest.raises(ConfigError) as caught:
        Settings.from_env({"TELEGRAM_BOT_TOKEN": "not-a-token-hunter2"})
    assert "TELEGRAM_BOT_TOKEN" in str(caught.value) and "hunter2" not in str(caught.value)
    token = "123456789:AAEhBOweik6ad9r_QXMENQjcrGbqCr4K-ra"
    settings = Settings.from_env({"TELEGRAM_BOT_TOKEN": token})
    assert settings.telegram is not None and settings.telegram.api_url == "https://api.telegram.org"
    assert token not in repr(settings)
    assert settings.provider_rate("TELEGRAM") == 25.0  # Telegram's pace without a setting
    paced = Settings.from_env(
        {"TELEGRAM_BOT_TOKEN": token, "POSTBELL_PROVIDER_RATE_TELEGRAM": "5/s"}
    )
    assert paced.provider_rate("TELEGRAM") == 5.0


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"SNS_SENDER_ID": "Too-Long-Sender"}, "SNS_SENDER_ID must be 1-11 letters"),
        ({"SNS_SENDER_ID": "12345"}, "SNS_SENDER_ID must be 1-11 letters"),
        ({"SNS_ORIGINATION_NUMBER": "call me"}, "SNS_ORIGINATION_NUMBER must be an E.164"),
        ({"SNS_ENDPOINT_URL": "ftp://x"}, "SNS_ENDPOINT_URL must be a http/https URL"),
        ({"POSTBELL_SMS_PROVIDER": "carrier-pigeon"}, "POSTBELL_SMS_PROVIDER must be one of"),
        ({"POSTBELL_SMS_PROVIDER": "twilio"}, "POSTBELL_SMS_PROVIDER=twilio needs"),
        (
            {"TWILIO_ACCOUNT_SID": "AC1", "TWILIO_AUTH_TOKEN": "t", "TWILIO_WHATSAPP_FROM": "x"},
            "TWILIO_WHATSAPP_FROM must be an E.164 number",
        ),
        ({"POSTBELL_APPRISE_THREADS": "0"}, "POSTBELL_APPRISE_THREADS must be at least 1"),
        ({"POSTBELL_BATCH_SIZE_SIGNAL": "5"}, "no channel 'SIGNAL'"),
    ],
)
def test_new_channel_settings_are_checked(env: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        Settings.from_env(env)


def test_sns_settings_reuse_the_aws_credentials() -> None:
    """SNS takes SES's AWS_* variables; its endpoint follows the region unless set."""
    settings = Settings.from_env(
        {
            "AWS_REGION": "ap-south-1",
            "AWS_ACCESS_KEY_ID": "AKID",
            "AWS_SECRET_ACCESS_KEY": "secret-value",
            "POSTBELL_SMS_PROVIDER": "sns",
            "SNS_SENDER_ID": "Postbell",
        }
    )
    assert settings.sns is not None
    assert (settings.sms_provider, settings.sns.endpoint_url, settings.sns.sender_id) == (
        "sns",
        "https://sns.ap-south-1.amazonaws.com",
        "Postbell",
    )
    assert "secret-value" not in repr(settings)


def test_max_in_flight_has_a_default_a_per_channel_value_and_bounds() -> None:
    settings = Settings.from_env(
        {"POSTBELL_MAX_IN_FLIGHT": "2000", "POSTBELL_MAX_IN_FLIGHT_SLACK": "16"}
    )
    assert settings.max_in_flight_for("WEBHOOK") == 2000
    assert settings.max_in_flight_for("SLACK") == 16
    assert Settings.from_env({}).max_in_flight_for("TEAMS") == 1000
    for name, value in (
        ("POSTBELL_MAX_IN_FLIGHT", "0"),
        ("POSTBELL_MAX_IN_FLIGHT_WEBHOOK", "20001"),
    ):
        with pytest.raises(ConfigError, match=name):
            Settings.from_env({name: value})
    with pytest.raises(ConfigError, match="POSTBELL_MAX_IN_FLIGHT_FAX: no channel"):
        Settings.from_env({"POSTBELL_MAX_IN_FLIGHT_FAX": "5"})
