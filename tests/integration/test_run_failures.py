"""A deliver run that cannot finish gives its work back at once (issue 21).

Two ways a run ends without sending what it holds, each while the same worker goes on
living (so the reaper, which retries only the jobs of a worker whose heartbeat
stopped, is no help):

* its recording transaction fails after it claimed more jobs: the claimed jobs go
  back to the queue (``claims.release``) and the worker sends them again, instead of
  their staying 'doing' under a live worker;
* its channel's slots stay taken by a provider that hangs: after ``SLOT_WAIT_SECONDS``
  the run is postponed (a new job a moment later) and frees its worker slot, so the
  other channels keep sending.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from typing import Any

import pytest

from postbell.app.core import db
from tests.conftest import make_settings, query, running_worker, unique, wait_until
from tests.peers.smtp import SmtpPeer
from tests.peers.webhooks import WebhookReceiver


@pytest.fixture
async def own_pool(fresh_database_url: str) -> AsyncIterator[db.Pool]:
    pool = db.create_pool(fresh_database_url, max_size=8)
    await pool.open(wait=True)
    yield pool
    await pool.close()


async def _webhook_recipients(pool: db.Pool, receiver: WebhookReceiver, paths: list[str]) -> None:
    await query(
        pool,
        "INSERT INTO recipients (external_id, webhook_url)"
        " SELECT p, %s || p FROM unnest(%s::text[]) AS p",
        (receiver.url_for("/"), paths),
    )


async def _notify(pool: db.Pool, to: str, channel: str) -> None:
    await query(
        pool,
        'SELECT notify(ARRAY[%s], \'{"title": "Hello", "message": "hi"}\', ARRAY[%s])',
        (to, channel),
    )


async def _deliveries(pool: db.Pool) -> dict[str, dict[str, Any]]:
    rows = await query(
        pool,
        "SELECT r.external_id, d.id, d.status FROM deliveries AS d"
        " JOIN recipients AS r ON r.id = d.recipient_id",
    )
    return {r["external_id"]: r for r in rows}


async def _deliver_jobs(pool: db.Pool) -> list[dict[str, Any]]:
    return await query(
        pool,
        "SELECT id, status, args, scheduled_at FROM procrastinate_jobs"
        " WHERE task_name = 'postbell.deliver' ORDER BY id",
    )


async def test_a_run_whose_recording_fails_gives_back_the_jobs_it_claimed(
    fresh_database_url: str,
    own_pool: db.Pool,
    receiver: WebhookReceiver,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Ten webhook deliver jobs queued; the first run claims the other nine, sends all
    ten, and its recording transaction fails (a trigger refuses the first outcome, once).
    The nine go back to the queue and the same, live worker sends and records them;
    the run's own job is failed (the reconciler's to re-defer), none is lost. The
    release brought them back, not the orphan sweep (the worker's second net, which
    requeues jobs 'doing' under it that no run holds, a few seconds later)."""
    caplog.set_level(logging.INFO, logger="postbell.maintenance")
    paths = [unique("give-back") for _ in range(10)]
    await _webhook_recipients(own_pool, receiver, paths)
    settings = make_settings(
        fresh_database_url, POSTBELL_WEBHOOK_ALLOW_ADDRESSES=receiver.allow_entry
    )
    # Route only, one notification at a time (a routing batch would make one job of
    # them): ten deliver jobs wait for the worker below.
    async with running_worker(settings, own_pool, queues=["route"]):
        for count, path in enumerate(paths, start=1):
            await _notify(own_pool, path, "WEBHOOK")

            async def routed(count: int = count) -> bool:
                return len(await _deliver_jobs(own_pool)) == count

            await wait_until(routed, timeout=60)
    await query(
        own_pool,
        """
        CREATE SEQUENCE fail_once;
        CREATE FUNCTION refuse_first_outcome() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            IF nextval('fail_once') = 1 THEN
                RAISE EXCEPTION 'the recording transaction fails (test)';
            END IF;
            RETURN NEW;
        END $$;
        CREATE TRIGGER refuse_first_outcome BEFORE UPDATE OF status ON deliveries
            FOR EACH ROW WHEN (NEW.status <> OLD.status) EXECUTE FUNCTION refuse_first_outcome();
        """,
    )
    async with running_worker(settings, own_pool, concurrency=1):

        async def failed_job() -> list[dict[str, Any]]:
            return [j for j in await _deliver_jobs(own_pool) if j["status"] == "failed"]

        failed = await wait_until(failed_job, timeout=60)
        assert len(failed) == 1, failed
        own_ids = set(failed[0]["args"]["ids"])

        async def others_sent() -> dict[str, str]:
            states = {k: v["status"] for k, v in (await _deliveries(own_pool)).items()}
            others = {k: s for k, s in states.items() if k in paths}
            done = [k for k, s in others.items() if s == "sent"]
            return others if len(done) == len(paths) - len(own_ids) else {}

        states = await wait_until(others_sent, timeout=60)
    deliveries = await _deliveries(own_pool)
    unsent = {k for k, s in states.items() if s != "sent"}
    assert {deliveries[k]["id"] for k in unsent} == own_ids
    assert {deliveries[k]["status"] for k in unsent} == {"pending"}  # waiting, not lost
    jobs = await _deliver_jobs(own_pool)
    assert [j["status"] for j in jobs] == ["failed"], jobs  # the nine were finished
    # The failed run held all ten (its own and nine claimed) and sent them; the nine
    # were sent again after their release (at least once: receivers dedupe by id).
    sends = [r.path[1:] for r in receiver.received if r.path[1:] in paths]
    assert (len(own_ids), len(sends), set(sends)) == (1, 2 * len(paths) - 1, set(paths))
    assert "orphaned_jobs_requeued" not in caplog.text


