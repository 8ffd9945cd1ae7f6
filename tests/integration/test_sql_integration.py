"""The host app's side: postbell.notify() in its own transaction, and the SQL console."""

from __future__ import annotations

import psycopg
import pytest

from postbell import notify, notify_sync
from postbell.app.core import db
from tests.conftest import ADMIN, query, unique, wait_until
from tests.integration.test_delivery_flow import settled
from tests.peers.smtp import SmtpPeer


def plain_url(database_url: str) -> str:
    """The database URL without postbell's search_path: a host app's connection."""
    return database_url


async def test_notify_commits_with_the_host_apps_write(
    database_url: str, api, worker: None
) -> None:  # type: ignore[no-untyped-def]
    rid = unique("member")
    async with await psycopg.AsyncConnection.connect(plain_url(database_url)) as conn:
        assert (await (await conn.execute("SHOW search_path")).fetchone())[0] == '"$user", public'
        async with conn.transaction():
            await conn.execute(
                "CREATE TEMP TABLE join_requests (id int, status text) ON COMMIT DROP"
            )
            await conn.execute("INSERT INTO join_requests VALUES (42, 'pending')")
            await conn.execute("UPDATE join_requests SET status = 'approved' WHERE id = 42")
            nid = await notify(
                conn,
                [rid],
                {"title": "Approved", "message": "Welcome to the club"},
                channels=["IN_APP"],
            )
    body = await settled(api, str(nid), {"sent": 1})
    assert body["title"] == "Approved"
    inbox = (await api.get(f"/api/inbox/{rid}", headers=ADMIN)).json()
    assert inbox["items"][0]["body"] == "Welcome to the club"


async def test_notify_rolls_back_with_the_host_app(database_url: str, pool: db.Pool) -> None:
    marker = unique("rolled")
    before = (await query(pool, "SELECT count(*) AS n FROM procrastinate_jobs"))[0]["n"]
    async with await psycopg.AsyncConnection.connect(database_url) as conn:
        with pytest.raises(RuntimeError):
            async with conn.transaction():
                await notify(conn, [marker], "never delivered")
                raise RuntimeError("approval failed")
    assert (
        await query(pool, "SELECT 1 FROM notifications WHERE %s = ANY(recipients)", (marker,)) == []
    )
    assert (await query(pool, "SELECT count(*) AS n FROM procrastinate_jobs"))[0]["n"] <= before


def test_notify_from_plain_sql_and_sync_helper(database_url: str) -> None:
    with psycopg.connect(database_url, autocommit=True) as conn:
        (nid,) = conn.execute(
            "SELECT postbell.notify(ARRAY['u-sql'], '{\"message\": \"from SQL\"}', priority => 'high')"
        ).fetchone()
        assert nid is not None
        again = notify_sync(conn, ["u-sql"], "same key", idempotency_key="k-1")
        assert notify_sync(conn, ["u-sql"], "same key", idempotency_key="k-1") == again
        with pytest.raises(psycopg.errors.UniqueViolation, match="other arguments"):
            notify_sync(conn, ["u-sql"], "another text", idempotency_key="k-1")


@pytest.mark.parametrize(
    ("call", "message"),
    [
        ('postbell.notify(ARRAY[]::text[], \'{"message": "x"}\')', "at least one recipient"),
        ("postbell.notify(ARRAY['a'], '{\"title\": \"x\"}')", 'needs "message"'),
        ("postbell.notify(ARRAY['a'], '[1]')", "JSON object"),
        (
            "postbell.notify(ARRAY['a'], '{\"message\": \"x\"}', ARRAY['FAX'])",
            "unknown channel FAX",
        ),
        ("postbell.notify(ARRAY['a'], '{\"message\": \"x\"}', priority => 'asap')", "priority"),
        (
            "postbell.notify(ARRAY['a'], '{\"message\": \"x\"}', category => 'nope')",
            "unknown category nope",
        ),
        (
            "postbell.notify(ARRAY['a'], '{\"message\": \"x\"}', send_at => now() - interval '1 hour')",
            "past",
        ),
        # the recipient ids' rules (0033 checks them on the whole array)
        ("postbell.notify(ARRAY['a', NULL], '{\"message\": \"x\"}')", "1 to 255 characters"),
        ("postbell.notify(ARRAY['a', ''], '{\"message\": \"x\"}')", "1 to 255 characters"),
        (
            "postbell.notify(ARRAY['a', repeat('b', 256)], '{\"message\": \"x\"}')",
            "1 to 255 characters",
        ),
        ("postbell.notify(ARRAY['a', E'b\\nc'], '{\"message\": \"x\"}')", "control characters"),
        ("postbell.notify(ARRAY[E'a\\tb'], '{\"message\": \"x\"}')", "control characters"),
        (
            "postbell.notify(ARRAY['a'], '{\"message\": \"x\"}', ARRAY['EMAIL', 'FAX'])",
            "unknown channel FAX",
        ),
        (
            "postbell.notify(ARRAY['a'], '{\"message\": \"x\"}', ARRAY[]::text[])",
            "unknown channel \\(empty list\\)",
        ),
        (
            'postbell.notify(ARRAY[\'a\'], \'{"message": "x", "expires_at": "soon"}\')',
            "expires_at is not a time",
        ),
    ],
)
def test_notify_rejects_bad_arguments_clearly(database_url: str, call: str, message: str) -> None:
    with (
        psycopg.connect(database_url) as conn,
        pytest.raises(psycopg.errors.InvalidParameterValue, match=message),
    ):
        conn.execute(f"SELECT {call}")


