"""A deploy whose processes start before their database: `worker` and `serve` keep
running, say once per attempt (one line, no traceback) why the database cannot be
used, and start working when it appears."""

from __future__ import annotations

import json
import uuid

import httpx
import psycopg
import pytest
from psycopg.conninfo import conninfo_to_dict

from tests.e2e.procs import Proc, background, env, wait_http
from tests.e2e.test_processes import poll
from tests.peers.net import free_port
from tests.peers.tcp import TcpForwarder

PASSWORD = "pw-" + uuid.uuid4().hex[:12]


def events(proc: Proc) -> list[dict[str, object]]:
    """Every line the process wrote, each a JSON event (a traceback would not parse)."""
    return [json.loads(line) for line in proc.output().splitlines() if line.strip()]


def test_worker_and_serve_wait_for_a_database_that_comes_later(fresh_database_url: str) -> None:
    target = conninfo_to_dict(fresh_database_url)
    host = str(target.get("host") or "")
    if not host or host.startswith("/"):
        pytest.skip("the forwarder needs a Postgres on TCP")
    forwarder = TcpForwarder(int(target.get("port") or 5432), host)
    user, dbname = target.get("user") or "postgres", target["dbname"]
    late_url = f"postgresql://{user}:{PASSWORD}@127.0.0.1:{forwarder.port}/{dbname}"
    port = free_port()
    environ = env(
        DATABASE_URL=late_url,
        PORT=str(port),
        POSTBELL_HOST="127.0.0.1",
        POSTBELL_POLL_INTERVAL="0.2",
        POSTBELL_LOG_FORMAT="json",
    )
    base = f"http://127.0.0.1:{port}"
    refused = f"cannot connect to 127.0.0.1:{forwarder.port} (connection refused)"
    try:
        with (
            background("worker", environ=environ) as worker,
            background("serve", environ=environ) as web,
        ):
            wait_http(f"{base}/health")  # the API is up without its database
            assert httpx.get(f"{base}/ready", timeout=10).status_code == 503

            def waited(times: int) -> list[dict[str, object]]:
                lines = [e for e in events(worker) if e["event"] == "waiting_for_database"]
                return lines if len(lines) >= times else []

            waiting = poll(lambda: waited(3))
            assert [(e["attempt"], e["error"], e["level"]) for e in waiting[:3]] == [
                (1, refused, "warning"),
                (2, refused, "warning"),
                (3, refused, "warning"),
            ]
            assert worker.poll() is None and web.poll() is None
            assert "worker_started" not in {e["event"] for e in events(worker)}
            # serve: its pool and its listeners retry, each attempt one line saying why
            api_lines = [e for e in events(web) if refused in json.dumps(e)]
            assert api_lines, web.output()
            for proc in (worker, web):
                text = proc.output()
                assert "Traceback" not in text and "Is the server running" not in text
                assert PASSWORD not in text

            forwarder.start()  # the database appears
            poll(lambda: "worker_started" in {e["event"] for e in events(worker)}, timeout=30)
            with psycopg.connect(fresh_database_url, autocommit=True) as conn:
                conn.execute("INSERT INTO postbell.recipients (external_id) VALUES ('late-1')")
                (nid,) = conn.execute(
                    "SELECT postbell.notify(ARRAY['late-1'], '{\"message\": \"late\"}')"
                ).fetchone() or (None,)

                def delivered() -> bool:
                    row = conn.execute(
                        "SELECT status FROM postbell.deliveries WHERE notification_id = %s",
                        (nid,),
                    ).fetchone()
                    return row == ("sent",)

                poll(delivered, timeout=30)
            poll(lambda: httpx.get(f"{base}/ready", timeout=10).status_code == 200, timeout=30)
            assert worker.poll() is None and web.poll() is None
        ready = [e for e in events(worker) if e["event"] == "database_ready"]
        assert len(ready) == 1 and int(str(ready[0]["attempts"])) > 3
    finally:
        forwarder.stop()
