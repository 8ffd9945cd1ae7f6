"""GET /api/notifications: newest first, cursor pages, filters, delivery counts, indexes."""

from __future__ import annotations

import datetime as dt
from typing import Any

import httpx
import pytest

from postbell.app.core import db
from postbell.app.core.tokens import recipient_token
from tests.conftest import ADMIN, INBOX_SECRET, unique, wait_until
from tests.integration.test_delivery_flow import send


async def listing(api: httpx.AsyncClient, **params: Any) -> dict[str, Any]:
    response = await api.get("/api/notifications", headers=ADMIN, params=params)
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


async def all_pages(api: httpx.AsyncClient, **params: Any) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = []
    cursor = None
    while True:
        page = await listing(api, **params, **({"cursor": cursor} if cursor else {}))
        items.extend(page["items"])
        cursor = page["next_cursor"]
        if cursor is None:
            return items


async def test_newest_first_in_cursor_pages_with_delivery_counts(
    api: httpx.AsyncClient, worker: None
) -> None:
    """A category's notifications come newest first, two per page, every one exactly
    once, each with its delivery counts by status once routed."""
    category = unique("cat")
    assert (
        await api.put(
            f"/api/categories/{category}", headers=ADMIN, json={"default_channels": ["IN_APP"]}
        )
    ).status_code in (200, 201)
    rid = unique("lst")
    sent = [
        await send(api, to=[rid, rid + "-b"], message=f"n{i}", category=category) for i in range(5)
    ]

    async def routed() -> list[dict[str, Any]] | None:
        items = await all_pages(api, category=category, limit=2)
        return items if all(i["status"] == "routed" for i in items) else None

    items = await wait_until(routed)
    assert [i["id"] for i in items] == list(reversed(sent))
    assert all(i["delivery_counts"] == {"sent": 2} for i in items)
    first = items[0]
    assert {k: first[k] for k in ("category", "priority", "recipient_count", "topic")} == {
        "category": category,
        "priority": "normal",
        "recipient_count": 2,
        "topic": None,
    }
    page = await listing(api, category=category, limit=2)
    assert len(page["items"]) == 2 and page["next_cursor"]


async def test_filters(api: httpx.AsyncClient, worker: None) -> None:
    """recipient (routed and not yet routed), status, channel (its own, the category's
    defaults, a fallback) and the created_after/created_before window."""
    category = unique("cat")
    await api.put(
        f"/api/categories/{category}",
        headers=ADMIN,
        json={"default_channels": ["IN_APP", "WEBHOOK"], "fallback": {"WEBHOOK": "SMS"}},
    )
    rid = unique("flt")
    start = dt.datetime.now(dt.UTC)
    plain = await send(api, to=[rid], message="plain", channels=["IN_APP"])
    by_category = await send(api, to=[unique("other")], message="cat", category=category)
    later = (dt.datetime.now(dt.UTC) + dt.timedelta(hours=1)).isoformat()
    scheduled = await send(api, to=[rid], message="later", channels=["EMAIL"], send_at=later)

    async def mine() -> list[str] | None:
        ids = [i["id"] for i in await all_pages(api, recipient=rid)]
        return ids if plain in ids else None

    assert await wait_until(mine) == [scheduled, plain]
    assert [i["id"] for i in await all_pages(api, recipient=rid, status="scheduled")] == [scheduled]
    assert [i["id"] for i in await all_pages(api, recipient=rid, channel="EMAIL")] == [scheduled]
    assert [i["id"] for i in await all_pages(api, recipient=rid, channel="IN_APP")] == [plain]
    assert await all_pages(api, recipient=unique("nobody")) == []

    window = {"created_after": start.isoformat(), "category": category}
    assert [i["id"] for i in await all_pages(api, **window, channel="WEBHOOK")] == [by_category]
    assert [i["id"] for i in await all_pages(api, **window, channel="SMS")] == [by_category]
    assert await all_pages(api, **window, channel="PUSH") == []
    before = {"created_before": start.isoformat(), "category": category}
    assert await all_pages(api, **before) == []

    cancelled = await api.post(f"/api/notifications/{scheduled}/cancel", headers=ADMIN)
    assert cancelled.status_code == 200

    async def shown_cancelled() -> list[str] | None:
        found = [i["id"] for i in await all_pages(api, recipient=rid, status="cancelled")]
        return found or None

    assert await wait_until(shown_cancelled) == [scheduled]


