"""Routing in batches: one bad notification fails only its own job."""

from __future__ import annotations

from postbell.app.api.main import create_app
from postbell.app.core import db
from tests.conftest import ADMIN, api_client, make_settings, query, running_worker, wait_until

POISON = """
CREATE FUNCTION poison() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'poisoned notification %', NEW.notification_id;
END $$;
CREATE TRIGGER poison BEFORE INSERT ON deliveries FOR EACH ROW
    WHEN (NEW.notification_id = ANY(%(ids)s::uuid[])) EXECUTE FUNCTION poison();
"""


async def test_a_poisoned_notification_fails_alone(fresh_database_url: str) -> None:
    """Twenty notifications queued before the worker starts route as one batch. Two of
    them cannot be routed (a trigger rejects their deliveries): the first one, whose job
    procrastinate starts, and one the batch claims. The batch falls back to routing
    each alone: the other eighteen are routed, the two jobs fail, nothing is lost."""
    settings = make_settings(fresh_database_url)
    pool = db.create_pool(fresh_database_url, max_size=5)
    await pool.open(wait=True)
    try:
        async with api_client(create_app(settings, pool=pool)) as client:
            ids = []
            for i in range(20):
                response = await client.post(
                    "/api/notifications",
                    headers=ADMIN,
                    json={"to": [f"user-{i}"], "message": f"m{i}", "channels": ["IN_APP"]},
                )
                assert response.status_code == 202, response.text
                ids.append(response.json()["id"])
        poisoned = [ids[0], ids[7]]
        async with pool.connection() as conn:
            await conn.execute(POISON.replace("%(ids)s", "'{" + ",".join(poisoned) + "}'"))

        async with running_worker(settings, pool):

            async def settled() -> list[dict[str, object]] | None:
                rows = await query(
                    pool,
                    "SELECT status, count(*) AS n FROM procrastinate_jobs"
                    " WHERE task_name = 'postbell.route' GROUP BY status",
                )
                return rows if rows == [{"status": "failed", "n": 2}] else None

            await wait_until(settled)

        rows = await query(
            pool, "SELECT id::text, routed_at IS NOT NULL AS routed FROM notifications"
        )
        routed = {r["id"]: r["routed"] for r in rows}
        assert [i for i in ids if not routed[i]] == poisoned
        inbox = await query(
            pool,
            "SELECT count(*) AS n FROM deliveries WHERE status = 'sent' AND channel = 'IN_APP'",
        )
        assert inbox[0]["n"] == 18
        failed = await query(
            pool,
            "SELECT args ->> 'notification_id' AS id FROM procrastinate_jobs"
            " WHERE task_name = 'postbell.route' AND status = 'failed' ORDER BY id",
        )
        assert sorted(r["id"] for r in failed) == sorted(poisoned)
    finally:
        await pool.close()
