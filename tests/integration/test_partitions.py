"""Deliveries are partitioned by month (migration 0030): routing keys every delivery
of a notification to the month it was due, partitions are made ahead of time, and
retention drops a month whole, taking its rows out of the kept counts exactly as the
row-by-row DELETE triggers would have, and never a month that still holds work.

The tests that drop months lay out their own partitions in a database of their own
(a month of 2020), so that they do not depend on today's date."""

from __future__ import annotations

import itertools
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import psycopg

from postbell.app.core import db
from postbell.workers import maintenance
from tests.conftest import counts_disagree, post_notification, query, unique, wait_until

JAN_2020 = "deliveries_y2020m01"


async def partitions(pool: db.Pool) -> list[dict[str, Any]]:
    return await query(pool, "SELECT name, lo, hi FROM delivery_partitions()")


def assert_contiguous(layout: list[dict[str, Any]], *, from_minvalue: bool = True) -> None:
    """To MAXVALUE (from MINVALUE) without a gap or an overlap."""
    assert (layout[0]["lo"] is None) == from_minvalue and layout[-1]["hi"] is None
    for before, after in itertools.pairwise(layout):
        assert before["hi"] == after["lo"], (before, after)


async def test_months_are_made_ahead_and_cover_every_time(pool: db.Pool) -> None:
    layout = await partitions(pool)
    assert_contiguous(layout)
    catch_all = layout[-1]["lo"]
    now = datetime.now(UTC)
    assert catch_all >= now + timedelta(days=28)  # through next month, by the migration
    monthly = [p for p in layout if p["lo"] is not None and p["hi"] is not None]
    assert all(p["name"] == f"deliveries_y{p['lo']:%Y}m{p['lo']:%m}" for p in monthly)
    assert all(p["lo"].day == 1 and p["lo"].hour == 0 for p in monthly)


async def test_every_delivery_of_a_notification_carries_the_time_it_was_due(
    api: httpx.AsyncClient, pool: db.Pool, worker: None
) -> None:
    """Routing keys deliveries to the notification's time (its send_at when scheduled),
    so they share one partition and the idempotency key holds per notification."""
    people = [unique("due") for _ in range(3)]
    now_id = await post_notification(api, to=people, message="now", channels=["IN_APP", "EMAIL"])
    send_at = datetime.now(UTC) + timedelta(seconds=1)
    later_id = await post_notification(api, to=people, message="later", send_at=send_at.isoformat())

    async def routed() -> bool:
        rows = await query(
            pool,
            "SELECT count(*) AS n FROM notifications WHERE id = ANY(%s::uuid[]) AND routed_at IS NOT NULL",
            ([now_id, later_id],),
        )
        return bool(rows[0]["n"] == 2)

    await wait_until(routed)
    rows = await query(
        pool,
        """SELECT d.notification_id::text AS nid, d.created_at, d.tableoid::regclass::text AS part,
                  greatest(n.created_at, n.send_at) AS due
             FROM deliveries AS d JOIN notifications AS n ON n.id = d.notification_id
            WHERE d.notification_id = ANY(%s::uuid[])""",
        ([now_id, later_id],),
    )
    assert len(rows) == 3 * 2 + 3
    assert all(r["created_at"] == r["due"] for r in rows)
    assert {r["created_at"] for r in rows if r["nid"] == later_id} == {send_at}
    assert len({(r["nid"], r["part"]) for r in rows}) == 2  # one partition each

    # A second run of the same routing (ON CONFLICT on the key with created_at) adds nothing.
    again = await query(
        pool,
        """INSERT INTO deliveries (notification_id, created_at, recipient_id, channel, status)
           SELECT notification_id, created_at, recipient_id, channel, 'sent'
             FROM deliveries WHERE notification_id = %s
               ON CONFLICT DO NOTHING RETURNING id""",
        (now_id,),
    )
    assert again == []


async def _lay_out_2020(pool: db.Pool) -> None:
    """This database's history partition (empty: a fresh copy) gives way to January
    2020, the oldest month."""
    await query(pool, "DROP TABLE deliveries_history")
    await query(
        pool,
        f"CREATE TABLE postbell.{JAN_2020} PARTITION OF deliveries"
        " FOR VALUES FROM ('2020-01-01 00:00+00') TO ('2020-02-01 00:00+00')",
    )
    # and February 2020 up to the months the migration made
    first = await query(
        pool, "SELECT min(lo) AS lo FROM delivery_partitions() WHERE lo > '2020-02-01'"
    )
    await query(
        pool,
        "CREATE TABLE postbell.deliveries_y2020m02 PARTITION OF deliveries"
        f" FOR VALUES FROM ('2020-02-01 00:00+00') TO ('{first[0]['lo'].isoformat()}')",
    )
    assert_contiguous(await partitions(pool), from_minvalue=False)


