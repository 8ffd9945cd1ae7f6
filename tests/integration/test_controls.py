"""Recipient controls with real Postgres and the real worker: preferences, categories,
topics, idempotency, scheduling and cancel, quiet hours, rate limits."""

from __future__ import annotations

import asyncio
import datetime as dt
from typing import Any

import httpx
import pytest

from postbell.app.core import db, keys, tokens
from tests.conftest import ADMIN, INBOX_SECRET, query, unique, wait_until
from tests.integration.test_delivery_flow import send, settled
from tests.peers.smtp import SmtpPeer


def token_for(external_id: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {tokens.recipient_token(INBOX_SECRET, external_id)}"}


async def channel_states(api: httpx.AsyncClient, nid: str) -> dict[str, tuple[str, str | None]]:
    body = (await api.get(f"/api/notifications/{nid}", headers=ADMIN)).json()
    return {d["channel"]: (d["status"], d["reason"]) for d in body["deliveries"]}


# -- preferences ---------------------------------------------------------------------


async def test_preferences_partial_put_and_token_access(api: httpx.AsyncClient) -> None:
    rid = unique("pref")
    empty = await api.get(f"/api/recipients/{rid}/preferences", headers=ADMIN)
    assert empty.json() == {
        "channels": {},
        "categories": {},
        "topics": {},
        "quiet_hours": None,
        "updated_at": None,
        "digest": {},
    }
    first = await api.put(
        f"/api/recipients/{rid}/preferences",
        headers=ADMIN,
        json={"channels": {"EMAIL": False}, "categories": {"events": {"SMS": False}}},
    )
    assert first.status_code == 200
    # The recipient's own token changes only what it names.
    second = await api.put(
        f"/api/recipients/{rid}/preferences",
        headers=token_for(rid),
        json={
            "categories": {"events": {"PUSH": False}, "digest": {"EMAIL": True}},
            "quiet_hours": {"start": "22:00", "end": "07:00", "timezone": "Europe/Berlin"},
        },
    )
    body = second.json()
    assert body["channels"] == {"EMAIL": False}
    assert body["categories"] == {
        "events": {"SMS": False, "PUSH": False},
        "digest": {"EMAIL": True},
    }
    assert body["quiet_hours"] == {"start": "22:00", "end": "07:00", "timezone": "Europe/Berlin"}
    cleared = await api.put(
        f"/api/recipients/{rid}/preferences", headers=token_for(rid), json={"quiet_hours": None}
    )
    assert cleared.json()["quiet_hours"] is None and cleared.json()["channels"] == {"EMAIL": False}
    other = await api.get(f"/api/recipients/{unique('other')}/preferences", headers=token_for(rid))
    assert other.status_code == 403


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"channels": {"FAX": False}}, "channels"),
        ({"channels": {"EMAIL": "no"}}, "channels.EMAIL"),
        ({"quiet_hours": {"start": "25:00", "end": "07:00"}}, "quiet_hours.start"),
        (
            {"quiet_hours": {"start": "22:00", "end": "07:00", "timezone": "Moon/Base"}},
            "quiet_hours.timezone",
        ),
        ({"quiet_hours": {"start": "22:00"}}, "quiet_hours"),
        ({"colour": "red"}, "colour"),
    ],
)
async def test_bad_preferences_are_422(
    api: httpx.AsyncClient, body: dict[str, Any], field: str
) -> None:
    response = await api.put(f"/api/recipients/{unique()}/preferences", headers=ADMIN, json=body)
    assert response.status_code == 422, response.text
    assert response.json()["field"] is None or response.json()["field"].startswith(
        field.split(".")[0]
    )


