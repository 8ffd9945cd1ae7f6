"""Job fetch and claim plans that do not depend on statistics (issue 19, W8).

The state that stalled workers: ``ANALYZE`` ran on the empty job table, a worker
made its plans then (plpgsql caches the fetch's plan, psycopg prepares the claim),
and then a backlog arrived. Each fetch then scanned and sorted the whole table:
seconds per job at 20,000. These tests build that state and count the rows each
fetch and claim reads (the plan made for an empty table reads them all); and a real
worker, planned on the empty table, drains a backlog.
"""

from __future__ import annotations

from typing import Any

import psycopg
import pytest
from procrastinate import sql as procrastinate_sql

from postbell.app.core import db
from postbell.app.core.channels import QUEUES, ROUTE_QUEUE
from postbell.workers.channels.registry import Channels
from postbell.workers.router import route_params
from tests.conftest import make_settings, query, running_worker, wait_until

BACKLOG = 20_000
CHANNEL_QUEUES = [q for q in QUEUES if q != ROUTE_QUEUE]
#: procrastinate's own fetch statement, as its worker sends it
FETCH = procrastinate_sql.queries["fetch_job"]

ROWS_READ = """
SELECT coalesce(seq_tup_read, 0) + coalesce(idx_tup_fetch, 0) AS n
  FROM pg_stat_xact_user_tables WHERE relname = 'procrastinate_jobs'
"""


async def _rows_read(conn: db.Conn) -> int:
    """Rows of procrastinate_jobs this transaction has read so far."""
    cursor = await conn.execute(ROWS_READ)
    row = await cursor.fetchone()
    return int(row["n"]) if row else 0


async def _worker_id(conn: db.Conn) -> int:
    cursor = await conn.execute("INSERT INTO procrastinate_workers DEFAULT VALUES RETURNING id")
    row = await cursor.fetchone()
    assert row
    return int(row["id"])


async def _fetch(conn: db.Conn, queues: list[str] | None, worker_id: int) -> Any:
    cursor = await conn.execute(FETCH, {"queues": queues, "worker_id": worker_id})
    row = await cursor.fetchone()
    return row["id"] if row else None


async def _claim(conn: db.Conn, worker_id: int, limit: int) -> list[dict[str, Any]]:
    return await db.fetch_all(
        conn,
        "jobs_claim_more",
        {
            "worker_id": worker_id,
            "queue": ROUTE_QUEUE,
            "task_name": "postbell.route",
            "limit": limit,
            "max_items": limit,
        },
    )


@pytest.mark.slow
async def test_fetch_and_claim_read_a_few_rows_after_an_empty_table_analyze(
    fresh_database_url: str,
) -> None:
    """ANALYZE on the empty job table, then fetches and claims on one connection until
    every plan is cached (plpgsql's generic plan after five runs, psycopg's prepared
    statement after five), then 20,000 queued route jobs and 100 deliver jobs queued
    behind them: each fetch, for the route queue, for the channel queues and for all
    queues, reads at most a few rows (not the 20,000), and a claim of 100 jobs reads
    about 100."""
    conn = await db.connect(fresh_database_url)
    try:
        await conn.execute("ANALYZE procrastinate_jobs")
        worker_id = await _worker_id(conn)
        for _ in range(8):
            for queues in ([ROUTE_QUEUE], CHANNEL_QUEUES, None):
                assert await _fetch(conn, queues, worker_id) is None
            assert await _claim(conn, worker_id, 100) == []
        await conn.execute(
            "INSERT INTO procrastinate_jobs (queue_name, task_name, priority, args)"
            " SELECT 'route', 'postbell.route', 0,"
            "        jsonb_build_object('notification_id', gen_random_uuid())"
            "   FROM generate_series(1, %s)",
            (BACKLOG,),
        )
        await conn.execute(
            "INSERT INTO procrastinate_jobs (queue_name, task_name, priority, args)"
            " SELECT 'webhook', 'postbell.deliver', 0,"
            "        jsonb_build_object('channel', 'WEBHOOK', 'ids', jsonb_build_array(i))"
            "   FROM generate_series(1, 100) AS i"
        )
        read: dict[str, int] = {}
        fetched: dict[str, set[str]] = {}
        async with conn.transaction():
            for name, queues in (
                ("route", [ROUTE_QUEUE]),
                ("channels", CHANNEL_QUEUES),
                ("all", None),
            ):
                before = await _rows_read(conn)
                ids = [await _fetch(conn, queues, worker_id) for _ in range(20)]
                read[name] = await _rows_read(conn) - before
                rows = await query_in(conn, ids)
                fetched[name] = {r["queue_name"] for r in rows}
                assert None not in ids and len(set(ids)) == 20
            before = await _rows_read(conn)
            claimed = await _claim(conn, worker_id, 100)
            read["claim"] = await _rows_read(conn) - before
        assert len(claimed) == 100
        assert fetched == {"route": {"route"}, "channels": {"webhook"}, "all": {"route"}}
        # A fetch reads its job (twice: to lock it, to update it); a claim its jobs
        # (to choose them, to lock them, to update them: 0031), never the backlog.
        assert {k: v <= (60 if k != "claim" else 500) for k, v in read.items()} == {
            "route": True,
            "channels": True,
            "all": True,
            "claim": True,
        }, read
    finally:
        await conn.close()


