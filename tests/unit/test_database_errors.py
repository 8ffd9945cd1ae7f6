"""Why the database cannot be used, in one line: what the CLI prints after
``DATABASE_URL:`` and what serve and worker log once per attempt."""

from __future__ import annotations

import psycopg
import psycopg_pool
import pytest

from postbell.app.core.db import describe_error, with_connect_timeout

URL = "postgresql://ada:pa55-w0rd@db.internal:6543/app"

CASES = [
    (
        psycopg.OperationalError(
            'connection failed: connection to server at "127.0.0.1", port 1 failed: Connection'
            " refused\n\tIs the server running on that host and accepting TCP/IP connections?"
        ),
        "cannot connect to 127.0.0.1:1 (connection refused)",
    ),
    (
        psycopg.OperationalError(
            'connection failed: connection to server at "db.internal" (10.0.0.7), port 6543'
            ' failed: FATAL:  database "app" does not exist'
        ),
        'database "app" does not exist (server db.internal:6543)',
    ),
    (
        psycopg.OperationalError(
            'connection failed: connection to server at "::1", port 5432 failed: FATAL:  '
            'password authentication failed for user "ada"'
        ),
        'password authentication failed for user "ada" (server [::1]:5432)',
    ),
    (
        psycopg.OperationalError(
            "failed to resolve host 'db.invalid': [Errno -2] Name or service not known"
        ),
        "cannot resolve host db.invalid (name or service not known)",
    ),
    (
        psycopg.OperationalError(
            'connection is bad: connection to server on socket "/run/pg/.s.PGSQL.5432" failed:'
            " No such file or directory\n\tIs the server running locally?"
        ),
        "cannot connect to socket /run/pg/.s.PGSQL.5432 (no such file or directory)",
    ),
    (
        psycopg.errors.ConnectionTimeout("connection timeout expired"),
        "cannot connect to db.internal:6543 (timed out)",
    ),
    (
        psycopg_pool.PoolTimeout("couldn't get a connection after 30.00 sec"),
        "no connection from the pool within 30 s (the database is unreachable or busy)",
    ),
    (
        psycopg.OperationalError('connection is bad: invalid percent-encoded token: "pa55-w0rd"'),
        'invalid percent-encoded token: "***"',
    ),
    (KeyError("channel"), "KeyError: 'channel'"),
]


@pytest.mark.parametrize(("error", "expected"), CASES, ids=[c[1][:40] for c in CASES])
def test_one_line_without_hints_or_the_password(error: Exception, expected: str) -> None:
    assert describe_error(error, URL) == expected


def test_the_database_error_behind_a_wrapper_is_described() -> None:
    """procrastinate raises its own ConnectorException from psycopg's error."""
    try:
        try:
            raise psycopg.OperationalError('connection to server at "h", port 1 failed: Timeout')
        except psycopg.OperationalError as cause:
            raise RuntimeError("Database error.") from cause
    except RuntimeError as wrapper:
        assert describe_error(wrapper) == "cannot connect to h:1 (timeout)"


def test_a_short_connect_timeout_unless_the_url_has_one() -> None:
    assert "connect_timeout=5" in with_connect_timeout(URL, 5)
    assert "connect_timeout=30" in with_connect_timeout(URL + "?connect_timeout=30", 5)
    assert describe_error(
        psycopg.errors.ConnectionTimeout("connection timeout expired"),
        with_connect_timeout(URL, 5),
    ) == ("cannot connect to db.internal:6543 (no answer within 5 s)")
