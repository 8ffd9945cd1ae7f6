"""Set-based at scale: a workflow triggered for a large topic makes its runs in
chunked INSERT ... SELECT statements (no procrastinate job at all), and its due steps
advance in batches of ``workflows.BATCH`` runs: one notification (one route job) per
batch, never a job per run. The topic is built set-based in SQL, so the test spends
its time in postbell, not in building members.

10,000 members run in the normal suite; 100,000 (the issue's size) when
``POSTBELL_TEST_SCALE=100000`` (ten times as long: see docs/testing.md)."""

from __future__ import annotations

import math
import os

import pytest

from postbell.app.api.workflows import service
from postbell.app.core import db
from postbell.workers import workflows
from tests.conftest import ADMIN, query
from tests.integration.test_workflows_engine import workflow_env

MEMBERS = int(os.environ.get("POSTBELL_TEST_SCALE", "10000"))

STEPS = [
    {"type": "send", "channels": ["IN_APP"], "message": "New in the community"},
    {"type": "delay", "for": "1h"},
    {"type": "send", "channels": ["EMAIL"], "message": "Still new"},
]


async def jobs(pool: db.Pool) -> int:
    rows = await query(pool, "SELECT count(*) AS n FROM procrastinate_jobs")
    return int(rows[0]["n"])


@pytest.mark.slow
async def test_a_topic_trigger_makes_runs_in_chunks_and_advances_them_in_batches(
    fresh_database_url: str,
) -> None:
    """Trigger for a MEMBERS-member topic: MEMBERS runs, in ceil(MEMBERS / 10,000)
    chunks, and no procrastinate job. Advancing: every run takes its send step and
    waits at the delay, with one notification (and its one route job) per batch of
    500 runs; once due, the EMAIL step likewise; every run ends done."""
    async with workflow_env(fresh_database_url) as env:
        for statement in (
            "INSERT INTO topics (key) VALUES ('big')",
            "INSERT INTO recipients (external_id)"
            " SELECT 'm-' || i FROM generate_series(1, %(n)s) AS i",
            "INSERT INTO topic_subscribers (topic_key, recipient_id)"
            " SELECT 'big', id FROM recipients WHERE external_id LIKE 'm-%%'",
            "ANALYZE recipients",
            "ANALYZE topic_subscribers",
        ):
            await query(env.pool, statement, {"n": MEMBERS})
        await env.put("scale", STEPS)
        trigger = await env.api.post(
            "/api/workflows/scale/trigger", json={"topic": "big"}, headers=ADMIN
        )
        assert trigger.status_code == 202, trigger.text
        assert trigger.json()["runs"] == MEMBERS
        trigger_id = trigger.json()["id"]
        assert await jobs(env.pool) == 0  # a trigger defers nothing

        batches = math.ceil(MEMBERS / workflows.BATCH)
        assert math.ceil(MEMBERS / service.TOPIC_CHUNK) <= batches

        # each run takes two steps (the send, then the delay): two claims per run
        assert await workflows.run_due(env.pool) == 2 * MEMBERS
        states = await query(
            env.pool,
            "SELECT step, state, count(*) AS n, count(DISTINCT notification_ids[1]) AS made,"
            " bool_and(due_at > now() + interval '59 minutes') AS later"
            " FROM workflow_runs WHERE trigger_id = %s GROUP BY step, state",
            (trigger_id,),
        )
        assert states == [
            {"step": 2, "state": "waiting", "n": MEMBERS, "made": batches, "later": True}
        ]
        # one route job per notification, i.e. per batch of runs, not per member
        assert await jobs(env.pool) == batches

        await query(
            env.pool,
            "UPDATE workflow_runs SET due_at = now() - interval '1 second'"
            " WHERE trigger_id = %s AND state = 'waiting'",
            (trigger_id,),
        )
        assert await workflows.run_due(env.pool) == 2 * MEMBERS  # the send, then done
        final = await query(
            env.pool,
            "SELECT state, count(*) AS n, count(DISTINCT notification_ids[2]) AS made"
            " FROM workflow_runs WHERE trigger_id = %s GROUP BY state",
            (trigger_id,),
        )
        assert final == [{"state": "done", "n": MEMBERS, "made": batches}]
        assert await jobs(env.pool) == 2 * batches
        recipients = await query(
            env.pool,
            "SELECT count(*) AS n FROM notifications, unnest(recipients)"
            " WHERE metadata -> 'workflow' ->> 'key' = 'scale'",
        )
        assert recipients[0]["n"] == 2 * MEMBERS  # every member in exactly one per step