async def test_opt_out_is_recorded_and_required_categories_ignore_it(
    api: httpx.AsyncClient, worker: None, smtp: SmtpPeer
) -> None:
    rid = unique("optout")
    await api.put(f"/api/recipients/{rid}", headers=ADMIN, json={"email": f"{rid}@example.org"})
    await api.put(
        f"/api/recipients/{rid}/preferences",
        headers=ADMIN,
        json={"channels": {"EMAIL": False}, "categories": {"social": {"IN_APP": False}}},
    )
    await api.put("/api/categories/social", headers=ADMIN, json={"name": "Social"})
    await api.put(
        "/api/categories/security",
        headers=ADMIN,
        json={"required": True, "default_channels": ["IN_APP", "EMAIL"]},
    )

    plain = await send(api, to=[rid], message="hi", channels=["IN_APP", "EMAIL"])
    await settled(api, plain, {"sent": 1, "skipped": 1})
    assert await channel_states(api, plain) == {
        "IN_APP": ("sent", None),
        "EMAIL": ("skipped", "opted_out"),
    }

    social = await send(api, to=[rid], message="a like", channels=["IN_APP"], category="social")
    await settled(api, social, {"skipped": 1})
    assert await channel_states(api, social) == {"IN_APP": ("skipped", "opted_out")}

    # channels omitted: the category's defaults; required: preferences do not apply
    security = await send(api, to=[rid], message="new sign-in", category="security")
    await settled(api, security, {"sent": 2})
    assert len(smtp.to(f"{rid}@example.org")) == 1


async def test_category_api_and_unknown_category(api: httpx.AsyncClient, pool: db.Pool) -> None:
    key = unique("cat")
    created = await api.put(
        f"/api/categories/{key}",
        headers=ADMIN,
        json={
            "default_channels": ["EMAIL"],
            "fallback": {"PUSH": "SMS"},
            "rate_limits": {"SMS": {"limit": 5, "per": "1h"}},
        },
    )
    assert created.status_code == 200
    assert created.json()["rate_limits"] == {
        "SMS": {"limit": 5, "per": "1h", "per_seconds": 3600, "policy": "defer"}
    }
    assert key in [
        c["key"] for c in (await api.get("/api/categories", headers=ADMIN)).json()["items"]
    ]
    bad = await api.put(
        f"/api/categories/{key}",
        headers=ADMIN,
        json={"rate_limits": {"SMS": {"limit": 5, "per": "soon"}}},
    )
    assert (bad.status_code, bad.json()["field"]) == (422, "rate_limits.SMS.per")
    before = (await query(pool, "SELECT count(*) AS n FROM notifications"))[0]["n"]
    unknown = await api.post(
        "/api/notifications",
        headers=ADMIN,
        json={"to": ["a"], "message": "x", "category": "nope-" + key},
    )
    assert (unknown.status_code, unknown.json()["field"]) == (422, "category")
    assert (await query(pool, "SELECT count(*) AS n FROM notifications"))[0]["n"] == before


# -- topics and bulk -------------------------------------------------------------------


async def test_topic_subscribe_list_unsubscribe_and_fan_out(
    api: httpx.AsyncClient, worker: None
) -> None:
    topic = unique("community")
    members = [unique("m") for _ in range(7)]
    added = await api.put(
        f"/api/topics/{topic}/subscribers", headers=ADMIN, json={"recipients": members}
    )
    assert added.json() == {"topic": topic, "changed": 7, "subscribers": 7}
    again = await api.put(
        f"/api/topics/{topic}/subscribers", headers=ADMIN, json={"recipients": members[:2]}
    )
    assert again.json()["changed"] == 0
    first = (
        await api.get(f"/api/topics/{topic}/subscribers", headers=ADMIN, params={"limit": 4})
    ).json()
    rest = (
        await api.get(
            f"/api/topics/{topic}/subscribers",
            headers=ADMIN,
            params={"cursor": first["next_cursor"]},
        )
    ).json()
    assert sorted(i["recipient"] for i in first["items"] + rest["items"]) == sorted(members)
    assert (first["total"], rest["next_cursor"]) == (7, None)
    removed = await api.request(
        "DELETE",
        f"/api/topics/{topic}/subscribers",
        headers=ADMIN,
        json={"recipients": members[:1]},
    )
    assert removed.json() == {"topic": topic, "changed": 1, "subscribers": 6}

    nid = await send(api, topic=topic, message="Meet-up tonight")
    body = await settled(api, nid, {"sent": 6})
    assert sorted(d["recipient"] for d in body["deliveries"]) == sorted(members[1:])
    for member in members[1:]:
        inbox = (await api.get(f"/api/inbox/{member}", headers=ADMIN)).json()
        assert inbox["items"][0]["body"] == "Meet-up tonight"


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"to": ["a"], "topic": "t", "message": "x"}, "topic"),
        ({"message": "x"}, "to"),
        ({"topic": "no-such-topic-at-all", "message": "x"}, "topic"),
        ({"topic": "bad key!", "message": "x"}, "topic"),
    ],
)
async def test_bad_targets(api: httpx.AsyncClient, body: dict[str, Any], field: str) -> None:
    response = await api.post("/api/notifications", headers=ADMIN, json=body)
    assert (response.status_code, response.json()["field"]) == (422, field), response.text


