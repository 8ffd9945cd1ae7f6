"""The postbell CLI as a user runs it: --help everywhere, one-line config errors,
migrate, keys, send, and a graceful worker stop."""

from __future__ import annotations

import signal
import time

import psycopg
import pytest

from tests.e2e.procs import background, env, run

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
]


def test_every_subcommand_is_listed_here() -> None:
    """A new CLI command must be added to COMMANDS (and so get its --help checked)."""
    from app.cli import _parser

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
        time.sleep(2.5)
        assert proc.poll() is None
        started = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
        output = proc.output()
    assert time.monotonic() - started < 15
    assert '"worker_stopped"' in output