async def test_console_views_on_real_traffic(fresh_database_url: str, smtp: SmtpPeer) -> None:
    """Every view answers SELECT * with rows that add up, on a database with real traffic."""
    from tests.conftest import api_client, make_settings, running_worker

    settings = make_settings(fresh_database_url, **smtp.env())
    pool = db.create_pool(fresh_database_url, max_size=5)
    await pool.open(wait=True)
    try:
        from postbell.app.api.main import create_app

        async with api_client(create_app(settings, pool=pool)) as client:
            bad = f"{unique('bounce')}@example.org"
            smtp.script[bad] = ["550 5.1.1 unknown"]
            await client.put("/api/recipients/ok", headers=ADMIN, json={"email": "ok@example.org"})
            await client.put("/api/recipients/bad", headers=ADMIN, json={"email": bad})
            await client.post(
                "/api/notifications",
                headers=ADMIN,
                json={"to": ["ok", "bad"], "message": "stats", "channels": ["IN_APP", "EMAIL"]},
            )
            async with running_worker(settings, pool):

                async def done() -> bool:
                    rows = await query(
                        pool,
                        "SELECT count(*) AS n FROM deliveries WHERE status IN ('sent', 'dead')",
                    )
                    return bool(rows[0]["n"] == 4)

                await wait_until(done)
            # Work waiting in a queue, for queue_depth.
            await client.post(
                "/api/notifications", headers=ADMIN, json={"to": ["ok"], "message": "queued"}
            )
        depth = await query(pool, "SELECT * FROM postbell.queue_depth")
        assert [(r["queue"], r["status"], r["jobs"]) for r in depth] == [("route", "todo", 1)]
        dead = await query(pool, "SELECT * FROM postbell.dead_letters")
        assert [(r["recipient"], r["channel"], r["reason"]) for r in dead] == [
            ("bad", "EMAIL", "invalid_address")
        ]
        stats = await query(pool, "SELECT * FROM postbell.delivery_stats ORDER BY channel, status")
        assert [(r["channel"], r["status"], r["deliveries"]) for r in stats] == [
            ("EMAIL", "dead", 1),
            ("EMAIL", "sent", 1),
            ("IN_APP", "sent", 2),
        ]
        email_sent = next(r for r in stats if r["channel"] == "EMAIL" and r["status"] == "sent")
        assert email_sent["percent_of_channel"] == 50 and email_sent["p50_ms_to_send"] > 0
        failures = await query(pool, "SELECT * FROM postbell.recent_failures")
        assert [r["status"] for r in failures] == ["dead"]
        assert await query(pool, "SELECT * FROM postbell.stalled_jobs") == []
    finally:
        await pool.close()


def test_notify_keeps_what_it_was_given(database_url: str) -> None:
    """Ids and channels de-duplicated, long ids that are each within the limit
    accepted, an expires_at stored: what 0033's shorter paths must still do."""
    long_ids = [f"{unique('long')}-{'x' * 200}", f"{unique('long')}-{'y' * 200}"]
    with psycopg.connect(database_url, autocommit=True) as conn:
        rows = []
        for recipients, channels in (
            (["dup", "dup", "other"], ["EMAIL", "EMAIL", "IN_APP"]),
            (["one"], ["PUSH"]),
            (long_ids, None),
        ):
            made = conn.execute(
                'SELECT postbell.notify(%s, \'{"message": "x",'
                ' "expires_at": "2030-01-01T00:00:00Z"}\', %s::text[])',
                (recipients, channels),
            ).fetchone()
            assert made
            rows.append(
                conn.execute(
                    "SELECT recipients, channels, expires_at IS NOT NULL, request_hash"
                    " FROM postbell.notifications WHERE id = %s",
                    made,
                ).fetchone()
            )
    assert rows[0] == (["dup", "other"], ["EMAIL", "IN_APP"], True, None)
    assert rows[1] == (["one"], ["PUSH"], True, None)
    assert rows[2] is not None and sorted(rows[2][0]) == sorted(long_ids)
    assert rows[2][1] is None


def test_job_builders_are_inlined(database_url: str) -> None:
    """route_job() and deliver_job() inline into the statements that defer jobs (each
    was a SQL function call per job while declared IMMUTABLE around the STABLE
    jsonb_build_object(); 0033)."""
    with psycopg.connect(database_url) as conn:
        for call in (
            "postbell.route_job(gen_random_uuid(), 'normal', NULL)",
            "postbell.deliver_job('EMAIL', '[1]', 10, NULL)",
        ):
            plan = "\n".join(
                r[0] for r in conn.execute(f"EXPLAIN (VERBOSE) SELECT {call}").fetchall()
            )
            assert "_job(" not in plan and "jsonb_build_object" in plan, plan
