"""The CLI as a careless user (or an attacker) runs it: every way DATABASE_URL can be
wrong, and every bad argument, is one line on stderr and exit status 2; never a
traceback, never a long wait, never the password."""

from __future__ import annotations

import socket
import subprocess
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from urllib.parse import quote

import pytest
from psycopg.conninfo import conninfo_to_dict

from postbell.app.core.channels import CHANNELS
from tests.conftest import create_database, drop_database
from tests.e2e.procs import env, run
from tests.peers.net import free_port

PASSWORD = "pw-" + uuid.uuid4().hex[:12]

#: (name, arguments, needs postbell's schema)
COMMANDS: list[tuple[str, list[str], bool]] = [
    ("migrate", ["migrate"], False),
    ("dev", ["dev"], False),
    ("queues", ["queues"], True),
    ("send", ["send", "--to", "user-1", "hello"], True),
    ("keys create", ["keys", "create", "--role", "admin"], True),
    ("keys list", ["keys", "list"], True),
    ("keys revoke", ["keys", "revoke", "1"], True),
    ("dead-letters", ["dead-letters"], True),
    ("dead-letters --retry", ["dead-letters", "--retry", "1"], True),
    ("schema dump", ["schema", "dump"], True),
]


def url(
    admin_url: str,
    *,
    user: str | None = None,
    host: str | None = None,
    port: int | None = None,
    dbname: str = "postbell",
    query: str = "",
) -> str:
    """A postgres:// URL with a password (trust auth ignores it; no output may show it)."""
    params = conninfo_to_dict(admin_url)
    user = user or str(params.get("user") or "postgres")
    host = host or str(params.get("host") or "127.0.0.1")
    port = port or int(params.get("port") or 5432)
    if host.startswith("/"):  # the embedded server: a socket directory
        extra = f"host={quote(host)}&port={port}" + (f"&{query}" if query else "")
        return f"postgresql://{user}:{PASSWORD}@/{dbname}?{extra}"
    return f"postgresql://{user}:{PASSWORD}@{host}:{port}/{dbname}" + (f"?{query}" if query else "")