async def test_bulk_upsert(api: httpx.AsyncClient, pool: db.Pool) -> None:
    ids = [unique("bulk") for _ in range(3)]
    await api.put(
        f"/api/recipients/{ids[0]}", headers=ADMIN, json={"email": "old@example.org", "name": "Old"}
    )
    response = await api.post(
        "/api/recipients/bulk",
        headers=ADMIN,
        json={
            "recipients": [
                {"external_id": ids[0], "email": "new@example.org"},
                {"external_id": ids[1], "phone": "+14155550100"},
                {"external_id": ids[2]},
            ]
        },
    )
    assert response.json() == {"created": 2, "updated": 1}
    first = (await api.get(f"/api/recipients/{ids[0]}", headers=ADMIN)).json()
    assert (first["email"], first["name"]) == ("new@example.org", "Old")


async def test_bulk_bad_input_writes_nothing(api: httpx.AsyncClient, pool: db.Pool) -> None:
    before = (await query(pool, "SELECT count(*) AS n FROM recipients"))[0]["n"]
    too_many = {"recipients": [{"external_id": f"x{i}"} for i in range(10_001)]}
    response = await api.post("/api/recipients/bulk", headers=ADMIN, json=too_many)
    assert (response.status_code, response.json()["field"]) == (422, "recipients")
    bad_row = {
        "recipients": [{"external_id": unique()}, {"external_id": unique(), "email": "nope"}]
    }
    response = await api.post("/api/recipients/bulk", headers=ADMIN, json=bad_row)
    assert (response.status_code, response.json()["field"]) == (422, "recipients[1].email")
    twice = {"recipients": [{"external_id": "same"}, {"external_id": "same"}]}
    assert (await api.post("/api/recipients/bulk", headers=ADMIN, json=twice)).status_code == 422
    assert (await query(pool, "SELECT count(*) AS n FROM recipients"))[0]["n"] == before


# -- idempotency -------------------------------------------------------------------------


async def test_idempotency_under_concurrent_repeats(api: httpx.AsyncClient, pool: db.Pool) -> None:
    key = unique("idem")
    body = {"to": [unique("i")], "message": "only once"}
    before = (await query(pool, "SELECT count(*) AS n FROM notifications"))[0]["n"]
    responses = await asyncio.gather(
        *(
            api.post("/api/notifications", headers={**ADMIN, "Idempotency-Key": key}, json=body)
            for _ in range(12)
        )
    )
    statuses = sorted(r.status_code for r in responses)
    assert statuses == [200] * 11 + [202]
    assert len({r.json()["id"] for r in responses}) == 1
    assert (await query(pool, "SELECT count(*) AS n FROM notifications"))[0]["n"] == before + 1
    conflict = await api.post(
        "/api/notifications",
        headers={**ADMIN, "Idempotency-Key": key},
        json={**body, "message": "something else"},
    )
    assert (conflict.status_code, conflict.json()["error"], conflict.json()["field"]) == (
        422,
        "idempotency_conflict",
        "Idempotency-Key",
    )
    assert conflict.json()["detail"] == "this Idempotency-Key was used with a different request"
    # Same key, other API keys: each its own scope (the bootstrap admin key's, and one
    # per stored key: two stored keys never share one).
    async with pool.connection() as conn:
        _, other = await keys.create_key(conn, "send")
        _, third = await keys.create_key(conn, "send")
    ids = set()
    for credential in (other, third):
        elsewhere = await api.post(
            "/api/notifications",
            headers={"Authorization": f"Bearer {credential}", "Idempotency-Key": key},
            json=body,
        )
        assert elsewhere.status_code == 202
        ids.add(elsewhere.json()["id"])
    assert len(ids) == 2 and responses[0].json()["id"] not in ids