async def query_in(conn: db.Conn, ids: list[Any]) -> list[dict[str, Any]]:
    cursor = await conn.execute(
        "SELECT id, queue_name FROM procrastinate_jobs WHERE id = ANY(%s::bigint[])", (ids,)
    )
    return list(await cursor.fetchall())


@pytest.mark.slow
async def test_a_worker_planned_on_an_empty_table_drains_a_backlog(
    fresh_database_url: str,
) -> None:
    """A worker starts on the empty, analyzed job table and polls it until its fetch
    has run often enough to cache its plan; then 5,000 notifications are queued at
    once: the same worker routes every one of them."""
    backlog = 5_000
    with psycopg.connect(fresh_database_url, autocommit=True) as admin:
        admin.execute("ANALYZE postbell.procrastinate_jobs")
        name = admin.execute("SELECT current_database()").fetchone()
        assert name
        # Counts the worker's fetch calls (pg_stat_user_functions): the positive signal
        # that its plans were made on the empty table.
        admin.execute(
            psycopg.sql.SQL("ALTER DATABASE {} SET track_functions = 'all'").format(
                psycopg.sql.Identifier(name[0])
            )
        )
    settings = make_settings(fresh_database_url, POSTBELL_POLL_INTERVAL="0.05")
    pool = db.create_pool(fresh_database_url, max_size=5)
    await pool.open(wait=True)
    try:
        async with running_worker(settings, pool, concurrency=4):

            async def planned() -> bool:
                rows = await query(
                    pool,
                    "SELECT calls FROM pg_stat_user_functions"
                    " WHERE funcname = 'procrastinate_fetch_job_v2'",
                )
                return bool(rows) and int(rows[0]["calls"]) >= 20

            await wait_until(planned, timeout=60)
            await query(
                pool,
                "SELECT notify(ARRAY['w8-' || i], '{\"message\": \"backlog\"}')"
                " FROM generate_series(1, %s) AS i",
                (backlog,),
            )

            async def drained() -> bool:
                rows = await query(
                    pool, "SELECT count(*) AS n FROM notifications WHERE status = 'routed'"
                )
                return int(rows[0]["n"]) == backlog

            await wait_until(drained, timeout=300, interval=0.2)
        rows = await query(pool, "SELECT count(*) AS n FROM deliveries WHERE status = 'sent'")
        assert rows == [{"n": backlog}]
    finally:
        await pool.close()


GROWN_NOTIFICATIONS = 200_000
ROUTE_BATCH = 200
TABLE_READS = """
SELECT relname, coalesce(seq_tup_read, 0) AS seq, coalesce(idx_tup_fetch, 0) AS idx
  FROM pg_stat_xact_user_tables
 WHERE relname IN ('notifications', 'recipients', 'preferences')
"""


