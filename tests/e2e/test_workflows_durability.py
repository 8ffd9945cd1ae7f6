"""Workflow runs survive a worker SIGKILL and a Postgres restart: runs waiting on a
delay and an open digest, and a backlog of due runs cut off mid-way, all finish
once the worker and the database are back — each run's step sent exactly once."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path
from typing import Any

import psycopg
import pytest

from postbell.app.core import embedded
from tests.e2e.procs import background, env, run
from tests.e2e.test_processes import poll

pytestmark = pytest.mark.slow

BACKLOG = 5_000  # runs of one trigger: ten engine rounds of 500

#: Stored as the API stores them (PUT /api/workflows validates the same steps).
WORKFLOWS: dict[str, list[dict[str, Any]]] = {
    "wf-delay": [
        {"type": "delay", "for": "4s"},
        {"type": "send", "channels": ["IN_APP"], "message": "after the delay"},
    ],
    "wf-digest": [
        {"type": "digest", "window": "4s"},
        {"type": "send", "channels": ["IN_APP"], "message": "{{ count }} events"},
    ],
    "wf-now": [{"type": "send", "channels": ["IN_APP"], "message": "at once"}],
}


def sql(url: str, statement: str, params: Any = None) -> list[Any]:
    with psycopg.connect(url, autocommit=True) as conn:
        cur = conn.execute(statement, params)
        return cur.fetchall() if cur.description else []


def states(url: str) -> dict[tuple[str, str], int]:
    rows = sql(
        url, "SELECT workflow_key, state, count(*) FROM postbell.workflow_runs GROUP BY 1, 2"
    )
    return {(w, s): n for w, s, n in rows}


def test_waits_and_a_cut_off_backlog_survive_sigkill_and_a_postgres_restart(
    pg_dir: Path,
) -> None:
    """Runs wait on a 4 s delay (10) and in an open digest (5 triggers); a trigger of
    5,000 runs is being advanced when the worker is SIGKILLed; then Postgres stops
    and starts again. A new worker finishes everything: every run done, each delay
    run's send made once, one digest of 5, and each of the 5,000 recipients in
    exactly one notification of the backlog's step (no duplicate, none missing)."""
    pgdata = pg_dir / "pg"
    url = embedded.start(pgdata)
    environ = env(DATABASE_URL=url, POSTBELL_POLL_INTERVAL="0.2", POSTBELL_LOG_FORMAT="json")
    try:
        assert run("migrate", environ=environ).returncode == 0
        for key, steps in WORKFLOWS.items():
            sql(url, "INSERT INTO postbell.workflows (key, version) VALUES (%s, 1)", (key,))
            sql(
                url,
                "INSERT INTO postbell.workflow_versions (workflow_key, version, steps)"
                " VALUES (%s, 1, %s::jsonb)",
                (key, json.dumps(steps)),
            )
        sql(
            url,
            "SELECT postbell.trigger('wf-delay', ARRAY(SELECT 'd' || i FROM generate_series(1, 10) i))",
        )
        for n in range(5):
            sql(
                url,
                "SELECT postbell.trigger('wf-digest', ARRAY['reader'], %s::jsonb)",
                (json.dumps({"n": n}),),
            )
        with background("worker", environ=environ) as victim:
            poll(lambda: states(url).get(("wf-digest", "digesting")) == 5, timeout=30)
            sql(
                url,
                "SELECT postbell.trigger('wf-now', ARRAY(SELECT 'n' || i FROM generate_series(1, %s) i))",
                (BACKLOG,),
            )
            poll(lambda: states(url).get(("wf-now", "done"), 0) > 0, timeout=30, interval=0.01)
            os.kill(victim.pid, signal.SIGKILL)
            victim.wait(10)
        before = states(url)
        assert before.get(("wf-delay", "waiting")) == 10  # still waiting on the delay
        assert before.get(("wf-digest", "digesting")) == 5  # the digest still open
        assert 0 < before.get(("wf-now", "done"), 0) < BACKLOG  # cut off mid-backlog
        embedded.stop(pgdata)
        url = embedded.start(pgdata)
        with background("worker", environ=env(**{**environ, "DATABASE_URL": url})):

            def finished() -> bool:
                now = states(url)
                return all(state == "done" for (_, state) in now) and sum(now.values()) == (
                    10 + 5 + BACKLOG
                )

            poll(finished, timeout=120, interval=0.2)
        made = {
            key: sql(
                url,
                "SELECT r, count(*) FROM postbell.notifications AS n,"
                " unnest(n.recipients) AS r WHERE n.metadata -> 'workflow' ->> 'key' = %s"
                " GROUP BY r",
                (key,),
            )
            for key in WORKFLOWS
        }
        bodies = sql(
            url,
            "SELECT body FROM postbell.notifications"
            " WHERE metadata -> 'workflow' ->> 'key' = 'wf-digest'",
        )
    finally:
        embedded.stop(pgdata)
    assert sorted(made["wf-delay"]) == sorted((f"d{i}", 1) for i in range(1, 11))
    assert made["wf-digest"] == [("reader", 1)] and bodies == [("5 events",)]
    assert len(made["wf-now"]) == BACKLOG
    assert {n for _, n in made["wf-now"]} == {1}
