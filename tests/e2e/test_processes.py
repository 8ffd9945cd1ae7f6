"""postbell as deployed: `serve` and `worker` processes over real HTTP and SMTP, and
`dev` on an embedded Postgres, as a user starts them."""

from __future__ import annotations

import hashlib
import hmac
import json
import re
import signal
import socket
import time
from pathlib import Path

import httpx

from tests.conftest import ADMIN_KEY
from tests.e2e.procs import background, env, run, wait_http
from tests.peers.net import free_port
from tests.peers.smtp import SmtpPeer

HEADERS = {"Authorization": f"Bearer {ADMIN_KEY}"}


def poll(check, timeout: float = 20.0, interval: float = 0.1):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = check()
        if last:
            return last
        time.sleep(interval)
    raise AssertionError(f"not reached within {timeout}s: {last!r}")


def test_serve_and_worker_processes_deliver_in_app_and_email(
    fresh_database_url: str, smtp: SmtpPeer
) -> None:
    port = free_port()
    environ = env(
        DATABASE_URL=fresh_database_url,
        PORT=str(port),
        POSTBELL_HOST="127.0.0.1",
        POSTBELL_ADMIN_KEY=ADMIN_KEY,
        POSTBELL_POLL_INTERVAL="0.2",
        **smtp.env(),
    )
    base = f"http://127.0.0.1:{port}"
    with background("serve", environ=environ), background("worker", environ=environ):
        wait_http(f"{base}/health")
        with httpx.Client(base_url=base, headers=HEADERS, timeout=10) as client:
            put = client.put(
                "/api/recipients/user-1", json={"email": "ada.e2e@example.org", "name": "Ada"}
            )
            assert put.status_code == 200, put.text
            posted = client.post(
                "/api/notifications",
                json={"to": ["user-1"], "message": "Test", "channels": ["IN_APP", "EMAIL"]},
            )
            assert posted.status_code == 202 and posted.json()["status"] == "queued"
            nid = posted.json()["id"]

            def sent() -> dict | None:  # type: ignore[type-arg]
                body = client.get(f"/api/notifications/{nid}").json()
                return body if body["delivery_counts"] == {"sent": 2} else None

            notification = poll(sent)
            assert sorted((d["channel"], d["status"]) for d in notification["deliveries"]) == [
                ("EMAIL", "sent"),
                ("IN_APP", "sent"),
            ]
            inbox = client.get("/api/inbox/user-1").json()
            assert inbox["unread_count"] == 1 and inbox["items"][0]["body"] == "Test"
        (mail,) = smtp.to("ada.e2e@example.org")
        assert mail.tls and mail.message["Subject"] == "Test"


def test_dev_runs_everything_on_an_embedded_postgres(pg_dir: Path) -> None:
    """`postbell dev` with no DATABASE_URL: embedded Postgres, migrations, API, worker, key."""
    port = free_port()
    environ = env(
        PORT=str(port), POSTBELL_DATA_DIR=str(pg_dir / "data"), POSTBELL_LOG_FORMAT="json"
    )
    base = f"http://127.0.0.1:{port}"
    try:
        with background("dev", environ=environ) as proc:
            wait_http(f"{base}/health", timeout=60, proc=proc)
            key = (pg_dir / "data" / "dev-admin-key").read_text().strip()
            with httpx.Client(
                base_url=base, headers={"Authorization": f"Bearer {key}"}, timeout=10
            ) as client:
                client.put(
                    "/api/recipients/user-1", json={"email": "ada@example.org", "name": "Ada"}
                )
                nid = client.post(
                    "/api/notifications",
                    json={"to": ["user-1"], "message": "Test", "channels": ["IN_APP", "EMAIL"]},
                ).json()["id"]
                counts = poll(
                    lambda: (
                        client.get(f"/api/notifications/{nid}").json()["delivery_counts"]
                        == {"sent": 2}
                    )
                )
                assert counts
                assert client.get("/api/inbox/user-1").json()["unread_count"] == 1
                assert client.get("/schema/openapi.json").status_code == 200
                # The recipient token as the docs compute it opens the inbox in dev.
                secret = (pg_dir / "data" / "dev-inbox-secret").read_text().strip()
                token = hmac.new(secret.encode(), b"user-1", hashlib.sha256).hexdigest()
                inbox = client.get(
                    "/api/inbox/user-1", headers={"Authorization": f"Bearer {token}"}
                )
                assert inbox.status_code == 200 and inbox.json()["unread_count"] == 1
            # Every link of the banner answers.
            for path in ("/api", "/schema", "/schema/openapi.json"):
                assert httpx.get(f"{base}{path}", timeout=10).status_code == 200, path
            proc.send_signal(signal.SIGINT)
            proc.wait(timeout=30)
        output = proc.output()
        assert "is still running" in output and "postbell db stop" in output
        assert f"admin key    {key}" in output
        secret = (pg_dir / "data" / "dev-inbox-secret").read_text().strip()
        assert f"inbox secret {secret}" in output
        assert f"{base}/schema" in output
        assert "Test" not in "".join(line for line in output.splitlines() if line.startswith("{"))
        events = [json.loads(line)["event"] for line in output.splitlines() if line.startswith("{")]
        assert "email_console" in events
        # ... while the terminal shows the developer the email itself (dev only)
        assert "Subject: Test" in output and "email (console, not sent) to Ada" in output
    finally:
        run("db", "stop", environ=environ)


def test_db_commands_and_stale_pid_recovery(pg_dir: Path) -> None:
    environ = env(POSTBELL_DATA_DIR=str(pg_dir))
    started = run("db", "start", environ=environ)
    assert started.returncode == 0, started.stderr
    url = started.stdout.strip()
    assert re.match(r"^postgresql://postgres:@/postbell\?host=", url)
    assert run("db", "url", environ=environ).stdout.strip() == url
    assert run("db", "stop", environ=environ).stdout.strip() == "stopped"
    assert run("db", "url", environ=environ).returncode == 2
    # A crash leaves pid files behind; pid 1 is not a postgres process.
    pgdata = pg_dir / "pg"
    (pgdata / ".handle_pids.json").write_text("[999999, 1]")
    (pgdata / "postmaster.pid").write_text("1\n" + str(pgdata) + "\n0\n5432\n\n\n\n")
    again = run("db", "start", environ=environ)
    assert again.returncode == 0, again.stderr
    assert run("db", "stop", environ=environ).stdout.strip() == "stopped"


def test_a_port_in_use_is_one_line_naming_port(database_url: str, pg_dir: Path) -> None:
    """`serve` and `dev` bind before they say anything: a taken port is one line."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        environ = env(
            DATABASE_URL=database_url,
            PORT=str(port),
            POSTBELL_HOST="127.0.0.1",
            POSTBELL_DATA_DIR=str(pg_dir),
        )
        for command in ("serve", "dev"):
            result = run(command, environ=environ)
            assert result.returncode == 2, (command, result.stderr)
            lines = [line for line in result.stderr.splitlines() if line.startswith("postbell:")]
            assert len(lines) == 1 and f"PORT={port}" in lines[0], (command, result.stderr)
            assert "Traceback" not in result.stderr
            assert "is running" not in result.stdout