async def test_idempotency_key_expires(api: httpx.AsyncClient, pool: db.Pool) -> None:
    key = unique("old")
    body = {"to": [unique("i")], "message": "again tomorrow"}
    first = await api.post(
        "/api/notifications", headers={**ADMIN, "Idempotency-Key": key}, json=body
    )
    await query(
        pool,
        "UPDATE notifications SET created_at = now() - interval '25 hours' WHERE id = %s",
        (first.json()["id"],),
    )
    second = await api.post(
        "/api/notifications", headers={**ADMIN, "Idempotency-Key": key}, json=body
    )
    assert second.status_code == 202 and second.json()["id"] != first.json()["id"]


# -- scheduling and cancel -----------------------------------------------------------------


async def test_scheduled_send_waits_for_send_at(
    api: httpx.AsyncClient, pool: db.Pool, worker: None
) -> None:
    rid = unique("later")
    send_at = dt.datetime.now(dt.UTC) + dt.timedelta(seconds=2)
    response = await api.post(
        "/api/notifications",
        headers=ADMIN,
        json={"to": [rid], "message": "soon", "send_at": send_at.isoformat()},
    )
    assert response.json()["status"] == "scheduled"
    nid = response.json()["id"]
    # Held by its job's schedule, not by luck: the route job runs no earlier than send_at.
    (job,) = await query(
        pool,
        "SELECT scheduled_at FROM procrastinate_jobs WHERE task_name = 'postbell.route'"
        " AND args ->> 'notification_id' = %s",
        (nid,),
    )
    assert job["scheduled_at"] >= send_at - dt.timedelta(milliseconds=1)
    body = await settled(api, nid, {"sent": 1})
    sent_at = dt.datetime.fromisoformat(body["deliveries"][0]["sent_at"])
    assert sent_at >= send_at


async def test_cancel_scheduled_records_every_delivery_cancelled(
    api: httpx.AsyncClient, worker: None
) -> None:
    rids = [unique("c"), unique("c")]
    send_at = (dt.datetime.now(dt.UTC) + dt.timedelta(hours=1)).isoformat()
    nid = (
        await api.post(
            "/api/notifications",
            headers=ADMIN,
            json={
                "to": rids,
                "message": "never",
                "send_at": send_at,
                "channels": ["IN_APP", "EMAIL"],
            },
        )
    ).json()["id"]
    cancelled = await api.post(f"/api/notifications/{nid}/cancel", headers=ADMIN)
    assert (cancelled.status_code, cancelled.json()) == (
        200,
        {"id": nid, "status": "cancelled", "cancelled": 4},
    )
    body = await settled(api, nid, {"cancelled": 4})
    assert body["status"] == "cancelled"
    assert (await api.get(f"/api/inbox/{rids[0]}", headers=ADMIN)).json()["items"] == []
    again = await api.post(f"/api/notifications/{nid}/cancel", headers=ADMIN)
    assert again.status_code == 409


async def test_cancel_after_sending_is_409(api: httpx.AsyncClient, worker: None) -> None:
    nid = await send(api, to=[unique("s")], message="gone already")
    await settled(api, nid, {"sent": 1})
    response = await api.post(f"/api/notifications/{nid}/cancel", headers=ADMIN)
    assert (response.status_code, response.json()["error"]) == (409, "conflict")
    missing = await api.post(
        "/api/notifications/7b0e7d0a-2d2a-4f0a-9a59-4d5c7f3b0a11/cancel", headers=ADMIN
    )
    assert missing.status_code == 404


