"""Inbox and notification counts kept as deliveries change (issue 19 W10).

``unread_count``/``unseen_count`` and ``delivery_counts`` are read from
``inbox_counts`` and ``notification_counts``, which statement triggers on
``deliveries`` keep. These tests walk every path that changes deliveries (routing,
marking read/unread/seen, mark all, archive, cancel, a SQL console UPDATE and DELETE,
retention) and after each one compare both tables with a recount of the deliveries.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

import httpx
import psycopg

from postbell.app.core import db
from postbell.workers import maintenance
from tests.conftest import ADMIN, counts_disagree, post_notification, query, unique, wait_until


async def _agree(pool: db.Pool) -> None:
    assert await counts_disagree(pool) == []


async def _counts(api: httpx.AsyncClient, recipient: str) -> tuple[int, int]:
    body = (await api.get(f"/api/inbox/{recipient}", headers=ADMIN)).json()
    return body["unread_count"], body["unseen_count"]


async def _ids(api: httpx.AsyncClient, recipient: str) -> list[int]:
    body = (await api.get(f"/api/inbox/{recipient}", headers=ADMIN)).json()
    return [item["id"] for item in body["items"]]


async def test_counts_follow_every_path_that_changes_deliveries(
    api: httpx.AsyncClient, pool: db.Pool, worker: None
) -> None:
    """Three recipients get three IN_APP notifications each; then one item read, all
    seen, all read then one unread, one archived, a scheduled notification cancelled,
    a console UPDATE and DELETE, retention: after each step the inbox answers the
    counts a recount gives, the notification its delivery_counts, and both tables
    agree with a recount of every delivery."""
    r1, r2, r3 = (unique("cnt") for _ in range(3))
    nids = [
        await post_notification(api, to=[r1, r2, r3], message=f"m{i}", channels=["IN_APP"])
        for i in range(3)
    ]

    async def routed() -> bool:
        return [await _counts(api, r) for r in (r1, r2, r3)] == [(3, 3)] * 3

    await wait_until(routed)
    await _agree(pool)
    detail = (await api.get(f"/api/notifications/{nids[0]}", headers=ADMIN)).json()
    assert detail["delivery_counts"] == {"sent": 3}

    first = (await _ids(api, r1))[0]
    assert (
        await api.post(f"/api/inbox/{r1}/read", headers=ADMIN, json={"ids": [first]})
    ).is_success
    assert await _counts(api, r1) == (2, 2)  # reading an item sees it
    assert (await api.post(f"/api/inbox/{r1}/seen", headers=ADMIN, json={"all": True})).is_success
    assert await _counts(api, r1) == (2, 0)
    await _agree(pool)

    assert (await api.post(f"/api/inbox/{r2}/read", headers=ADMIN, json={"all": True})).is_success
    assert await _counts(api, r2) == (0, 0)
    one = (await _ids(api, r2))[0]
    assert (
        await api.post(f"/api/inbox/{r2}/unread", headers=ADMIN, json={"ids": [one]})
    ).is_success
    assert await _counts(api, r2) == (1, 0)
    archived = (await _ids(api, r3))[0]
    assert (
        await api.post(f"/api/inbox/{r3}/archive", headers=ADMIN, json={"ids": [archived]})
    ).is_success
    assert await _counts(api, r3) == (2, 2)
    await _agree(pool)

    later = (dt.datetime.now(dt.UTC) + dt.timedelta(hours=1)).isoformat()
    scheduled = await post_notification(
        api, to=[r1, r2], message="never", send_at=later, channels=["IN_APP"]
    )
    assert (await api.post(f"/api/notifications/{scheduled}/cancel", headers=ADMIN)).is_success

    async def cancelled() -> bool:
        body = (await api.get(f"/api/notifications/{scheduled}", headers=ADMIN)).json()
        return bool(body["delivery_counts"] == {"cancelled": 2})

    await wait_until(cancelled)
    assert await _counts(api, r1) == (2, 0)
    await _agree(pool)

    # A SQL console: an operator archives r1's inbox by hand, deletes one of r2's items.
    rows = await query(pool, "SELECT id FROM recipients WHERE external_id = %s", (r1,))
    await query(
        pool,
        "UPDATE deliveries SET archived_at = now() WHERE recipient_id = %s",
        (rows[0]["id"],),
    )
    assert await _counts(api, r1) == (0, 0)
    await query(pool, "DELETE FROM deliveries WHERE id = %s", (one,))
    assert await _counts(api, r2) == (0, 0)
    await _agree(pool)

    # Retention: r3's deliveries aged past the cutoff are purged.
    rows = await query(pool, "SELECT id FROM recipients WHERE external_id = %s", (r3,))
    await query(
        pool,
        "UPDATE deliveries SET created_at = now() - interval '40 days',"
        " updated_at = now() - interval '40 days' WHERE recipient_id = %s",
        (rows[0]["id"],),
    )
    await maintenance.purge_expired(pool, 30)
    assert await _counts(api, r3) == (0, 0)
    for nid in nids:
        detail = (await api.get(f"/api/notifications/{nid}", headers=ADMIN)).json()
        recount = await query(
            pool,
            "SELECT status, count(*) AS n FROM deliveries WHERE notification_id = %s GROUP BY 1",
            (nid,),
        )
        assert detail["delivery_counts"] == {r["status"]: r["n"] for r in recount}
        assert sum(detail["delivery_counts"].values()) < 3  # r3's were purged
    await _agree(pool)


async def test_a_fan_out_counts_per_statement(
    api: httpx.AsyncClient, pool: db.Pool, worker: None
) -> None:
    """A notification to 300 recipients: every inbox counts its one item, the
    notification's counts say 300 sent, from one row each, and they agree with a
    recount; marking every inbox read in one statement (a console UPDATE) leaves every
    unread count at 0."""
    prefix = unique("fan") + "-"
    members = [f"{prefix}{i}" for i in range(300)]
    nid = await post_notification(api, to=members, message="fan-out", channels=["IN_APP"])

    async def routed() -> bool:
        body = (await api.get(f"/api/notifications/{nid}", headers=ADMIN)).json()
        return bool(body["delivery_counts"] == {"sent": 300})

    await wait_until(routed)
    rows = await query(
        pool,
        "SELECT count(*) AS n, sum(c.unread) AS unread FROM inbox_counts c"
        " JOIN recipients r ON r.id = c.recipient_id WHERE r.external_id LIKE %s",
        (prefix + "%",),
    )
    assert rows == [{"n": 300, "unread": 300}]
    counted = await query(
        pool, "SELECT status, n FROM notification_counts WHERE notification_id = %s", (nid,)
    )
    assert counted == [{"status": "sent", "n": 300}]
    await query(pool, "UPDATE deliveries SET read_at = now() WHERE notification_id = %s", (nid,))
    assert await _counts(api, members[7]) == (0, 1)
    await _agree(pool)


def test_an_operator_session_without_postbell_on_its_path_can_change_deliveries(
    fresh_database_url: str,
) -> None:
    """psql as an operator (search_path "$user", public): an UPDATE and a DELETE of
    postbell.deliveries, a DELETE of a notification and a TRUNCATE all run, and the
    counts follow (the counts' triggers name their schema, 0026; before, each failed
    with 'relation "inbox_counts" does not exist')."""
    with psycopg.connect(fresh_database_url, autocommit=True) as conn:
        assert "postbell" not in str(conn.execute("SHOW search_path").fetchone())
        conn.execute("INSERT INTO postbell.recipients (external_id) VALUES ('op-1'), ('op-2')")
        nid = conn.execute(
            "INSERT INTO postbell.notifications (status, recipients, body)"
            " VALUES ('routed', ARRAY['op-1', 'op-2'], 'x') RETURNING id"
        ).fetchone()
        assert nid
        conn.execute(
            "INSERT INTO postbell.deliveries (notification_id, recipient_id, channel, status)"
            " SELECT %s, id, 'IN_APP', 'sent' FROM postbell.recipients",
            (nid[0],),
        )

        def unread() -> list[Any]:
            return conn.execute(
                "SELECT r.external_id, c.unread FROM postbell.inbox_counts AS c"
                " JOIN postbell.recipients AS r ON r.id = c.recipient_id"
                " WHERE c.unread <> 0 ORDER BY 1"
            ).fetchall()

        assert unread() == [("op-1", 1), ("op-2", 1)]
        conn.execute(
            "UPDATE postbell.deliveries SET read_at = now() WHERE recipient_id ="
            " (SELECT id FROM postbell.recipients WHERE external_id = 'op-1')"
        )
        assert unread() == [("op-2", 1)]
        conn.execute(
            "DELETE FROM postbell.deliveries WHERE recipient_id ="
            " (SELECT id FROM postbell.recipients WHERE external_id = 'op-2')"
        )
        assert unread() == []
        kept = "SELECT count(*) FROM postbell.notification_counts WHERE notification_id = %s"
        assert conn.execute(kept, (nid[0],)).fetchone() == (1,)  # op-1's, read
        conn.execute("DELETE FROM postbell.notifications WHERE id = %s", (nid[0],))
        assert conn.execute(kept, (nid[0],)).fetchone() == (0,)
        conn.execute("TRUNCATE postbell.deliveries")
        assert conn.execute("SELECT count(*) FROM postbell.notification_counts").fetchone() == (0,)
