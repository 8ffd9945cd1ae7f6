"""A topic's fan-out routes its ranges side by side and resumes the ones not done
(0028, issue 19: W9). Chunks are made small here (``router.TOPIC_CHUNK``) so that a
few hundred members make many ranges."""

from __future__ import annotations

from typing import Any

import psycopg
import pytest

from postbell.app.api.main import create_app
from postbell.app.core import db
from postbell.workers import router
from postbell.workers.channels.registry import Channels
from tests.conftest import ADMIN, api_client, make_settings, query, running_worker, wait_until

MEMBERS = 1_037
CHUNK = 100


async def _topic(pool: db.Pool, members: int, topic: str = "club") -> None:
    async with pool.connection() as conn:
        await conn.execute("INSERT INTO topics (key) VALUES (%s)", (topic,))
        await conn.execute(
            "INSERT INTO recipients (external_id) SELECT %s || i FROM generate_series(1, %s) i",
            (f"{topic}-", members),
        )
        await conn.execute(
            "INSERT INTO topic_subscribers (topic_key, recipient_id)"
            " SELECT %s, id FROM recipients WHERE external_id LIKE %s",
            (topic, f"{topic}-%"),
        )


async def _notify(settings: Any, pool: db.Pool, body: dict[str, Any]) -> str:
    async with api_client(create_app(settings, pool=pool)) as client:
        response = await client.post("/api/notifications", headers=ADMIN, json=body)
    assert response.status_code == 202, response.text
    return str(response.json()["id"])


async def _counts(pool: db.Pool, notification_id: str) -> dict[str, Any]:
    rows = await query(
        pool,
        "SELECT count(*) AS deliveries, count(DISTINCT recipient_id) AS members,"
        "       (SELECT routed_at IS NOT NULL FROM notifications WHERE id = %(id)s) AS routed,"
        "       (SELECT count(*) FROM topic_ranges WHERE notification_id = %(id)s) AS ranges"
        "  FROM deliveries WHERE notification_id = %(id)s",
        {"id": notification_id},
    )
    return rows[0]


async def _planned(settings: Any, pool: db.Pool) -> str:
    """A topic notification to MEMBERS whose ranges are planned (as a router's first
    transaction plans them) before any worker runs."""
    await _topic(pool, MEMBERS)
    nid = await _notify(settings, pool, {"topic": "club", "message": "hi"})
    async with pool.connection() as conn:
        await db.execute(
            conn, "route_plan_ranges", {"id": nid, "topic": "club", "after": 0, "chunk": CHUNK}
        )
    return nid


async def _route_all(settings: Any, pool: db.Pool, nid: str) -> dict[str, Any]:
    """A real worker runs until the notification is routed; answers its counts."""
    async with running_worker(settings, pool):

        async def routed() -> dict[str, Any] | None:
            counts = await _counts(pool, nid)
            return counts if counts["routed"] else None

        result: dict[str, Any] = await wait_until(routed, timeout=30)
    return result


async def _templated(settings: Any, pool: db.Pool) -> str:
    """A topic notification to MEMBERS with a template whose IN_APP part names the
    recipient (PER_RECIPIENT)."""
    await _topic(pool, MEMBERS)
    async with api_client(create_app(settings, pool=pool)) as client:
        put = await client.put("/api/templates/hello", headers=ADMIN, json=PER_RECIPIENT)
        assert put.status_code == 200, put.text
    return await _notify(settings, pool, {"topic": "club", "template": "hello"})


