"""The callbacks' checks on values from the network, on their own: where an SNS
certificate may be fetched from, what counts as a signed time, and the window."""

from __future__ import annotations

import datetime as dt

import pytest

from postbell.app.api.callbacks import verify

CERT = "https://sns.eu-west-1.amazonaws.com/SimpleNotificationService-abc123.pem"
EMULATOR = ("http://127.0.0.1:4566",)


@pytest.mark.parametrize(
    ("url", "prefixes", "certificate", "ok"),
    [
        (CERT, (), True, True),
        ("https://sns.cn-north-1.amazonaws.com.cn/SimpleNotificationService-x.pem", (), True, True),
        (
            "https://sns.eu-west-1.amazonaws.com/?Action=ConfirmSubscription&Token=t",
            (),
            False,
            True,
        ),
        # not Amazon's host, or not read as it is written
        (CERT.replace("https://", "http://"), (), True, False),
        (CERT.replace(".com/", ".com:8443/"), (), True, False),
        (CERT.replace(".com/", ".com.evil.example/"), (), True, False),
        ("https://sns.eu-west-1.amazonaws.com@evil.example/x.pem", (), True, False),
        ("https://evil.example\\@sns.eu-west-1.amazonaws.com/x.pem", (), True, False),
        ("https://sns.eu-west-1.amazonaws.com%2eevil.example/x.pem", (), True, False),
        ("https://sns.eu-west-1.am\u0430zonaws.com/x.pem", (), True, False),  # Cyrillic a
        ("https://sns.eu-west-1.amazonaws.com/x.pem#frag", (), True, False),
        (" " + CERT, (), True, False),
        # a certificate is a .pem file without a query
        (CERT.replace(".pem", ".txt"), (), True, False),
        (CERT + "?v=1", (), True, False),
        # an allowed prefix is compared as scheme, host, port and path, never as a string
        ("http://127.0.0.1:4566/cert.pem", EMULATOR, True, True),
        ("http://127.0.0.1:4566/any/depth/cert.pem", EMULATOR, True, True),
        ("http://127.0.0.1:45660/cert.pem", EMULATOR, True, False),
        ("http://127.0.0.1:4566@127.0.0.1:9999/cert.pem", EMULATOR, True, False),
        ("http://127.0.0.1:4566.evil.example/cert.pem", EMULATOR, True, False),
        ("https://127.0.0.1:4566/cert.pem", EMULATOR, True, False),
        ("http://localhost:4566/cert.pem", EMULATOR, True, False),
        ("http://127.0.0.1:4566/certs/a.pem", ("http://127.0.0.1:4566/certs/",), True, True),
        ("http://127.0.0.1:4566/certs-evil/a.pem", ("http://127.0.0.1:4566/certs",), True, False),
        ("http://127.0.0.1:4566/certs/../a.pem", ("http://127.0.0.1:4566/certs/",), True, False),
        ("http://127.0.0.1:80/cert.pem", ("http://127.0.0.1/",), True, True),
    ],
)
def test_sns_url_ok(url: str, prefixes: tuple[str, ...], certificate: bool, ok: bool) -> None:
    """Only an Amazon SNS host over https on its own port, or a URL under an allowed
    prefix (same scheme, host, port, path under its path): nothing that a client could
    read as another host (credentials, backslashes, percent-encoded or look-alike
    hosts) gets through."""
    assert verify.sns_url_ok(url, prefixes, certificate=certificate) is ok


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("2024-05-02T00:54:06.655Z", dt.datetime(2024, 5, 2, 0, 54, 6, 655000, dt.UTC)),
        ("2024-05-02T00:54:06Z", dt.datetime(2024, 5, 2, 0, 54, 6, tzinfo=dt.UTC)),
        ("2024-05-02T00:54:06.655+02:00", None),
        ("2024-13-02T00:54:06.655Z", None),
        ("٢٠٢٤-05-02T00:54:06.655Z", None),
        ("1714611246", None),
        ("", None),
    ],
)
def test_sns_timestamp(value: str, expected: dt.datetime | None) -> None:
    """SNS's own format only (UTC, 'Z'), in ASCII digits; anything else is no time."""
    got = verify.sns_timestamp(value)
    assert got == (expected.timestamp() if expected else None)


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        ("1700000000", 1700000000),
        ("²²²", None),
        ("\uff11\uff17\uff10\uff10", None),
        ("-1", None),
        ("1" * 13, None),
    ],
)
def test_sendgrid_timestamp(header: str, expected: int | None) -> None:
    assert verify.sendgrid_timestamp({verify.SENDGRID_TIMESTAMP: header}) == expected


def test_fresh_is_the_window_behind_and_the_skew_ahead() -> None:
    """Signed up to max_age seconds ago, or at most five minutes ahead of our clock."""
    now = 1_800_000_000.0
    assert [
        verify.fresh(now + offset, now=now, max_age=600) for offset in (-601, -600, 0, 300, 301)
    ] == [False, True, True, True, False]