async def _table_reads(conn: db.Conn) -> dict[str, tuple[int, int]]:
    cursor = await conn.execute(TABLE_READS)
    return {r["relname"]: (int(r["seq"]), int(r["idx"])) for r in await cursor.fetchall()}


async def _route_direct(conn: db.Conn, spec: dict[str, Any], prefix: str, n: int) -> Any:
    """Route ``n`` new direct notifications (one recipient each) as a routing batch
    does (ensure the recipients, then fan out), then record their webhooks sent;
    answer the rows read in doing so, per table."""
    cursor = await conn.execute(
        "INSERT INTO notifications (status, recipients, body, channels)"
        " SELECT 'queued', ARRAY[%s || i], 'x', ARRAY['IN_APP', 'WEBHOOK']"
        "   FROM generate_series(1, %s) AS i RETURNING id",
        (prefix, n),
    )
    ids = [r["id"] for r in await cursor.fetchall()]
    params = route_params(spec, ids)
    async with conn.transaction():
        before = await _table_reads(conn)
        await db.fetch_all(conn, "route_lock_notifications", {"ids": ids})
        await db.execute(conn, "route_ensure_recipients", {"ids": ids})
        result = await db.fetch_one(conn, "route_deliveries", params)
        await db.execute(conn, "route_mark_routed", {"ids": ids})
        # the webhooks recorded sent, as a deliver run does (the rollup's update
        # trigger looks their notifications up)
        await conn.execute(
            "UPDATE deliveries SET status = 'sent', sent_at = now(), attempts = 1"
            " WHERE notification_id = ANY(%s::uuid[]) AND status = 'pending'",
            (ids,),
        )
        after = await _table_reads(conn)
    assert result and int(result["deliveries"]) == 2 * n
    return {
        table: (
            after[table][0] - before.get(table, (0, 0))[0],
            after[table][1] - before.get(table, (0, 0))[1],
        )
        for table in after
    }


@pytest.mark.slow
async def test_routing_reads_by_index_after_the_tables_grew(fresh_database_url: str) -> None:
    """A connection that routed batches of 100 while the tables were small and
    analyzed (autovacuum off, or between its runs), then 200,000 notifications and as
    many recipients later: a routing batch of 200 reads its own rows by index, never a
    whole table. The statement triggers on deliveries (0026) were the part that kept a
    plan made on the small tables: a hash join over a sequential scan of
    ``notifications``, one full read of it (200,000 rows) per batch, every time."""
    settings = make_settings(fresh_database_url)
    spec = Channels.from_settings(settings).routing_spec()
    pool = db.create_pool(fresh_database_url, max_size=1)
    await pool.open(wait=True)
    try:
        async with pool.connection() as conn:
            await conn.execute(
                "ANALYZE notifications, recipients, preferences, deliveries, topic_subscribers"
            )
            for k in range(8):  # past psycopg's prepare threshold and Postgres' five customs
                await _route_direct(conn, spec, f"small-{k}-", 100)
            await conn.execute(
                "INSERT INTO recipients (external_id)"
                " SELECT 'grown-' || i FROM generate_series(1, %s) AS i",
                (GROWN_NOTIFICATIONS,),
            )
            await conn.execute("INSERT INTO preferences (recipient_id) SELECT id FROM recipients")
            await conn.execute(
                "INSERT INTO notifications (status, recipients, body, routed_at)"
                " SELECT 'routed', ARRAY['grown-' || i], 'x', now()"
                "   FROM generate_series(1, %s) AS i",
                (GROWN_NOTIFICATIONS,),
            )
            reads = await _route_direct(conn, spec, "grown-", ROUTE_BATCH)
    finally:
        await pool.close()
    assert {table: seq for table, (seq, _) in reads.items() if seq} == {}, reads
    # the four statements look up their 200 notifications by index (and routing its
    # 200 recipients and preferences), the rollup trigger its notifications: a few
    # reads per row
    assert all(idx <= 10 * ROUTE_BATCH for _, idx in reads.values()), reads