@pytest.fixture
def small_chunks(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(router, "TOPIC_CHUNK", CHUNK)


@pytest.mark.usefixtures("small_chunks")
async def test_a_topic_fans_out_from_several_lanes_once_per_member(
    fresh_database_url: str,
) -> None:
    """1,037 members in ranges of 100 (11 ranges), three lanes: every member gets
    exactly one delivery per channel, the notification ends routed with its counts,
    and its ranges are gone."""
    settings = make_settings(fresh_database_url, POSTBELL_FANOUT_PARALLEL="3")
    pool = db.create_pool(fresh_database_url, max_size=8)
    await pool.open(wait=True)
    try:
        await _topic(pool, MEMBERS)
        nid = await _notify(
            settings, pool, {"topic": "club", "message": "hi", "channels": ["IN_APP", "EMAIL"]}
        )
        counts = await _route_all(settings, pool, nid)
        assert counts == {
            "deliveries": 2 * MEMBERS,
            "members": MEMBERS,
            "routed": True,
            "ranges": 0,
        }
        by_status = await query(
            pool,
            "SELECT channel, status, count(*) AS n FROM deliveries"
            " WHERE notification_id = %(id)s GROUP BY 1, 2 ORDER BY 1, 2",
            {"id": nid},
        )
        # EMAIL is not configured in these settings: skipped, recorded
        assert by_status == [
            {"channel": "EMAIL", "status": "skipped", "n": MEMBERS},
            {"channel": "IN_APP", "status": "sent", "n": MEMBERS},
        ]
        kept = await query(
            pool,
            "SELECT status, n FROM notification_counts WHERE notification_id = %(id)s"
            " ORDER BY status",
            {"id": nid},
        )
        assert kept == [{"status": "sent", "n": MEMBERS}, {"status": "skipped", "n": MEMBERS}]
    finally:
        await pool.close()


@pytest.mark.usefixtures("small_chunks")
async def test_the_other_ranges_route_while_one_is_held_and_the_fan_out_waits_for_it(
    fresh_database_url: str,
) -> None:
    """A range held by someone else (here, this test's transaction, as another run's
    chunk would) does not stop the lanes: every other range is routed meanwhile, and
    the notification is marked routed only once that range is done too."""
    settings = make_settings(fresh_database_url, POSTBELL_FANOUT_PARALLEL="2")
    pool = db.create_pool(fresh_database_url, max_size=8)
    await pool.open(wait=True)
    try:
        nid = await _planned(settings, pool)
        ranges = await query(pool, "SELECT lo, hi FROM topic_ranges ORDER BY lo")
        assert len(ranges) == MEMBERS // CHUNK + 1
        assert ranges[-1]["hi"] is None
        held = ranges[3]
        async with pool.connection() as holder:
            await holder.execute("BEGIN")
            await holder.execute(
                "SELECT 1 FROM topic_ranges WHERE notification_id = %s AND lo = %s FOR UPDATE",
                (nid, held["lo"]),
            )
            async with running_worker(settings, pool):

                async def others_routed() -> dict[str, Any] | None:
                    counts = await _counts(pool, nid)
                    return counts if counts["deliveries"] == MEMBERS - CHUNK else None

                counts = await wait_until(others_routed, timeout=30)
                assert counts["routed"] is False
                assert counts["ranges"] == len(ranges)
                await holder.execute("ROLLBACK")  # let go: the waiting lane takes it

                async def routed() -> dict[str, Any] | None:
                    counts = await _counts(pool, nid)
                    return counts if counts["routed"] else None

                counts = await wait_until(routed, timeout=30)
        assert counts == {"deliveries": MEMBERS, "members": MEMBERS, "routed": True, "ranges": 0}
    finally:
        await pool.close()


@pytest.mark.usefixtures("small_chunks")
async def test_a_rerun_routes_only_the_ranges_not_done(fresh_database_url: str) -> None:
    """What a crash leaves: ranges, some done. The rerun (here the first run, finding
    the ranges already planned) routes the ones not done and never reruns a done one:
    the members of the range recorded done get nothing from it (in a real crash that
    range's deliveries committed with it)."""
    settings = make_settings(fresh_database_url)
    pool = db.create_pool(fresh_database_url, max_size=8)
    await pool.open(wait=True)
    try:
        nid = await _planned(settings, pool)
        async with pool.connection() as conn:
            await conn.execute(
                "UPDATE topic_ranges SET done = true, routed_through = hi"
                " WHERE lo = (SELECT lo FROM topic_ranges ORDER BY lo OFFSET 2 LIMIT 1)"
            )
        counts = await _route_all(settings, pool, nid)
        assert counts == {
            "deliveries": MEMBERS - CHUNK,
            "members": MEMBERS - CHUNK,
            "routed": True,
            "ranges": 0,
        }
        missing = await query(
            pool,
            "SELECT min(r.external_id) AS first, count(*) AS n FROM recipients AS r"
            " WHERE NOT EXISTS (SELECT FROM deliveries AS d WHERE d.recipient_id = r.id)",
        )
        assert missing == [{"first": "club-201", "n": CHUNK}]
    finally:
        await pool.close()


def _scans_of(node: dict[str, Any], table: str) -> Any:
    if node.get("Relation Name") == table:
        yield node
    for child in node.get("Plans", []):
        yield from _scans_of(child, table)


async def test_a_small_topic_reads_only_its_own_members(fresh_database_url: str) -> None:
    """A 20-member topic's chunk, beside a 30,000-member one: the fan-out walks the
    topic's own members by its key, not every subscription in recipient order
    filtered by topic (which read all 30,020 for 20 members)."""
    pool = db.create_pool(fresh_database_url, max_size=2)
    await pool.open(wait=True)
    try:
        await _topic(pool, 30_000, topic="big")
        async with pool.connection() as conn:
            await conn.execute("INSERT INTO topics (key) VALUES ('small')")
            await conn.execute(
                "INSERT INTO topic_subscribers (topic_key, recipient_id)"
                " SELECT 'small', id FROM recipients ORDER BY id DESC LIMIT 20"
            )
            await conn.execute("ANALYZE topic_subscribers, recipients")
            cursor = await conn.execute(
                "INSERT INTO notifications (status, topic, body, channels)"
                " VALUES ('queued', 'small', 'x', ARRAY['IN_APP']) RETURNING id"
            )
            row = await cursor.fetchone()
            assert row
            spec = Channels.from_settings(make_settings(fresh_database_url)).routing_spec()
            async with conn.transaction():
                cursor = await conn.execute(
                    b"EXPLAIN (ANALYZE, FORMAT JSON) " + db.queries["route_deliveries"],
                    router.route_params(spec, [row["id"]], topic="small", chunk=50_000),
                )
                plan = await cursor.fetchone()
                raise psycopg.Rollback()  # only the plan was wanted
        assert plan
        scans = list(_scans_of(plan["QUERY PLAN"][0]["Plan"], "topic_subscribers"))
        # one scan of the topic's subscriptions, returning its 20 members
        assert [n["Actual Rows"] * n["Actual Loops"] for n in scans] == [20], scans
    finally:
        await pool.close()


PER_RECIPIENT = {
    "default_locale": "en",
    "locales": {"en": {"IN_APP": {"title": "Hi", "body": "Hello {{ recipient.external_id }}"}}},
}


@pytest.mark.usefixtures("small_chunks")
async def test_a_per_recipient_template_renders_every_member_once_across_lanes(
    fresh_database_url: str,
) -> None:
    """An IN_APP part that names the recipient is rendered per member, in each
    chunk's transaction, by three lanes: every member's item holds their own text."""
    settings = make_settings(fresh_database_url, POSTBELL_FANOUT_PARALLEL="3")
    pool = db.create_pool(fresh_database_url, max_size=8)
    await pool.open(wait=True)
    try:
        nid = await _templated(settings, pool)
        await _route_all(settings, pool, nid)
        rows = await query(
            pool,
            "SELECT count(*) AS n, count(*) FILTER (WHERE d.content ->> 'body'"
            "       = 'Hello ' || r.external_id) AS own"
            "  FROM deliveries AS d JOIN recipients AS r ON r.id = d.recipient_id"
            " WHERE d.notification_id = %(id)s AND d.status = 'sent'",
            {"id": nid},
        )
        assert rows == [{"n": MEMBERS, "own": MEMBERS}]
    finally:
        await pool.close()


@pytest.mark.usefixtures("small_chunks")
async def test_a_chunk_renders_only_its_own_members(fresh_database_url: str) -> None:
    """A chunk's per-recipient render reads the deliveries of its own members, not
    every delivery of the notification still without text (each chunk read all the
    earlier chunks' rows again: quadratic in the fan-out). Seen from outside: an
    unrendered item of the same notification for someone past the last member (put
    there by hand) is left alone by every chunk; the members' items are rendered."""
    settings = make_settings(fresh_database_url, POSTBELL_FANOUT_PARALLEL="2")
    pool = db.create_pool(fresh_database_url, max_size=8)
    await pool.open(wait=True)
    try:
        nid = await _templated(settings, pool)
        async with pool.connection() as conn:
            await conn.execute(
                "WITH r AS (INSERT INTO recipients (external_id) VALUES ('outsider') RETURNING id)"
                " INSERT INTO deliveries (notification_id, recipient_id, channel, status, sent_at)"
                " SELECT %s, r.id, 'IN_APP', 'sent', now() FROM r",
                (nid,),
            )
        await _route_all(settings, pool, nid)
        rows = await query(
            pool,
            "SELECT r.external_id = 'outsider' AS outsider, count(*) AS n,"
            "       count(d.content) AS rendered"
            "  FROM deliveries AS d JOIN recipients AS r ON r.id = d.recipient_id"
            " WHERE d.notification_id = %(id)s GROUP BY 1 ORDER BY 1",
            {"id": nid},
        )
        assert rows == [
            {"outsider": False, "n": MEMBERS, "rendered": MEMBERS},
            {"outsider": True, "n": 1, "rendered": 0},
        ]
    finally:
        await pool.close()