async def _month_of_2020(pool: db.Pool, *, notifications: int = 3) -> list[str]:
    """Notifications of 15 January 2020, each to four recipients in the inbox (some
    read) and by email (some dead, with a timeline), everything final."""
    await query(
        pool,
        "INSERT INTO recipients (external_id) SELECT 'old-' || g FROM generate_series(1, 4) AS g"
        " ON CONFLICT DO NOTHING",
    )
    ids = []
    for k in range(notifications):
        rows = await query(
            pool,
            """INSERT INTO notifications (status, body, recipients, created_at, routed_at)
               VALUES ('routed', 'old', '{}', '2020-01-15 12:00+00', '2020-01-15 12:00+00')
               RETURNING id::text""",
        )
        nid = str(rows[0]["id"])
        ids.append(nid)
        await query(
            pool,
            """INSERT INTO deliveries (notification_id, created_at, updated_at, recipient_id,
                                       channel, status, reason, sent_at, read_at, seen_at)
               SELECT %(n)s, '2020-01-15 12:00+00', '2020-01-16 12:00+00', r.id, c.channel,
                      CASE WHEN c.channel = 'IN_APP' THEN 'sent'
                           WHEN r.id %% 2 = 0 THEN 'dead' ELSE 'delivered' END,
                      CASE WHEN c.channel = 'EMAIL' AND r.id %% 2 = 0 THEN 'bounced' END,
                      '2020-01-15 12:00+00',
                      CASE WHEN c.channel = 'IN_APP' AND r.id %% 3 = %(k)s %% 3
                           THEN '2020-01-16 12:00+00'::timestamptz END,
                      CASE WHEN c.channel = 'IN_APP' AND r.id %% 4 = %(k)s %% 4
                           THEN '2020-01-16 12:00+00'::timestamptz END
                 FROM recipients AS r, (VALUES ('IN_APP'), ('EMAIL')) AS c(channel)
                WHERE r.external_id LIKE 'old-%%'""",
            {"n": nid, "k": k},
        )
    await query(
        pool,
        """INSERT INTO delivery_events (delivery_id, at, kind)
           SELECT id, '2020-01-15 12:00+00', 'attempt' FROM deliveries WHERE channel = 'EMAIL'""",
    )
    return ids


#: rows where the metric gauges kept as deliveries change and a recount differ
GAUGES_DISAGREE = """
WITH kept AS (
    SELECT metric, channel, label, sum(value) AS v FROM metric_counts
     WHERE metric IN ('deliveries', 'dead') GROUP BY 1, 2, 3 HAVING sum(value) <> 0
), real AS (
    SELECT 'deliveries' AS metric, channel, status AS label, count(*)::float8 AS v
      FROM deliveries GROUP BY 2, 3
    UNION ALL
    SELECT 'dead', channel, coalesce(reason, ''), count(*)::float8
      FROM deliveries WHERE status = 'dead' GROUP BY 2, 3
)
(SELECT * FROM kept EXCEPT SELECT * FROM real)
UNION ALL
(SELECT * FROM real EXCEPT SELECT * FROM kept)
"""


async def _counts_agree(pool: db.Pool) -> bool:
    """The kept counts (inbox, per notification, gauges) equal a recount from scratch."""
    return await counts_disagree(pool) == [] and await query(pool, GAUGES_DISAGREE) == []