@pytest.mark.slow
async def test_a_worker_routing_a_backlog_reads_recipients_by_index_as_they_grow(
    fresh_database_url: str,
) -> None:
    """W8's state, the part 0013 did not cover: 5,000 notifications queued to
    recipients nobody registered, drained by a real worker with its own pool; routing
    creates the recipients, so `recipients` grows under the worker's connections.
    psycopg prepares the fan-out after five runs and Postgres then takes a generic
    plan made on the small table (10 notifications a batch, a hash join over a
    sequential scan of `recipients`) and keeps it: each batch read every recipient
    made so far, quadratic in the backlog (W8: batches of 200 from 52 ms to 320 ms).
    The worker's pool plans each execution (``custom_plans``): over the whole drain
    the sequential scans of `recipients` read fewer rows than the backlog has."""
    backlog = 5_000
    settings = make_settings(fresh_database_url, POSTBELL_POLL_INTERVAL="0.05")
    with psycopg.connect(fresh_database_url, autocommit=True) as admin:
        admin.execute("SET search_path = postbell, public")
        admin.execute(
            "SELECT notify(ARRAY['w8r-' || i], '{\"message\": \"backlog\"}')"
            " FROM generate_series(1, %s) AS i",
            (backlog,),
        )
        async with running_worker(settings):  # its own pool, as `postbell worker`

            async def drained() -> bool:
                row = admin.execute(
                    "SELECT count(*) FROM notifications WHERE status = 'routed'"
                ).fetchone()
                return bool(row and row[0] == backlog)

            await wait_until(drained, timeout=300, interval=0.2)

        # The worker's connections are closed, so their table statistics are flushed:
        # wait for the positive sign of it (at least a row read per recipient, by scan
        # or by index) before reading what sequential scans read.
        async def flushed() -> tuple[int, int] | None:
            row = admin.execute(
                "SELECT coalesce(seq_tup_read, 0), coalesce(idx_tup_fetch, 0)"
                "  FROM pg_stat_user_tables WHERE relname = 'recipients'"
            ).fetchone()
            return (int(row[0]), int(row[1])) if row and row[0] + row[1] >= backlog else None

        seq_read, index_read = await wait_until(flushed, timeout=30, interval=0.2)
        created = admin.execute("SELECT count(*) FROM recipients").fetchone()
    assert created == (backlog,)
    assert seq_read == 0 and index_read <= 5 * backlog, (seq_read, index_read)


async def test_routing_decides_each_delivery_inline_without_a_call_per_row(
    fresh_database_url: str,
) -> None:
    """delivery_skip_reason() is inlined into the fan-out (0027): no plan of a direct
    batch or a topic chunk calls it per row (its call was ~half a topic chunk's time
    while a sub-select in its body kept Postgres from inlining it). Its answers are
    the routing tests' (test_routing, test_controls, test_topic_mutes).

    And inlined once: the decisions are a subquery of their own, so the insert of
    the deliveries does not write the expression out again at each use of its
    result (it did four times, to_jsonb() of the recipient twice in each: 10,000
    webhooks routed in 0.99 s rather than 0.37 s)."""
    settings = make_settings(fresh_database_url)
    spec = Channels.from_settings(settings).routing_spec()
    async with await db.connect(fresh_database_url) as conn:
        for topic, recipients in ((None, ["a", "b"]), ("community", None)):
            if topic:
                await conn.execute("INSERT INTO topics (key) VALUES (%s)", (topic,))
            cursor = await conn.execute(
                "INSERT INTO notifications (status, recipients, topic, body, channels)"
                " VALUES ('queued', %s, %s, 'x', ARRAY['IN_APP', 'PUSH', 'EMAIL'])"
                " RETURNING id",
                (recipients, topic),
            )
            row = await cursor.fetchone()
            assert row
            params = route_params(spec, [row["id"]], topic=topic, chunk=50_000 if topic else 0)
            cursor = await conn.execute(
                b"EXPLAIN (VERBOSE) " + db.queries["route_deliveries"], params
            )
            plan = "\n".join(r["QUERY PLAN"] for r in await cursor.fetchall())
            assert "delivery_skip_reason" not in plan, plan
            # the inlined expression's own calls are there instead
            assert "has_active_device" in plan and "category_address" in plan, plan
            inserted = plan.split("CTE ins", 1)[1].split("CTE fallback", 1)[0]
            assert inserted.count("to_jsonb(") == 2, inserted
            assert inserted.count("has_active_device(") == 1, inserted


