"""postbell.notify() called many times in one host transaction defers one routing
job per priority, not one per call (migration 0029, issue 19), and a real worker
routes every notification such a job carries, one bad one failing only itself."""

from __future__ import annotations

from typing import Any

import psycopg
import pytest

from postbell.app.core import db
from tests.conftest import make_settings, query, running_worker, wait_until

ROUTE_JOBS = (
    "SELECT args, priority, scheduled_at IS NOT NULL AS scheduled FROM procrastinate_jobs"
    " WHERE task_name = 'postbell.route' ORDER BY id"
)


def _notify(conn: psycopg.Connection[Any], who: str, **options: Any) -> str:
    keys = "".join(f", {k} => %({k})s" for k in options)
    row = conn.execute(
        f'SELECT postbell.notify(ARRAY[%(who)s], \'{{"message": "hi"}}\'::jsonb{keys})',
        {"who": who, **options},
    ).fetchone()
    assert row
    return str(row[0])


async def _jobs(pool: db.Pool) -> list[dict[str, Any]]:
    return await query(pool, ROUTE_JOBS)


def _ids(job: dict[str, Any]) -> list[str]:
    return job["args"].get("ids") or [job["args"]["notification_id"]]


@pytest.fixture
async def own_pool(fresh_database_url: str) -> Any:
    pool = db.create_pool(fresh_database_url, max_size=6)
    await pool.open(wait=True)
    yield pool
    await pool.close()


async def test_calls_in_one_transaction_share_one_job_per_priority(
    fresh_database_url: str, own_pool: db.Pool
) -> None:
    """450 normal calls, 3 urgent ones, one scheduled and a topic notification in one
    transaction: normal ones in jobs of at most 200 (a routing batch), the urgent ones
    in a job of their own priority, the scheduled and the topic one each alone; a
    second transaction starts jobs of its own."""
    with psycopg.connect(fresh_database_url, autocommit=True) as conn:
        conn.execute("INSERT INTO postbell.topics (key) VALUES ('club')")
        with conn.transaction():
            normal = [_notify(conn, f"n{i}") for i in range(450)]
            urgent = [_notify(conn, f"u{i}", priority="urgent") for i in range(3)]
            scheduled = _notify(conn, "s", send_at="2030-01-01T00:00:00Z")
            # a topic notification, as the API and the workflow engine write one
            (topic,) = conn.execute(
                "SELECT id FROM postbell.enqueue_notification(NULL, 'club', NULL, 'all', NULL,"
                " NULL, NULL, 'normal', NULL, NULL, NULL, NULL, NULL, NULL, NULL, '1 day')"
            ).fetchone() or (None,)
        with conn.transaction():
            later = [_notify(conn, f"l{i}") for i in range(2)]
    jobs = await _jobs(own_pool)
    carried = [_ids(j) for j in jobs]
    assert carried == [
        normal[:200],
        normal[200:400],
        normal[400:],
        urgent,
        [scheduled],
        [str(topic)],
        later,
    ]
    # a job of one notification keeps the shape it always had
    assert [j["args"] for j in jobs[4:6]] == [
        {"notification_id": scheduled},
        {"notification_id": str(topic)},
    ]
    assert [j["scheduled"] for j in jobs] == [False] * 4 + [True, False, False]
    assert jobs[3]["priority"] > jobs[0]["priority"]


async def test_a_savepoint_rolled_back_takes_its_notifications_out_of_the_job(
    fresh_database_url: str, own_pool: db.Pool
) -> None:
    with psycopg.connect(fresh_database_url, autocommit=True) as conn, conn.transaction():
        kept = [_notify(conn, "a"), _notify(conn, "b")]
        with pytest.raises(RuntimeError), conn.transaction():  # a savepoint
            _notify(conn, "gone-1")
            _notify(conn, "gone-2")
            raise RuntimeError("the host app's step failed")
        kept.append(_notify(conn, "c"))
    assert [_ids(j) for j in await _jobs(own_pool)] == [kept]
    assert await query(own_pool, "SELECT count(*) AS n FROM notifications") == [{"n": 3}]


async def test_a_worker_routes_every_notification_of_a_shared_job(
    fresh_database_url: str, own_pool: db.Pool
) -> None:
    """One job of 30 notifications, one of them poisoned (a trigger rejects its
    deliveries): the other 29 are routed, the poisoned one is not, and the job ends
    failed, which records it (the reconciler defers that notification again later)."""
    with psycopg.connect(fresh_database_url, autocommit=True) as conn:
        with conn.transaction():
            ids = [_notify(conn, f"m{i}") for i in range(30)]
        poisoned = ids[17]
        conn.execute(
            "CREATE FUNCTION postbell.poison() RETURNS trigger LANGUAGE plpgsql AS $$"
            " BEGIN RAISE EXCEPTION 'poisoned'; END $$"
        )
        conn.execute(
            "CREATE TRIGGER poison BEFORE INSERT ON postbell.deliveries FOR EACH ROW"
            f" WHEN (NEW.notification_id = '{poisoned}') EXECUTE FUNCTION postbell.poison()"
        )
    assert len(await _jobs(own_pool)) == 1
    settings = make_settings(fresh_database_url)
    async with running_worker(settings, own_pool):

        async def failed() -> list[dict[str, Any]] | None:
            rows = await query(
                own_pool,
                "SELECT status, count(*) AS n FROM procrastinate_jobs"
                " WHERE task_name = 'postbell.route' GROUP BY status",
            )
            return rows if rows == [{"status": "failed", "n": 1}] else None

        await wait_until(failed)
    rows = await query(
        own_pool, "SELECT id::text, routed_at IS NOT NULL AS routed FROM notifications ORDER BY id"
    )
    assert sorted(r["id"] for r in rows if not r["routed"]) == [poisoned]
    inbox = await query(
        own_pool,
        "SELECT count(*) AS n FROM deliveries WHERE channel = 'IN_APP' AND status = 'sent'",
    )
    assert inbox == [{"n": 29}]


async def test_shared_jobs_route_like_single_ones(
    fresh_database_url: str, own_pool: db.Pool
) -> None:
    """Three transactions of 120 calls each, queued before the worker starts (so the
    worker adopts and claims several shared jobs into one batch): all 360 routed, once
    each, every job gone."""
    with psycopg.connect(fresh_database_url, autocommit=True) as conn:
        for t in range(3):
            with conn.transaction():
                for i in range(120):
                    _notify(conn, f"t{t}-{i}")
    assert [len(_ids(j)) for j in await _jobs(own_pool)] == [120, 120, 120]
    settings = make_settings(fresh_database_url)
    async with running_worker(settings, own_pool):

        async def routed() -> bool:
            rows = await query(
                own_pool,
                "SELECT count(*) FILTER (WHERE routed_at IS NULL) AS waiting,"
                " (SELECT count(*) FROM procrastinate_jobs WHERE task_name = 'postbell.route') AS jobs"
                " FROM notifications",
            )
            return rows == [{"waiting": 0, "jobs": 0}]

        await wait_until(routed)
    deliveries = await query(
        own_pool,
        "SELECT count(*) AS n, count(DISTINCT notification_id) AS notifications FROM deliveries",
    )
    assert deliveries == [{"n": 360, "notifications": 360}]
