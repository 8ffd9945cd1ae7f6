"""The postbell CLI as a user runs it: --help everywhere, one-line config errors,
migrate, keys, send, and a graceful worker stop."""

from __future__ import annotations

import signal
import time

import psycopg
import pytest

from tests.e2e.procs import background, env, run
from tests.e2e.test_processes import poll

COMMANDS = [
    [],
    ["dev"],
    ["serve"],
    ["worker"],
    ["migrate"],
    ["send"],
    ["keys"],
    ["keys", "create"],
    ["keys", "list"],
    ["keys", "revoke"],
    ["db"],
    ["db", "start"],
    ["db", "stop"],
    ["db", "url"],
    ["dead-letters"],
    ["queues"],
    ["schema"],
    ["schema", "dump"],
    ["templates"],
    ["templates", "push"],
    ["templates", "pull"],
    ["templates", "preview"],
]


def test_every_subcommand_is_listed_here() -> None:
    """A new CLI command must be added to COMMANDS (and so get its --help checked)."""
    from postbell.cli import _parser

    parser = _parser()
    actions = [a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction"]
    names = set(actions[0].choices)  # type: ignore[attr-defined]
    assert names == {c[0] for c in COMMANDS if c}


@pytest.mark.parametrize("command", COMMANDS, ids=lambda c: " ".join(c) or "postbell")
def test_every_command_has_help(command: list[str]) -> None:
    result = run(*command, "--help")
    assert result.returncode == 0, result.stderr
    assert "usage: postbell" in result.stdout


def test_bad_configuration_fails_with_one_line_naming_the_variable(database_url: str) -> None:
    result = run("migrate", environ=env(DATABASE_URL=database_url, POSTBELL_DB_POOL_SIZE="many"))
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "POSTBELL_DB_POOL_SIZE" in lines[0], result.stderr


def test_missing_database_url_is_explained(tmp_path) -> None:  # type: ignore[no-untyped-def]
    result = run("migrate", environ=env(POSTBELL_DATA_DIR=str(tmp_path)))
    assert result.returncode == 2
    assert "DATABASE_URL" in result.stderr and len(result.stderr.strip().splitlines()) == 1


def test_migrate_keys_and_send(fresh_database_url: str) -> None:
    environ = env(DATABASE_URL=fresh_database_url)
    assert "database is up to date" in run("migrate", environ=environ).stdout
    created = run("keys", "create", "--role", "send", "--name", "ci", environ=environ)
    assert created.returncode == 0, created.stderr
    key = created.stdout.strip()
    assert key.startswith("pb_")
    listed = run("keys", "list", environ=environ).stdout
    assert "send" in listed and key not in listed
    sent = run(
        "send",
        "--to",
        "user-1,user-2",
        "--channel",
        "IN_APP",
        "Hello from the shell",
        environ=environ,
    )
    assert sent.returncode == 0, sent.stderr
    notification_id, status = sent.stdout.split()
    assert status == "queued"
    with psycopg.connect(fresh_database_url) as conn:
        row = conn.execute(
            "SELECT recipients, body FROM postbell.notifications WHERE id = %s", (notification_id,)
        ).fetchone()
    assert row == (["user-1", "user-2"], "Hello from the shell")
    bad = run("send", "--to", "x", "--channel", "FAX", "hi", environ=environ)
    assert bad.returncode == 2 and "FAX" in bad.stderr


def test_worker_stops_gracefully_on_sigterm(fresh_database_url: str) -> None:
    with background(
        "worker", environ=env(DATABASE_URL=fresh_database_url, POSTBELL_LOG_FORMAT="json")
    ) as proc:
        poll(lambda: "worker_started" in proc.output(), timeout=30)
        assert proc.poll() is None
        started = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
        output = proc.output()
    assert time.monotonic() - started < 15
    assert '"worker_stopped"' in output


def test_queues_and_dead_letters_print_one_line_per_row(fresh_database_url: str) -> None:
    environ = env(DATABASE_URL=fresh_database_url)
    with psycopg.connect(fresh_database_url) as conn:
        conn.execute("SET search_path = postbell")
        recipient = conn.execute(
            "INSERT INTO recipients (external_id) VALUES ('user-9') RETURNING id"
        ).fetchone()
        notification = conn.execute(
            "INSERT INTO notifications (status, body, recipients) VALUES ('routed', 'x', '{user-9}')"
            " RETURNING id"
        ).fetchone()
        assert recipient and notification
        rows = [
            ("EMAIL", "pending", "quiet_hours", "now() + interval '2 hours'", None),
            ("WEBHOOK", "failed", None, "now() - interval '5 minutes'", None),
            ("SMS", "dead", "permanent_error", "NULL", "Twilio said:\nline two\r\n  line three"),
        ]
        for channel, status, reason, due, error in rows:
            conn.execute(
                "INSERT INTO deliveries (notification_id, recipient_id, channel, status, reason,"
                f" next_attempt_at, last_error) VALUES (%s, %s, %s, %s, %s, {due}, %s)",
                (notification[0], recipient[0], channel, status, reason, error),
            )

    queues = run("queues", environ=environ)
    assert queues.returncode == 0, queues.stderr
    lines = queues.stdout.splitlines()
    held = next(line for line in lines if line.startswith("EMAIL"))
    overdue = next(line for line in lines if line.startswith("WEBHOOK"))
    assert " in 1:59:" in held and "-1 day" not in held, queues.stdout
    assert overdue.endswith(" ago") and "0:05:0" in overdue, queues.stdout

    dead = run("dead-letters", environ=environ)
    assert dead.returncode == 0, dead.stderr
    assert dead.stdout.splitlines()[1].endswith("Twilio said: line two line three"), dead.stdout
    assert dead.stdout.splitlines()[2] == "1 dead in all"


def test_schema_dump_prints_the_schema(database_url: str) -> None:
    """`postbell schema dump` on a migrated database prints what sql/schema.sql holds."""
    from pathlib import Path

    result = run("schema", "dump", environ=env(DATABASE_URL=database_url))
    assert result.returncode == 0, result.stderr
    committed = (Path(__file__).resolve().parents[2] / "sql" / "schema.sql").read_text()
    assert result.stdout.splitlines()[8:] == committed.splitlines()[8:]


@pytest.mark.parametrize(
    ("args", "extra", "names"),
    [
        (["worker", "--queues", "email,fax"], {}, "--queues"),
        (["worker", "--concurrency", "0"], {}, "--concurrency"),
        (["serve", "--workers", "0"], {}, "--workers"),
        (["worker"], {"POSTBELL_PROVIDER_RATE_FAX": "1/s"}, "POSTBELL_PROVIDER_RATE_FAX"),
        (["worker"], {"POSTBELL_BATCH_SIZE_EMAIl": "5"}, "POSTBELL_BATCH_SIZE_EMAIl"),
    ],
)
def test_unknown_queues_channels_and_counts_are_refused(
    database_url: str, args: list[str], extra: dict[str, str], names: str
) -> None:
    """A typo is one line naming what is wrong, exit 2, and nothing starts."""
    result = run(*args, environ=env(DATABASE_URL=database_url, **extra), timeout=20)
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and names in lines[0], result.stderr