async def test_retention_drops_an_aged_month_whole_and_the_counts_follow(
    fresh_pool: db.Pool,
) -> None:
    await _lay_out_2020(fresh_pool)
    old = await _month_of_2020(fresh_pool)
    # this month: a notification to the same recipients, kept
    recent = await query(
        fresh_pool,
        """INSERT INTO notifications (status, body, recipients, routed_at)
           VALUES ('routed', 'new', '{}', now()) RETURNING id::text""",
    )
    await query(
        fresh_pool,
        """INSERT INTO deliveries (notification_id, recipient_id, channel, status, sent_at)
           SELECT %s, id, 'IN_APP', 'sent', now() FROM recipients WHERE external_id LIKE 'old-%%'""",
        (recent[0]["id"],),
    )
    assert await _counts_agree(fresh_pool)
    events_before = await query(fresh_pool, "SELECT count(*) AS n FROM delivery_events")
    assert events_before[0]["n"] == 3 * 4
    # the inbox's counts are kept per month (0035): January's rows and this month's
    months = "SELECT DISTINCT month FROM inbox_month_counts ORDER BY 1"
    assert len(await query(fresh_pool, months)) == 2

    result = await maintenance.purge_expired(fresh_pool, 30)

    assert result["partitions"] == 1 and result["deliveries"] == 3 * 4 * 2
    assert next(p["name"] for p in await partitions(fresh_pool)) == "deliveries_y2020m02"
    assert await _counts_agree(fresh_pool)
    inbox = await query(fresh_pool, "SELECT sum(unread) AS u, sum(unseen) AS s FROM inbox_counts")
    assert (inbox[0]["u"], inbox[0]["s"]) == (4, 4)  # this month's four items
    this_month = await query(fresh_pool, "SELECT delivery_month(now()) AS month")
    assert await query(fresh_pool, months) == this_month  # January's went with its month
    assert (await query(fresh_pool, "SELECT count(*) AS n FROM delivery_events"))[0]["n"] == 0
    # the notifications left empty go in the same round
    left = await query(fresh_pool, "SELECT id::text FROM notifications")
    assert {r["id"] for r in left} == {recent[0]["id"]} and not set(old) & {r["id"] for r in left}
    # The month leaves a gap in the layout that nothing writes into any more: a
    # month goes only when no notification due in it waits to be routed, and every
    # other delivery is written under a time of now or of its own notification's.
    assert (await maintenance.purge_expired(fresh_pool, 30))["partitions"] == 0


async def test_a_month_holding_work_stays_and_the_rows_purge_takes_what_it_can(
    fresh_pool: db.Pool,
) -> None:
    await _lay_out_2020(fresh_pool)
    await _month_of_2020(fresh_pool, notifications=2)
    pending = await query(
        fresh_pool,
        """UPDATE deliveries SET status = 'pending', next_attempt_at = now()
            WHERE id = (SELECT min(id) FROM deliveries WHERE channel = 'EMAIL') RETURNING id""",
    )
    result = await maintenance.purge_expired(fresh_pool, 30)
    assert result["partitions"] == 0
    assert result["deliveries"] == 2 * 4 * 2 - 1  # every final one, row by row
    left = await query(fresh_pool, "SELECT id FROM deliveries")
    assert [r["id"] for r in left] == [pending[0]["id"]]
    assert await _counts_agree(fresh_pool)


async def test_a_partition_cutting_a_month_goes_row_by_row(fresh_pool: db.Pool) -> None:
    """The inbox's counts are kept per calendar month (0035), so a partition made by
    hand with bounds inside a month is not dropped whole: retention takes its rows
    one by one, and the counts still follow."""
    await query(fresh_pool, "DROP TABLE deliveries_history")
    first = await query(
        fresh_pool, "SELECT min(lo) AS lo FROM delivery_partitions() WHERE lo > '2020-02-01'"
    )
    for name, lo, hi in (
        ("deliveries_early_jan_2020", "2020-01-01 00:00+00", "2020-01-20 00:00+00"),
        ("deliveries_late_jan_2020", "2020-01-20 00:00+00", first[0]["lo"].isoformat()),
    ):
        await query(
            fresh_pool,
            f"CREATE TABLE postbell.{name} PARTITION OF deliveries FOR VALUES FROM ('{lo}') TO ('{hi}')",
        )
    await _month_of_2020(fresh_pool)
    result = await maintenance.purge_expired(fresh_pool, 30)
    assert result["partitions"] == 0 and result["deliveries"] == 3 * 4 * 2
    assert [p["name"] for p in await partitions(fresh_pool)][:1] == ["deliveries_early_jan_2020"]
    assert await _counts_agree(fresh_pool)
    assert await query(fresh_pool, "SELECT * FROM inbox_month_counts WHERE unread <> 0") == []


