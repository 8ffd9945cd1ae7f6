"""Routing in batches: one bad notification fails only its own job."""

from __future__ import annotations

from psycopg.types.json import Jsonb

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
    each alone: the other eighteen are routed, the two jobs fail, nothing is lost —
    three of them topic notifications (each fanned out to both members, none dropped
    by the one-by-one path) and two without channels (IN_APP by default)."""
    settings = make_settings(fresh_database_url)
    pool = db.create_pool(fresh_database_url, max_size=5)
    await pool.open(wait=True)
    try:
        async with api_client(create_app(settings, pool=pool)) as client:
            subscribed = await client.put(
                "/api/topics/club/subscribers",
                headers=ADMIN,
                json={"recipients": ["member-1", "member-2"]},
            )
            assert subscribed.status_code == 200, subscribed.text
            ids = []
            for i in range(20):
                body: dict[str, object] = {"to": [f"user-{i}"], "message": f"m{i}"}
                if i in (3, 11, 15):
                    body = {"topic": "club", "message": f"m{i}"}
                if i not in (5, 12):  # those two name no channel: IN_APP by default
                    body["channels"] = ["IN_APP"]
                response = await client.post("/api/notifications", headers=ADMIN, json=body)
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
        assert inbox[0]["n"] == 15 + 3 * 2
        members = await query(
            pool,
            "SELECT r.external_id, count(*) AS n FROM deliveries AS d"
            " JOIN recipients AS r ON r.id = d.recipient_id"
            " WHERE r.external_id LIKE 'member-%%' GROUP BY 1 ORDER BY 1",
        )
        assert members == [{"external_id": "member-1", "n": 3}, {"external_id": "member-2", "n": 3}]
        defaults = await query(
            pool,
            "SELECT r.external_id, d.channel FROM deliveries AS d"
            " JOIN recipients AS r ON r.id = d.recipient_id"
            " WHERE r.external_id IN ('user-5', 'user-12') ORDER BY 1",
        )
        assert defaults == [
            {"external_id": "user-12", "channel": "IN_APP"},
            {"external_id": "user-5", "channel": "IN_APP"},
        ]
        failed = await query(
            pool,
            "SELECT args ->> 'notification_id' AS id FROM procrastinate_jobs"
            " WHERE task_name = 'postbell.route' AND status = 'failed' ORDER BY id",
        )
        assert sorted(r["id"] for r in failed) == sorted(poisoned)
    finally:
        await pool.close()


async def test_skip_reasons_read_each_channels_address_as_the_row_holds_it(
    fresh_database_url: str,
) -> None:
    """delivery_skip_reason() reads the address columns directly (0032), not through
    to_jsonb() of the recipient: for every channel with an address, recipients with no
    address, with only one of them, with all of them, and with all of them and one
    marked inactive get the answer the row-as-jsonb rule gives; a field no column holds
    counts as no address."""
    from postbell.workers.channels.registry import REGISTRY

    fields = [
        (c.address_field, c.inactive_field)
        for c in REGISTRY.values()
        if c.address_field not in (None, "@devices")
    ] + [("no_such_field", None), ("webhook_url", "no_such_inactive")]
    addresses = sorted({a for a, _ in fields if a != "no_such_field"} - {"apprise_urls"})
    inactive = sorted({i for _, i in fields if i and i != "no_such_inactive"})
    every = {a: f"{a}-value" for a in addresses}
    shapes = [("none", {})]
    shapes += [(f"only-{a}", {a: f"{a}-value"}) for a in addresses]
    shapes += [("all", every)]
    shapes += [(f"inactive-{i}", {**every, i: "2026-01-01T00:00:00Z"}) for i in inactive]
    async with await db.connect(fresh_database_url) as conn:
        await conn.execute(
            "INSERT INTO recipients (external_id, email, phone, webhook_url, slack_webhook_url,"
            "  discord_webhook_url, teams_webhook_url, whatsapp, telegram_chat_id,"
            "  email_inactive_at, phone_inactive_at, whatsapp_inactive_at, telegram_inactive_at)"
            " SELECT x.external_id, x.email, x.phone, x.webhook_url, x.slack_webhook_url,"
            "        x.discord_webhook_url, x.teams_webhook_url, x.whatsapp, x.telegram_chat_id,"
            "        x.email_inactive_at, x.phone_inactive_at, x.whatsapp_inactive_at,"
            "        x.telegram_inactive_at"
            "   FROM unnest(%s::text[], %s::jsonb[]) AS s(name, fields),"
            "        jsonb_populate_record(NULL::recipients,"
            "                              s.fields || jsonb_build_object('external_id', s.name)) AS x",
            ([n for n, _ in shapes], [Jsonb(f) for _, f in shapes]),
        )
        cursor = await conn.execute(
            "SELECT r.external_id, f.address, f.inactive,"
            "       delivery_skip_reason('X', true, f.address, f.inactive, NULL, r,"
            "                            NULL::preferences, NULL, false) AS reason,"
            "       CASE WHEN to_jsonb(r) ->> f.address IS NULL THEN 'no_address'"
            "            WHEN to_jsonb(r) ->> f.inactive IS NOT NULL THEN 'address_inactive'"
            "       END AS expected"
            "  FROM recipients AS r,"
            "       unnest(%s::text[], %s::text[]) AS f(address, inactive)",
            ([a for a, _ in fields], [i for _, i in fields]),
        )
        rows = await cursor.fetchall()
    assert len(rows) == len(shapes) * len(fields)
    assert [r for r in rows if r["reason"] != r["expected"]] == []
    answers = {(r["external_id"], r["address"]): r["reason"] for r in rows}
    assert answers[("only-telegram_chat_id", "telegram_chat_id")] is None
    assert answers[("only-telegram_chat_id", "whatsapp")] == "no_address"
    assert answers[("inactive-email_inactive_at", "email")] == "address_inactive"
    assert answers[("inactive-email_inactive_at", "phone")] is None
    assert answers[("all", "no_such_field")] == "no_address"
