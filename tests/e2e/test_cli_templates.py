"""postbell templates push / pull / preview as a user runs them, on the community
app's own templates in examples/templates/."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import psycopg

from tests.e2e.procs import env, run

EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "templates"
KEYS = [
    "event-announced",
    "event-registration-confirmed",
    "event-reminder",
    "join-request-approved",
    "join-request-received",
    "reply-to-your-post",
]


def test_examples_push_pull_round_trip(fresh_database_url: str, tmp_path: Path) -> None:
    """Every example pushes (so validates) in English and German; a second push saves
    nothing; pull writes the same templates back; pushing the pulled files saves
    nothing either."""
    assert sorted(p.stem for p in EXAMPLES.glob("*.json")) == KEYS
    for path in EXAMPLES.glob("*.json"):
        assert sorted(json.loads(path.read_text())["locales"]) == ["de", "en"], path
    environ = env(DATABASE_URL=fresh_database_url)
    first = run("templates", "push", str(EXAMPLES), environ=environ)
    assert first.returncode == 0, first.stderr
    assert first.stdout.splitlines() == [f"{k} v1 saved" for k in KEYS]
    again = run("templates", "push", str(EXAMPLES), environ=environ)
    assert again.stdout.splitlines() == [f"{k} v1 unchanged" for k in KEYS]

    pulled = tmp_path / "pulled"
    out = run("templates", "pull", str(pulled), environ=environ)
    assert out.returncode == 0, out.stderr
    for key in KEYS:
        assert json.loads((pulled / f"{key}.json").read_text()) == json.loads(
            (EXAMPLES / f"{key}.json").read_text()
        )
    assert run("templates", "pull", str(pulled), environ=environ).stdout.splitlines() == [
        f"{k} v1 unchanged" for k in KEYS
    ]
    assert run("templates", "push", str(pulled), environ=environ).stdout.splitlines() == [
        f"{k} v1 unchanged" for k in KEYS
    ]

    edited = tmp_path / "edited"
    shutil.copytree(EXAMPLES, edited)
    path = edited / "event-reminder.json"
    body = json.loads(path.read_text())
    body["locales"]["de"]["PUSH"]["title"] = "Bald: {{ event.title }}"
    path.write_text(json.dumps(body))
    lines = run("templates", "push", str(edited), environ=environ).stdout.splitlines()
    assert "event-reminder v2 saved" in lines and "event-announced v1 unchanged" in lines
    with psycopg.connect(fresh_database_url) as conn:
        row = conn.execute(
            "SELECT active_version FROM postbell.templates WHERE key = 'event-reminder'"
        ).fetchone()
    assert row == (2,)


def test_preview_prints_the_text(fresh_database_url: str, tmp_path: Path) -> None:
    """preview renders one channel in a locale with the data of a file and prints it."""
    environ = env(DATABASE_URL=fresh_database_url)
    assert run("templates", "push", str(EXAMPLES), environ=environ).returncode == 0
    data = tmp_path / "data.json"
    data.write_text(
        json.dumps(
            {
                "community": "Schachclub",
                "event": {
                    "title": "Spieleabend",
                    "starts_at": "2027-01-15T19:00:00Z",
                    "url": "https://example.org/e/2",
                },
            }
        )
    )
    out = run(
        "templates",
        "preview",
        "event-announced",
        "--locale",
        "de",
        "--channel",
        "email",
        "--data",
        str(data),
        environ=environ,
    )
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[0] == "template event-announced v1, locale de, EMAIL"
    assert lines[1] == "subject: Spieleabend — Schachclub"
    assert "Schachclub hat eine neue Veranstaltung: Spieleabend." in out.stdout
    assert "<p>" not in out.stdout  # the text part; --html adds the HTML
    # from a file, without the database
    offline = run(
        "templates",
        "preview",
        "join-request-approved",
        "--from",
        str(EXAMPLES),
        "--channel",
        "SMS",
        environ=env(),
    )
    assert offline.returncode == 0, offline.stderr
    assert "Welcome to Chess club!" in offline.stdout


def test_errors_are_one_line(fresh_database_url: str, tmp_path: Path) -> None:
    """A broken file, an unknown template or channel: one line naming it, exit 2."""
    environ = env(DATABASE_URL=fresh_database_url)
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "bad.json").write_text(
        json.dumps({"default_locale": "en", "locales": {"en": {"SMS": {"body": "{{ x.y }"}}}})
    )
    for args in [
        ("templates", "push", str(broken)),
        ("templates", "push", str(tmp_path / "missing")),
        ("templates", "preview", "nope", "--channel", "SMS"),
        ("templates", "preview", "nope", "--channel", "FAX"),
    ]:
        result = run(*args, environ=environ)
        assert result.returncode == 2, (args, result.stdout)
        assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    result = run("templates", "push", str(broken), environ=environ)
    assert "bad.json" in result.stderr and "locale en SMS body line 1" in result.stderr
