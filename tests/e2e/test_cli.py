"""The postbell CLI as a user runs it: --help everywhere, one-line config errors,
migrate, keys, send, and a graceful worker stop."""

from __future__ import annotations

import datetime as dt
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
    ["replay"],
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


def test_replay_dry_run_then_once_per_key(fresh_database_url: str) -> None:
    """`postbell replay`: a dry run counts and changes nothing; the replay puts the
    delivery back to pending with its replay id and a timeline event; running it again
    with the same --key sends nothing more; bad options fail with one line naming them."""
    environ = env(DATABASE_URL=fresh_database_url)
    assert run("migrate", environ=environ).returncode == 0
    with psycopg.connect(fresh_database_url) as conn:
        conn.execute("SET search_path = postbell")
        recipient = conn.execute(
            "INSERT INTO recipients (external_id, webhook_url)"
            " VALUES ('user-7', 'https://hooks.example.org/7') RETURNING id"
        ).fetchone()
        notification = conn.execute(
            "INSERT INTO notifications (status, body, recipients) VALUES ('routed', 'x', '{user-7}')"
            " RETURNING id"
        ).fetchone()
        assert recipient and notification
        delivery = conn.execute(
            "INSERT INTO deliveries (notification_id, recipient_id, channel, status, reason)"
            " VALUES (%s, %s, 'WEBHOOK', 'dead', 'retries_exhausted') RETURNING id",
            (notification[0], recipient[0]),
        ).fetchone()
        assert delivery

    # Relative times (1h, now) would move between the two keyed runs, and a key used
    # with a different request is refused: a keyed replay names fixed times.
    now = dt.datetime.now(dt.UTC)
    start, end = (
        (now - dt.timedelta(hours=1)).isoformat(),
        (now + dt.timedelta(minutes=5)).isoformat(),
    )
    window = ["--channel", "webhook", "--from", start, "--to", end]
    relative = run(
        "replay",
        "--channel",
        "WEBHOOK",
        "--from",
        "1h",
        "--to",
        "now",
        "--dry-run",
        environ=environ,
    )
    assert relative.stdout.strip() == "dry run: 1 delivery would be sent again", relative.stderr
    dry = run("replay", *window, "--status", "dead", "--dry-run", environ=environ)
    assert dry.returncode == 0, dry.stderr
    assert dry.stdout.strip() == "dry run: 1 delivery would be sent again"
    first = run("replay", *window, "--recipient", "user-7", "--key", "k1", environ=environ)
    assert first.returncode == 0, first.stderr
    replay_id = first.stdout.split()[1].rstrip(":")
    assert first.stdout.strip() == f"replay {replay_id}: 1 delivery sent again"
    again = run("replay", *window, "--recipient", "user-7", "--key", "k1", environ=environ)
    assert again.returncode == 0, again.stderr
    assert "nothing more" in again.stdout and replay_id in again.stdout
    with psycopg.connect(fresh_database_url) as conn:
        conn.execute("SET search_path = postbell")
        row = conn.execute(
            "SELECT status, replay_id::text, attempts FROM deliveries WHERE id = %s", (delivery[0],)
        ).fetchone()
        events = conn.execute(
            "SELECT kind, outcome, detail ->> 'previous_status' FROM delivery_events"
            " WHERE delivery_id = %s",
            (delivery[0],),
        ).fetchall()
        jobs = conn.execute(
            "SELECT queue_name, priority FROM procrastinate_jobs WHERE task_name = 'postbell.deliver'"
        ).fetchall()
    assert row == ("pending", replay_id, 0)
    assert events == [("replay", "pending", "dead")]
    assert jobs == [("webhook", 0)]  # low priority

    backwards = run(
        "replay", "--channel", "WEBHOOK", "--from", "now", "--to", "1h", environ=environ
    )
    assert backwards.returncode == 2
    assert backwards.stderr.strip().splitlines()[-1].endswith("--from: from must be before to")
    lost = run("replay", *window, "--status", "lost", environ=environ)
    assert lost.returncode == 2 and "--status" in lost.stderr, lost.stderr
    missing = run("replay", "--channel", "WEBHOOK", environ=environ)
    assert missing.returncode == 2 and "--from" in missing.stderr, missing.stderr


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