async def _claim_deliveries(conn: db.Conn, worker_id: int, max_items: int) -> list[dict[str, Any]]:
    """A deliver run's top-up claim on the webhook queue."""
    return await db.fetch_all(
        conn,
        "jobs_claim_more",
        {
            "worker_id": worker_id,
            "queue": "webhook",
            "task_name": "postbell.deliver",
            "limit": 500,
            "max_items": max_items,
        },
    )


async def test_a_claim_locks_only_the_jobs_it_takes(fresh_database_url: str) -> None:
    """A bulk claim that takes one of three queued deliver jobs (its items fit only
    one) leaves the other two unlocked while its transaction is open: procrastinate's
    fetch on another connection gets one of them. Before 0031 the claim locked every
    candidate, the fetch found nothing, and the worker slot waited for its next poll
    (W11's last runs started a second apart)."""
    claimer = await db.connect(fresh_database_url)
    fetcher = await db.connect(fresh_database_url)
    try:
        await claimer.execute(
            "INSERT INTO procrastinate_jobs (queue_name, task_name, priority, args)"
            " SELECT 'webhook', 'postbell.deliver', 0,"
            "        jsonb_build_object('channel', 'WEBHOOK',"
            "                           'ids', (SELECT jsonb_agg(k) FROM generate_series(1, 300) k))"
            "   FROM generate_series(1, 3)"
        )
        worker_id = await _worker_id(claimer)
        await claimer.commit()
        async with claimer.transaction():
            taken = await _claim_deliveries(claimer, worker_id, 400)
            assert len(taken) == 1
            async with fetcher.transaction():
                fetched = await _fetch(fetcher, CHANNEL_QUEUES, worker_id)
            assert fetched is not None and fetched != taken[0]["id"]
        # nothing is taken twice: the third job is the only one left to claim
        async with claimer.transaction():
            rest = await _claim_deliveries(claimer, worker_id, 10_000)
        assert len(rest) == 1 and rest[0]["id"] not in {fetched, taken[0]["id"]}
    finally:
        await claimer.close()
        await fetcher.close()


INBOX_COUNT_READS = """
SELECT coalesce(seq_tup_read, 0) + coalesce(idx_tup_fetch, 0) AS n
  FROM pg_stat_xact_user_tables WHERE relname = 'inbox_month_counts'
"""
GROWN_READERS = 20_000
#: GET /api/inbox/reader's parameters
INBOX_VIEW_PARAMS = {
    "external_id": "reader",
    "before": 2**63 - 1,
    "limit": 51,
    "unread_only": False,
    "archived": False,
    "category": None,
}


async def _inbox_count_reads(conn: db.Conn, calls: int) -> dict[str, int]:
    """Rows of ``inbox_month_counts`` the last of ``calls`` inbox reads of each kind
    (the GET's ``inbox_view``, the live streams' ``inbox_live_counts``) read."""
    cursor = await conn.execute("SELECT id FROM recipients WHERE external_id = 'reader'")
    reader = (await cursor.fetchone() or {"id": None})["id"]
    reads = {}
    for name, params in (
        ("inbox_view", INBOX_VIEW_PARAMS),
        ("inbox_live_counts", {"recipient_ids": [reader, reader, -1]}),  # and nobody
    ):
        for _ in range(calls - 1):
            await db.fetch_all(conn, name, params)
        async with conn.transaction():
            before = (await (await conn.execute(INBOX_COUNT_READS)).fetchone() or {"n": 0})["n"]
            await db.fetch_all(conn, name, params)
            after = (await (await conn.execute(INBOX_COUNT_READS)).fetchone() or {"n": 0})["n"]
        reads[name] = int(after) - int(before)
    return reads