async def test_a_month_with_a_notification_still_to_route_stays(fresh_pool: db.Pool) -> None:
    """Its deliveries will be written into that month: the month must be there."""
    await _lay_out_2020(fresh_pool)
    await _month_of_2020(fresh_pool, notifications=1)
    await query(
        fresh_pool,
        """INSERT INTO notifications (status, body, recipients, created_at)
           VALUES ('queued', 'late', ARRAY['old-1'], '2020-01-20 00:00+00')""",
    )
    rows = await query(fresh_pool, "SELECT delivery_partition_drop(%s, now()) AS d", (JAN_2020,))
    assert rows[0]["d"] is None
    # one cancelled before it was routed is still routed (every delivery 'cancelled')
    await query(fresh_pool, "UPDATE notifications SET status = 'cancelled' WHERE body = 'late'")
    rows = await query(fresh_pool, "SELECT delivery_partition_drop(%s, now()) AS d", (JAN_2020,))
    assert rows[0]["d"] is None
    assert JAN_2020 in {p["name"] for p in await partitions(fresh_pool)}
    await query(fresh_pool, "UPDATE notifications SET routed_at = now() WHERE body = 'late'")
    rows = await query(fresh_pool, "SELECT delivery_partition_drop(%s, now()) AS d", (JAN_2020,))
    assert rows[0]["d"] == 8


async def test_a_month_changed_lately_stays(fresh_pool: db.Pool) -> None:
    await _lay_out_2020(fresh_pool)
    await _month_of_2020(fresh_pool, notifications=1)
    await query(
        fresh_pool,
        "UPDATE deliveries SET updated_at = now() WHERE id = (SELECT min(id) FROM deliveries)",
    )
    result = await maintenance.purge_expired(fresh_pool, 30)
    assert result["partitions"] == 0
    assert JAN_2020 in {p["name"] for p in await partitions(fresh_pool)}


async def test_a_busy_table_postpones_the_drop_and_harms_nothing(
    fresh_database_url: str, fresh_pool: db.Pool
) -> None:
    """A long transaction reading deliveries holds the table: the drop gives up after
    its short lock_timeout (the statements queued behind it wait no longer), the
    reader finishes unharmed, and the next round drops the month."""
    await _lay_out_2020(fresh_pool)
    await _month_of_2020(fresh_pool, notifications=1)
    async with await psycopg.AsyncConnection.connect(fresh_database_url) as reader:
        await reader.execute("SELECT count(*) FROM postbell.deliveries")  # holds its lock
        dropped = await maintenance.drop_expired_partitions(fresh_pool, 30)
        assert dropped == {"partitions": 0, "rows": 0}
        assert JAN_2020 in {p["name"] for p in await partitions(fresh_pool)}
        cursor = await reader.execute("SELECT count(*) FROM postbell.deliveries")
        assert (await cursor.fetchone()) == (8,)
        await reader.rollback()
    dropped = await maintenance.drop_expired_partitions(fresh_pool, 30)
    assert dropped == {"partitions": 1, "rows": 8}


async def test_rows_past_the_last_month_are_kept_and_bounded_later(fresh_pool: db.Pool) -> None:
    """The catch-all takes a row due past every month made (nothing is lost for want
    of a partition); making months later bounds it past its last row."""
    layout = await partitions(fresh_pool)
    far = layout[-1]["lo"] + timedelta(days=45)
    n = await query(
        fresh_pool,
        "INSERT INTO notifications (status, body, recipients) VALUES ('routed', 'far', '{}') RETURNING id",
    )
    await query(
        fresh_pool,
        """INSERT INTO deliveries (notification_id, created_at, recipient_id, channel, status)
           VALUES (%s, %s, 1, 'IN_APP', 'sent')""",
        (n[0]["id"], far),
    )
    made = await query(
        fresh_pool, "SELECT delivery_partitions_ensure(%s) AS made", (far + timedelta(days=70),)
    )
    assert made[0]["made"] >= 2
    after = await partitions(fresh_pool)
    assert_contiguous(after)
    holder = await query(fresh_pool, "SELECT tableoid::regclass::text AS t FROM deliveries")
    assert holder[0]["t"] != "deliveries_future"
    assert after[-1]["lo"] > far + timedelta(days=60)
    # a second call has nothing to do
    again = await query(
        fresh_pool, "SELECT delivery_partitions_ensure(%s) AS made", (far + timedelta(days=70),)
    )
    assert again[0]["made"] == 0


async def test_months_ahead_are_made_once(fresh_pool: db.Pool) -> None:
    before = await partitions(fresh_pool)
    made = await maintenance.ensure_partitions(fresh_pool, months=6)
    after = await partitions(fresh_pool)
    assert made == len(after) - len(before) >= 2
    assert_contiguous(after)
    assert await maintenance.ensure_partitions(fresh_pool, months=6) == 0