# -- quiet hours and rate limits ------------------------------------------------------------


def quiet_now(zone: str = "Pacific/Kiritimati") -> dict[str, str]:
    """Quiet hours around the current time in ``zone`` (an hour back, two ahead)."""
    import zoneinfo

    local = dt.datetime.now(zoneinfo.ZoneInfo(zone))
    start = (local - dt.timedelta(hours=1)).strftime("%H:%M")
    end = (local + dt.timedelta(hours=2)).strftime("%H:%M")
    return {"start": start, "end": end, "timezone": zone}


async def test_quiet_hours_hold_non_urgent_channels(
    api: httpx.AsyncClient, worker: None, smtp: SmtpPeer
) -> None:
    rid = unique("sleepy")
    await api.put(f"/api/recipients/{rid}", headers=ADMIN, json={"email": f"{rid}@example.org"})
    await api.put(
        f"/api/recipients/{rid}/preferences", headers=ADMIN, json={"quiet_hours": quiet_now()}
    )
    normal = await send(api, to=[rid], message="tomorrow is fine", channels=["IN_APP", "EMAIL"])
    body = await settled(api, normal, {"sent": 1, "pending": 1})
    email = next(d for d in body["deliveries"] if d["channel"] == "EMAIL")
    assert email["reason"] == "quiet_hours"
    held_until = dt.datetime.fromisoformat(email["next_attempt_at"])
    assert dt.timedelta(hours=1.9) < held_until - dt.datetime.now(dt.UTC) <= dt.timedelta(hours=2)
    urgent = await send(
        api, to=[rid], message="password reset", channels=["EMAIL"], priority="urgent"
    )
    await settled(api, urgent, {"sent": 1})


async def test_quiet_hours_end_across_dst(pool: db.Pool) -> None:
    """The end of the window is the recipient's wall clock, whatever the offset did."""
    cases = [
        # Berlin springs forward on 2026-03-29 at 02:00: 07:00 CEST is 05:00 UTC.
        (
            "2026-03-28T22:30:00Z",
            {"start": "22:00", "end": "07:00", "timezone": "Europe/Berlin"},
            "2026-03-29T05:00:00+00:00",
        ),
        # New York falls back on 2026-11-01 at 02:00: 07:00 EST is 12:00 UTC.
        (
            "2026-11-01T03:30:00Z",
            {"start": "22:00", "end": "07:00", "timezone": "America/New_York"},
            "2026-11-01T12:00:00+00:00",
        ),
        # Outside the window: no hold.
        (
            "2026-06-01T12:00:00Z",
            {"start": "22:00", "end": "07:00", "timezone": "Europe/Berlin"},
            None,
        ),
        # A daytime window, no midnight in it.
        (
            "2026-06-01T10:00:00Z",
            {"start": "09:00", "end": "17:00", "timezone": "UTC"},
            "2026-06-01T17:00:00+00:00",
        ),
    ]
    from psycopg.types.json import Jsonb

    for now, quiet, expected in cases:
        rows = await query(
            pool, "SELECT quiet_hours_end(%s, NULL, %s::timestamptz) AS until", (Jsonb(quiet), now)
        )
        got = rows[0]["until"]
        assert (got.isoformat() if got else None) == expected, (now, quiet)