@pytest.fixture(scope="module")
def silent_port() -> Iterator[int]:
    """A port where something accepts connections and never says a word."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(64)
        yield int(sock.getsockname()[1])


@pytest.fixture(scope="module")
def empty_database(admin_url: str) -> Iterator[str]:
    """A database that exists and has no postbell schema."""
    name = f"pbtest_empty_{uuid.uuid4().hex[:8]}"
    create_database(admin_url, name)
    yield name
    drop_database(admin_url, name)


def database_cases(
    admin_url: str, silent_port: int, empty_database: str
) -> dict[str, tuple[str, str]]:
    """case -> (DATABASE_URL, what its one line must say)."""
    return {
        # connect_timeout=2 (libpq's least) keeps the suite fast; the CLI's own is 5 s
        "host that does not answer": (
            url(admin_url, host="127.0.0.1", port=silent_port, query="connect_timeout=2"),
            f"cannot connect to 127.0.0.1:{silent_port} (no answer within 2 s)",
        ),
        "unknown host": (
            url(admin_url, host="postbell-db.invalid"),
            "cannot resolve host postbell-db.invalid",
        ),
        "wrong port": (
            url(admin_url, host="127.0.0.1", port=(port := free_port())),
            f"cannot connect to 127.0.0.1:{port} (connection refused)",
        ),
        "unknown database": (
            url(admin_url, dbname="pbtest_no_such_database"),
            'database "pbtest_no_such_database" does not exist',
        ),
        "wrong user": (url(admin_url, user="pbtest_no_such_role"), "pbtest_no_such_role"),
        "unmigrated database": (
            url(admin_url, dbname=empty_database),
            f"database \"{empty_database}\" has no postbell schema; run 'postbell migrate'",
        ),
    }


CASES = [
    "host that does not answer",
    "unknown host",
    "wrong port",
    "unknown database",
    "wrong user",
    "unmigrated database",
]


@pytest.mark.parametrize("case", CASES)
def test_a_database_that_cannot_be_used_is_one_line_naming_database_url(
    case: str, admin_url: str, silent_port: int, empty_database: str, tmp_path: Path
) -> None:
    """Every one-shot command, on every kind of unusable DATABASE_URL: exit 2, one
    stderr line ``postbell: DATABASE_URL: <why>``, nothing on stdout, no traceback, no
    password. (The commands of a case run side by side; no time is asserted.)"""
    database_url, says = database_cases(admin_url, silent_port, empty_database)[case]
    environ = env(
        DATABASE_URL=database_url,
        POSTBELL_DATA_DIR=str(tmp_path),
        PORT=str(free_port()),
        POSTBELL_HOST="127.0.0.1",
    )
    # migrate and dev make the schema themselves: an unmigrated database is their job
    commands = [
        (name, args)
        for name, args, needs_schema in COMMANDS
        if needs_schema or case != "unmigrated database"
    ]
    with ThreadPoolExecutor(max_workers=len(commands)) as pool:  # they mostly wait
        results = list(pool.map(lambda c: run(*c[1], environ=environ, timeout=60), commands))
    problems = []
    for (name, _), result in zip(commands, results, strict=True):
        if not _one_line(result, "postbell: DATABASE_URL: ", says):
            problems.append(f"{name}: exit {result.returncode}\n{result.stderr}{result.stdout}")
    assert problems == []


def _one_line(result: subprocess.CompletedProcess[str], prefix: str, says: str) -> bool:
    lines = result.stderr.splitlines()
    output = result.stderr + result.stdout
    return (
        result.returncode == 2
        and len(lines) == 1
        and lines[0].startswith(prefix)
        and says in lines[0]
        and result.stdout == ""
        and "Traceback" not in output
        and PASSWORD not in output
    )


ALL_CHANNELS = f"one of {', '.join(CHANNELS)}"

#: (arguments, what the one line must name)
BAD_ARGUMENTS: list[tuple[list[str], str]] = [
    (["frobnicate"], "invalid choice: 'frobnicate'"),
    (["send", "hello"], "--to"),
    (["send", "--to", "user-1", ""], "MESSAGE"),
    (["send", "--to", "user-1", "   "], "MESSAGE"),
    (["send", "--to", "", "hello"], "--to"),
    (["send", "--to", "user-1,user\x1b[31m", "hello"], "--to: 'user\\x1b[31m': control characters"),
    (["send", "--to", "user\n1", "hello"], "control characters"),
    (["send", "--to", "x" * 256, "hello"], "--to"),
    (["send", "--to", "u", "--channel", "fax", "hello"], f"unknown channel 'fax'; {ALL_CHANNELS}"),
    (["send", "--to", "u", "--channel", "email,", "--channel", "sms,FAX", "hello"], "'FAX'"),
    (["send", "--to", "u", "--priority", "asap", "hello"], "--priority"),
    (["send", "--to", "u", "--title", "t" * 301, "hello"], "--title"),
    (["send", "--to", "u", "--category", "no such", "hello"], "--category"),
    (["keys", "revoke", "abc"], "'abc' is not an id"),
    (["keys", "revoke", "0"], "from 1 to 9223372036854775807"),
    (["keys", "revoke", "99999999999999999999"], "from 1 to 9223372036854775807"),
    (["keys", "create", "--role", "root"], "--role"),
    (["keys", "create", "--name", ""], "--name"),
    (["keys", "create", "--name", "ci\x07"], "--name"),
    (["keys", "create", "--name", "n" * 101], "--name"),
    (["dead-letters", "--limit", "-5"], "--limit"),
    (["dead-letters", "--limit", "0"], "--limit"),
    (["dead-letters", "--limit", "501"], "--limit"),
    (["dead-letters", "--limit", "99999999999999999999"], "--limit"),
    (["dead-letters", "--limit", "ten"], "--limit"),
    (["dead-letters", "--retry", "99999999999999999999"], "--retry"),
    (["dead-letters", "--retry", "0"], "--retry"),
    (["dead-letters", "--retry", "-1"], "--retry"),
    (["dead-letters", "--retry", "1.5"], "--retry"),
    (["dead-letters", "--retry", "1", "--channel", "EMAIL"], "--retry takes ids only"),
    (["dead-letters", "--retry", "1", "--retry-all"], "not allowed with"),
    (["dead-letters", "--older-than", "100000000d"], "--older-than reaches back at most"),
    (["dead-letters", "--older-than", "9" * 400], "--older-than reaches back at most"),
    (["dead-letters", "--older-than", "yesterday"], "--older-than must be"),
    (["dead-letters", "--channel", "fax"], f"--channel: unknown channel 'fax'; {ALL_CHANNELS}"),
    (["dead-letters", "--reason", "a\x01b"], "--reason"),
    (["queues", "--interval", "0"], "--interval"),
    (["queues", "--interval", "-1"], "--interval"),
    (["queues", "--interval", "nan"], "--interval"),
    (["queues", "--interval", "inf"], "--interval"),
    (["worker", "--concurrency", "100000"], "--concurrency"),
    (["serve", "--workers", "1000"], "--workers"),
    (["schema", "dump", "--output", "/nonexistent/dir/schema.sql"], "--output"),
]


def test_a_bad_argument_is_one_line_naming_it(database_url: str) -> None:
    """Out of range, not a number, not an id (1..2**63-1), empty, control characters,
    unknown names: one line naming the argument, exit 2, nothing on stdout. (The
    cases run side by side: each is a process start.)"""
    environ = env(DATABASE_URL=database_url)
    with ThreadPoolExecutor(max_workers=4) as pool:
        results = list(pool.map(lambda c: run(*c[0], environ=environ, timeout=30), BAD_ARGUMENTS))
    problems = [
        f"{args!r} (should name {names!r}): exit {result.returncode}\n{result.stderr}"
        for (args, names), result in zip(BAD_ARGUMENTS, results, strict=True)
        if not _one_line(result, "postbell", names)
    ]
    assert problems == []


def test_web_concurrency_is_read_as_configuration(database_url: str) -> None:
    """WEB_CONCURRENCY (the default of serve --workers) is checked like every variable;
    it no longer breaks every command, --help included, when it is not a number."""
    environ = env(DATABASE_URL=database_url, WEB_CONCURRENCY="lots")
    assert run("serve", "--help", environ=environ).returncode == 0
    result = run("serve", environ=environ, timeout=30)
    assert _one_line(result, "postbell: WEB_CONCURRENCY", "must be an integer"), result.stderr