async def test_a_run_whose_channel_stays_busy_is_postponed_and_frees_its_slot(
    fresh_database_url: str, own_pool: db.Pool, receiver: WebhookReceiver, smtp: SmtpPeer
) -> None:
    """A worker of two job slots (one per channel): a webhook hangs in its receiver,
    holding the WEBHOOK slot. A second webhook's run waits for that slot, is postponed
    (a job a moment later, nothing sent) and leaves, so an email still goes out while
    the receiver hangs; once it answers, both webhooks are sent, each exactly once."""
    hung, waiting, reader = unique("hung"), unique("waiting"), unique("reader")
    await _webhook_recipients(own_pool, receiver, [hung, waiting])
    address = f"{reader}@example.org"
    await query(
        own_pool, "INSERT INTO recipients (external_id, email) VALUES (%s, %s)", (reader, address)
    )
    settings = make_settings(
        fresh_database_url, POSTBELL_WEBHOOK_ALLOW_ADDRESSES=receiver.allow_entry, **smtp.env()
    )
    gate = receiver.hold(f"/{hung}")
    try:
        async with running_worker(settings, own_pool, concurrency=2):
            await _notify(own_pool, hung, "WEBHOOK")

            async def hanging() -> bool:
                return any(r.path == f"/{hung}" for r in receiver.received)

            await wait_until(hanging, timeout=60)
            await _notify(own_pool, waiting, "WEBHOOK")
            waiting_id = None

            async def postponed() -> list[dict[str, Any]]:
                nonlocal waiting_id
                mine = (await _deliveries(own_pool)).get(waiting)
                if mine is None:
                    return []
                waiting_id = mine["id"]
                return [
                    j
                    for j in await _deliver_jobs(own_pool)
                    if j["status"] == "todo"
                    and j["scheduled_at"] is not None
                    and waiting_id in j["args"]["ids"]
                ]

            await wait_until(postponed, timeout=60)
            await _notify(own_pool, reader, "EMAIL")

            async def emailed() -> bool:
                return any(address in m.rcpt_tos for m in list(smtp.received))

            await wait_until(emailed, timeout=60)
            # the receiver still hangs: neither webhook is recorded yet
            states = {k: v["status"] for k, v in (await _deliveries(own_pool)).items()}
            assert (states[hung], states[waiting]) == ("pending", "pending"), states
            assert not any(r.path == f"/{waiting}" for r in receiver.received)
            gate.set()

            async def both_sent() -> bool:
                states = {k: v["status"] for k, v in (await _deliveries(own_pool)).items()}
                return bool(states[hung] == states[waiting] == "sent")

            await wait_until(both_sent, timeout=60)
    finally:
        gate.set()
    assert [r.path for r in receiver.received].count(f"/{waiting}") == 1
    assert [r.path for r in receiver.received].count(f"/{hung}") == 1