async def test_rate_limit_skip_and_defer(
    api: httpx.AsyncClient, pool: db.Pool, worker: None, smtp: SmtpPeer
) -> None:
    skip_cat, defer_cat = unique("promo"), unique("digest")
    await api.put(
        f"/api/categories/{skip_cat}",
        headers=ADMIN,
        json={"rate_limits": {"EMAIL": {"limit": 2, "per": "1h", "policy": "skip"}}},
    )
    await api.put(
        f"/api/categories/{defer_cat}",
        headers=ADMIN,
        json={"rate_limits": {"EMAIL": {"limit": 1, "per": "1h", "policy": "defer"}}},
    )
    rid = unique("busy")
    await api.put(f"/api/recipients/{rid}", headers=ADMIN, json={"email": f"{rid}@example.org"})
    states = []
    for n in range(4):
        nid = await send(api, to=[rid], message=f"promo {n}", channels=["EMAIL"], category=skip_cat)
        body = await wait_until(lambda nid=nid: _final(api, nid))
        states.append((body["status"], body["reason"]))
    assert states == [
        ("sent", None),
        ("sent", None),
        ("skipped", "rate_limited"),
        ("skipped", "rate_limited"),
    ]
    first = await send(api, to=[rid], message="digest 1", channels=["EMAIL"], category=defer_cat)
    await settled(api, first, {"sent": 1})
    second = await send(api, to=[rid], message="digest 2", channels=["EMAIL"], category=defer_cat)

    async def held() -> dict[str, Any] | None:
        (d,) = (await api.get(f"/api/notifications/{second}", headers=ADMIN)).json()[
            "deliveries"
        ] or [None]
        return d if d and d["reason"] == "rate_limited" else None

    delivery = await wait_until(held)
    assert delivery["status"] == "pending" and delivery["attempts"] == 0
    wait = dt.datetime.fromisoformat(delivery["next_attempt_at"]) - dt.datetime.now(dt.UTC)
    assert dt.timedelta(minutes=59) < wait <= dt.timedelta(hours=1)
    # Held by a job that carries it, scheduled for when the slot frees (not lost).
    jobs = await query(
        pool,
        "SELECT scheduled_at FROM procrastinate_jobs WHERE task_name = 'postbell.deliver'"
        " AND status = 'todo' AND args -> 'ids' @> %s::jsonb",
        (f"[{delivery['id']}]",),
    )
    assert [j["scheduled_at"] for j in jobs] == [
        dt.datetime.fromisoformat(delivery["next_attempt_at"])
    ]


async def _final(api: httpx.AsyncClient, nid: str) -> dict[str, Any] | None:
    deliveries = (await api.get(f"/api/notifications/{nid}", headers=ADMIN)).json()["deliveries"]
    return (
        deliveries[0]
        if deliveries and deliveries[0]["status"] in ("sent", "skipped", "dead")
        else None
    )


async def test_one_click_unsubscribe(api: httpx.AsyncClient, worker: None, smtp: SmtpPeer) -> None:
    """A non-required category's email carries List-Unsubscribe (RFC 8058); POSTing
    its link opts the recipient out of that category's EMAIL, nothing else."""
    from urllib.parse import urlsplit

    rid, category = unique("unsub"), unique("digest")
    address = f"{rid}@example.org"
    await api.put(
        f"/api/categories/{category}", headers=ADMIN, json={"default_channels": ["EMAIL"]}
    )
    await api.put(f"/api/recipients/{rid}", headers=ADMIN, json={"email": address})
    await settled(
        api, await send(api, to=[rid], message="weekly digest", category=category), {"sent": 1}
    )
    (mail,) = smtp.to(address)
    assert mail.message["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    link = urlsplit(mail.message["List-Unsubscribe"].strip("<>"))
    assert (link.scheme, link.netloc, link.path) == (
        "https",
        "postbell.example.org",
        "/api/unsubscribe",
    )
    page = await api.get(f"{link.path}?{link.query}")
    assert page.status_code == 200 and "<form" in page.text  # following the link changes nothing
    done = await api.post(f"{link.path}?{link.query}", content=b"List-Unsubscribe=One-Click")
    assert done.json() == {"status": "unsubscribed", "category": category}
    prefs = (await api.get(f"/api/recipients/{rid}/preferences", headers=ADMIN)).json()
    assert prefs["categories"] == {category: {"EMAIL": False}}
    again = await send(api, to=[rid], message="next week", category=category)
    assert await channel_states(api, (await settled(api, again, {"skipped": 1}))["id"]) == {
        "EMAIL": ("skipped", "opted_out")
    }
    forged = await api.post("/api/unsubscribe?token=" + link.query.split("=", 1)[1][:-3] + "xyz")
    assert forged.status_code == 403