@pytest.mark.slow
async def test_inbox_counts_read_a_few_rows_however_the_table_grew(
    fresh_database_url: str,
) -> None:
    """A reader with items in twelve months; ``inbox_month_counts`` analyzed while the
    reader is all it holds; a connection that read the inbox then (its plans cached
    for a table of one page), and one that reads it first once 20,000 other
    recipients have items: every read of the counts takes the reader's twelve rows,
    never the table. (Summed in the query itself, 0035's first version read the whole
    table: a sequential scan is the better plan for one page, and a sample of one
    recipient says every row is that recipient's.)"""
    early = await db.connect(fresh_database_url)
    try:
        await early.execute(
            """WITH r AS (INSERT INTO recipients (external_id) VALUES ('reader') RETURNING id),
               n AS (INSERT INTO notifications (status, recipients, body, created_at, routed_at)
                     SELECT 'routed', ARRAY['reader'], 'x', now() - k * interval '31 days', now()
                       FROM generate_series(0, 11) AS k RETURNING id, created_at)
               INSERT INTO deliveries (notification_id, created_at, recipient_id, channel,
                                       status, sent_at)
               SELECT n.id, n.created_at, r.id, 'IN_APP', 'sent', n.created_at FROM n, r"""
        )
        await early.execute("ANALYZE inbox_month_counts")
        reads = {"small": await _inbox_count_reads(early, 8)}
        await early.execute(
            """WITH r AS (INSERT INTO recipients (external_id)
                          SELECT 'grown-' || i FROM generate_series(1, %s) AS i RETURNING id),
               n AS (INSERT INTO notifications (status, recipients, body, routed_at)
                     VALUES ('routed', '{}', 'x', now()) RETURNING id, created_at)
               INSERT INTO deliveries (notification_id, created_at, recipient_id, channel,
                                       status, sent_at)
               SELECT n.id, n.created_at, r.id, 'IN_APP', 'sent', now() FROM n, r""",
            (GROWN_READERS,),
        )
        reads["grown, planned small"] = await _inbox_count_reads(early, 2)
    finally:
        await early.close()
    late = await db.connect(fresh_database_url)
    try:
        reads["grown, planned grown"] = await _inbox_count_reads(late, 8)
    finally:
        await late.close()
    twelve = {"inbox_view": 12, "inbox_live_counts": 12}
    assert reads == {k: twelve for k in reads}, reads


@pytest.mark.parametrize("name", ["inbox_view", "inbox_counts", "inbox_live_counts"])
async def test_inbox_reads_are_estimated_below_the_jit_threshold(pool: db.Pool, name: str) -> None:
    """Postgres JIT-compiles a statement whose estimated cost passes jit_above_cost:
    about 9 ms each time for the GET, which takes 1 ms. A set-returning function is
    estimated at 1,000 rows unless it says otherwise, and the GET joins two, so
    inbox_counts_of() declares ROWS 1 (0035; without it the estimate was 1,000,000 rows
    and the GET was compiled on every call)."""
    params = {
        "inbox_view": INBOX_VIEW_PARAMS,
        "inbox_counts": {"recipient_id": 1},
        "inbox_live_counts": {"recipient_ids": [1, 2]},
    }[name]
    async with pool.connection() as conn:
        cursor = await conn.execute(b"EXPLAIN (FORMAT JSON) " + db.queries[name], params)
        row = await cursor.fetchone()
        threshold = await (await conn.execute("SHOW jit_above_cost")).fetchone()
    assert row and threshold
    plan = row["QUERY PLAN"][0]["Plan"]
    assert plan["Total Cost"] < float(threshold["jit_above_cost"]), plan["Total Cost"]
