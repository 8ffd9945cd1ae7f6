"""A notification's deliveries, page by page: (recipient, channel) order on the
unique index, so a page costs its own rows whatever the fan-out or the table (issue
19: the id-ordered page walked the primary key from the table's first row)."""

from __future__ import annotations

import base64
from typing import Any

import psycopg
import pytest

from postbell.app.api.main import create_app
from postbell.app.core import db
from tests.conftest import ADMIN, api_client, make_settings


def _routed(conn: psycopg.Connection[Any], members: int, prefix: str) -> str:
    """A routed notification with an IN_APP and an EMAIL delivery per member, written
    as routing writes them (one statement)."""
    (nid,) = conn.execute(
        "INSERT INTO postbell.notifications (status, body, routed_at, recipients)"
        " VALUES ('routed', 'x', now(), ARRAY[%s])"
        " RETURNING id",
        (f"{prefix}1",),
    ).fetchone() or (None,)
    conn.execute(
        "INSERT INTO postbell.recipients (external_id)"
        " SELECT %s || i FROM generate_series(1, %s) i",
        (prefix, members),
    )
    conn.execute(
        "INSERT INTO postbell.deliveries (notification_id, recipient_id, channel, status, sent_at)"
        " SELECT %s, r.id, c, 'sent', now() FROM postbell.recipients AS r,"
        " unnest(ARRAY['IN_APP', 'EMAIL']) AS c WHERE r.external_id LIKE %s",
        (nid, f"{prefix}%"),
    )
    return str(nid)


@pytest.fixture
async def client(fresh_database_url: str) -> Any:
    pool = db.create_pool(fresh_database_url, max_size=3)
    await pool.open(wait=True)
    async with api_client(create_app(make_settings(fresh_database_url), pool=pool)) as c:
        yield c
    await pool.close()


async def _all_pages(client: Any, nid: str, limit: int, cursor: str | None = None) -> list[Any]:
    seen: list[Any] = []
    while True:
        params: dict[str, Any] = {"limit": limit}
        if cursor:
            params["cursor"] = cursor
        response = await client.get(f"/api/notifications/{nid}", headers=ADMIN, params=params)
        assert response.status_code == 200, response.text
        body = response.json()
        assert len(body["deliveries"]) <= limit
        seen += body["deliveries"]
        cursor = body["next_cursor"]
        if cursor is None:
            return seen


async def test_pages_walk_every_delivery_once_by_recipient_then_channel(
    client: Any, fresh_database_url: str
) -> None:
    with psycopg.connect(fresh_database_url, autocommit=True) as conn:
        nid = _routed(conn, 7, "p-")
    seen = await _all_pages(client, nid, limit=3)
    assert [(d["recipient"], d["channel"]) for d in seen] == [
        (f"p-{i}", channel) for i in range(1, 8) for channel in ("EMAIL", "IN_APP")
    ]
    assert len({d["id"] for d in seen}) == 14


async def test_a_cursor_of_the_id_ordered_pages_continues_from_its_delivery(
    client: Any, fresh_database_url: str
) -> None:
    """A client paging across an upgrade holds a cursor of the old pages (a delivery
    id): the next page starts after that delivery's place in the new order."""
    with psycopg.connect(fresh_database_url, autocommit=True) as conn:
        nid = _routed(conn, 3, "o-")
        (delivery_id,) = conn.execute(
            "SELECT d.id FROM postbell.deliveries AS d JOIN postbell.recipients AS r"
            " ON r.id = d.recipient_id WHERE r.external_id = 'o-2' AND d.channel = 'EMAIL'"
        ).fetchone() or (None,)
    old = base64.urlsafe_b64encode(f"d:{delivery_id}".encode()).decode().rstrip("=")
    seen = await _all_pages(client, nid, limit=2, cursor=old)
    assert [(d["recipient"], d["channel"]) for d in seen] == [
        ("o-2", "IN_APP"),
        ("o-3", "EMAIL"),
        ("o-3", "IN_APP"),
    ]


@pytest.mark.parametrize("cursor", ["bm9wZQ", "cjoxOmxvd2VyY2FzZQ", "cjotMTpFTUFJTA", "%%%"])
async def test_a_cursor_it_did_not_hand_out_is_a_400_naming_it(
    client: Any, fresh_database_url: str, cursor: str
) -> None:
    with psycopg.connect(fresh_database_url, autocommit=True) as conn:
        nid = _routed(conn, 1, "c-")
    response = await client.get(
        f"/api/notifications/{nid}", headers=ADMIN, params={"cursor": cursor}
    )
    assert response.status_code == 400, response.text
    assert response.json()["field"] == "cursor"


def _scans_of(node: dict[str, Any], table: str) -> Any:
    """The scans of ``table``'s partitions (deliveries', 0030) under ``node``."""
    if str(node.get("Relation Name", "")).startswith(table):
        yield node
    for child in node.get("Plans", []):
        yield from _scans_of(child, table)


async def test_a_page_of_a_recent_notification_reads_its_own_rows(
    fresh_database_url: str,
) -> None:
    """20,000 deliveries of an older notification, then a 5,000-delivery one, analyzed:
    a page of 51 of the recent one reads its 51 rows of deliveries (the id-ordered page
    walked the older notification's 20,000 first)."""
    with psycopg.connect(fresh_database_url, autocommit=True) as conn:
        _routed(conn, 10_000, "old-")
        nid = _routed(conn, 2_500, "new-")
        conn.execute("ANALYZE postbell.deliveries, postbell.recipients")
    async with await db.connect(fresh_database_url) as conn:
        cursor = await conn.execute(
            b"EXPLAIN (ANALYZE, FORMAT JSON) " + db.queries["notifications_deliveries_page"],
            {"id": nid, "after_recipient": 0, "after_channel": "", "limit": 51},
        )
        row = await cursor.fetchone()
    assert row
    scans = list(_scans_of(row["QUERY PLAN"][0]["Plan"], "deliveries"))
    # rows read: those the scan returned and those it read and filtered out
    read = [
        (n["Actual Rows"] + n.get("Rows Removed by Filter", 0)) * n["Actual Loops"] for n in scans
    ]
    # every month of deliveries is looked at; only this month's holds rows, and the
    # merge of the months reads at most one row ahead in each
    assert 51 <= sum(read) <= 51 + len(scans), scans