async def test_template_and_workflow_filters(api: httpx.AsyncClient, worker: None) -> None:
    """template keeps the notifications sent with that template; workflow keeps those a
    send step of that workflow made; each item names both (null when neither)."""
    rid = unique("tw")
    start = dt.datetime.now(dt.UTC).isoformat()
    template = unique("tpl")
    put = await api.put(
        f"/api/templates/{template}",
        headers=ADMIN,
        json={
            "default_locale": "en",
            "example_data": {"who": "Ada"},
            "locales": {"en": {"IN_APP": {"body": "Hi {{ who }}"}}},
        },
    )
    assert put.status_code == 200, put.text
    templated = await send(api, to=[rid], template=template, data={"who": "Ada"})
    plain = await send(api, to=[rid], message="plain", channels=["IN_APP"])
    workflow = unique("wf")
    steps = {"steps": [{"type": "send", "channels": ["IN_APP"], "message": "from a workflow"}]}
    assert (
        await api.put(f"/api/workflows/{workflow}", headers=ADMIN, json=steps)
    ).status_code == 200
    trigger = await api.post(
        f"/api/workflows/{workflow}/trigger", headers=ADMIN, json={"to": [rid]}
    )
    assert trigger.status_code == 202, trigger.text

    async def made() -> list[dict[str, Any]] | None:
        items = await all_pages(api, workflow=workflow, created_after=start)
        return items or None

    [by_workflow] = await wait_until(made)
    assert (by_workflow["workflow"], by_workflow["template"]) == (workflow, None)
    [by_template] = await all_pages(api, template=template, created_after=start)
    assert (by_template["id"], by_template["template"], by_template["workflow"]) == (
        templated,
        template,
        None,
    )

    async def all_routed() -> dict[str, dict[str, Any]] | None:
        # under `recipient` a notification shows once its deliveries exist
        found = {i["id"]: i for i in await all_pages(api, recipient=rid)}
        return found if {plain, templated, by_workflow["id"]} <= set(found) else None

    mine = await wait_until(all_routed)
    assert (mine[plain]["template"], mine[plain]["workflow"]) == (None, None)
    assert [i["id"] for i in await all_pages(api, recipient=rid, template=template)] == [templated]
    assert [i["id"] for i in await all_pages(api, recipient=rid, workflow=workflow)] == [
        by_workflow["id"]
    ]
    assert await all_pages(api, template=unique("none"), created_after=start) == []
    assert await all_pages(api, workflow=unique("none"), created_after=start) == []


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"status": "sent"}, "status"),
        ({"channel": "FAX"}, "channel"),
        ({"created_after": "yesterday"}, "created_after"),
        ({"created_before": "2030-01-01T00:00:00"}, "created_before"),
        ({"cursor": "bm90LWEtY3Vyc29y"}, "cursor"),
        ({"limit": "0"}, "limit"),
    ],
)
async def test_bad_filters_are_400_naming_them(
    api: httpx.AsyncClient, params: dict[str, str], field: str
) -> None:
    response = await api.get("/api/notifications", headers=ADMIN, params=params)
    assert response.status_code == 400, response.text
    assert response.json()["field"] == field


async def test_listing_needs_an_api_key(api: httpx.AsyncClient) -> None:
    """No credential is 401; a recipient token (it opens only its own inbox) is 403."""
    assert (await api.get("/api/notifications")).status_code == 401
    token = {"Authorization": f"Bearer {recipient_token(INBOX_SECRET, 'someone')}"}
    assert (await api.get("/api/notifications", headers=token)).status_code == 403


QUERIES = {
    "newest": ("notifications_list", {}),
    "category": ("notifications_list", {"category": "explain-cat-7"}),
    "routed": ("notifications_list", {"status": "routed"}),
    "window": (
        "notifications_list",
        {"created_after": "2026-01-01T00:00:00Z", "created_before": "2026-01-02T00:00:00Z"},
    ),
    "recipient": ("notifications_list_for_recipient", {"recipient": "explain-r-42"}),
    "template": ("notifications_list", {"template": "explain-tpl"}),
    "workflow": ("notifications_list", {"workflow": "explain-wf"}),
}


@pytest.mark.parametrize("case", sorted(QUERIES))
async def test_list_queries_use_indexes(pool: db.Pool, case: str) -> None:
    """On 30,000 notifications (and their deliveries), no filter of the list scans the
    notifications or deliveries table."""
    name, filters = QUERIES[case]
    params: dict[str, Any] = {
        "recipient": None,
        "category": None,
        "status": None,
        "channel": None,
        "template": None,
        "workflow": None,
        "created_after": None,
        "created_before": None,
        "before_at": None,
        "before_id": None,
        "limit": 51,
        **filters,
    }
    async with pool.connection() as conn, conn.transaction(force_rollback=True):
        await conn.execute(
            """
                INSERT INTO recipients (external_id)
                SELECT 'explain-r-' || i FROM generate_series(1, 300) AS i
                ON CONFLICT DO NOTHING;
                INSERT INTO notifications (status, category, body, recipients, created_at)
                SELECT CASE WHEN i % 100 = 0 THEN 'cancelled' ELSE 'routed' END,
                       'explain-cat-' || (i % 50), 'x', ARRAY['explain-r-' || (i % 300)],
                       now() - make_interval(secs => i)
                  FROM generate_series(1, 30000) AS i;
                INSERT INTO deliveries (notification_id, recipient_id, channel, status)
                SELECT n.id, r.id, 'IN_APP', 'sent'
                  FROM notifications AS n
                  JOIN recipients AS r ON r.external_id = n.recipients[1]
                 WHERE n.body = 'x' AND n.category LIKE 'explain-cat-%';
                ANALYZE notifications;
                ANALYZE deliveries;
                ANALYZE recipients;
                """
        )
        cursor = await conn.execute(b"EXPLAIN " + db.queries[name], params, prepare=False)
        plan = "\n".join(str(r["QUERY PLAN"]) for r in await cursor.fetchall())
        # deliveries' months (0030) that hold rows; an empty one costs nothing to scan
        cursor = await conn.execute(
            "SELECT name FROM delivery_partitions() AS p"
            " JOIN pg_class AS c ON c.oid = ('postbell.' || p.name)::regclass"
            " WHERE c.reltuples > 0"
        )
        filled = [r["name"] for r in await cursor.fetchall()]
    assert "Seq Scan on notifications" not in plan, plan
    assert filled and not [p for p in filled if f"Seq Scan on {p} " in plan], plan
