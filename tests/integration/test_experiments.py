"""A/B experiments: deterministic assignment per (experiment, recipient) decided at
routing, each variant's own text, outcomes per variant with their statistics
(checked against a hand computation), clicks counted once per delivery through signed
redirect links that go nowhere but the URL they sign, and bad input refused."""

from __future__ import annotations

import math
import uuid
from typing import Any

import httpx
import pytest

from postbell.app.core import db, tokens
from postbell.workers.channels.base import Delivery, Recipient
from postbell.workers.channels.email import Tracking, mime
from tests.conftest import ADMIN, INBOX_SECRET, query, unique
from tests.integration.test_delivery_flow import send, settled

VARIANTS = [
    {"name": "a", "weight": 50, "title": "Welcome!", "body": "Glad you are here."},
    {"name": "b", "weight": 50, "title": "Hello there", "body": "Come and say hi."},
]


async def test_ten_thousand_recipients_split_fifty_fifty_and_stay_put(
    api: httpx.AsyncClient, worker: None, pool: db.Pool
) -> None:
    """10,000 recipients of one notification split 50/50 within ±2 %; a second
    notification of the same experiment gives every recipient the same variant; the
    inbox shows each recipient its variant's text."""
    experiment = unique("exp")
    prefix = unique("ab")
    people = [f"{prefix}-{i}" for i in range(10_000)]
    first = await send(
        api, to=people, channels=["IN_APP"], experiment=experiment, variants=VARIANTS
    )
    await settled(api, first, {"sent": 10_000})
    split = await query(
        pool,
        "SELECT variant, count(*) AS n FROM deliveries WHERE notification_id = %(id)s"
        " GROUP BY variant ORDER BY variant",
        {"id": first},
    )
    assert [r["variant"] for r in split] == ["a", "b"]
    assert all(4_800 <= r["n"] <= 5_200 for r in split), split

    second = await send(
        api, to=people[:2_000], channels=["IN_APP"], experiment=experiment, variants=VARIANTS
    )
    await settled(api, second, {"sent": 2_000})
    moved = await query(
        pool,
        "SELECT count(*) AS n FROM deliveries AS x JOIN deliveries AS y"
        " ON y.recipient_id = x.recipient_id AND y.notification_id = %(second)s"
        " WHERE x.notification_id = %(first)s AND x.variant <> y.variant",
        {"first": first, "second": second},
    )
    assert moved == [{"n": 0}]

    (row,) = await query(
        pool,
        "SELECT variant FROM deliveries AS d JOIN recipients AS r ON r.id = d.recipient_id"
        " WHERE d.notification_id = %(id)s AND r.external_id = %(who)s",
        {"id": first, "who": people[0]},
    )
    inbox = (await api.get(f"/api/inbox/{people[0]}", headers=ADMIN)).json()
    variant = next(v for v in VARIANTS if v["name"] == row["variant"])
    item = next(i for i in inbox["items"] if i["notification_id"] == first)
    assert (item["title"], item["body"]) == (variant["title"], variant["body"])


async def test_assignment_is_the_documented_hash(pool: db.Pool) -> None:
    """The bucket is the first 60 bits of md5(experiment, 0x1f, external id) modulo
    the weights' sum: computed here by hand for a 1:3 split."""
    import hashlib

    variants = '[{"name": "x", "weight": 1}, {"name": "y", "weight": 3}]'
    rows = await query(
        pool,
        "SELECT 'u' || g AS who, experiment_variant('e1', 'u' || g, %(v)s::jsonb) AS v"
        " FROM generate_series(1, 200) AS g",
        {"v": variants},
    )
    for row in rows:
        bucket = int(hashlib.md5(f"e1\x1f{row['who']}".encode()).hexdigest()[:15], 16) % 4
        assert row["v"] == ("x" if bucket < 1 else "y"), row


async def experiment_with(
    pool: db.Pool, experiment: str, arms: dict[str, tuple[int, int]]
) -> dict[str, list[int]]:
    """A routed notification of ``experiment`` with, per variant, ``sent`` EMAIL
    deliveries of which ``clicked`` have a click; answers each variant's delivery ids."""
    prefix = unique("st")
    notification = uuid.uuid4()
    variants = [{"name": name, "weight": 1, "body": name} for name in arms]
    async with pool.connection() as conn:
        await conn.execute(
            "INSERT INTO notifications (id, status, body, recipients, experiment, variants)"
            " VALUES (%(id)s, 'routed', 'x', '{}', %(e)s, %(v)s::jsonb)",
            {"id": notification, "e": experiment, "v": __import__("json").dumps(variants)},
        )
        ids: dict[str, list[int]] = {}
        for name, (sent, _) in arms.items():
            cur = await conn.execute(
                "WITH r AS (INSERT INTO recipients (external_id)"
                "   SELECT %(p)s || %(name)s || g FROM generate_series(1, %(n)s) AS g RETURNING id)"
                " INSERT INTO deliveries (notification_id, recipient_id, channel, status, variant)"
                " SELECT %(id)s, r.id, 'EMAIL', 'sent', %(name)s FROM r RETURNING id",
                {"p": prefix, "name": name, "n": sent, "id": notification},
            )
            ids[name] = sorted(r["id"] for r in await cur.fetchall())
        for name, (_, clicked) in arms.items():
            await conn.execute(
                "INSERT INTO delivery_engagements (delivery_id, kind)"
                " SELECT unnest(%(ids)s::bigint[]), 'clicked'",
                {"ids": ids[name][:clicked]},
            )
    return ids


def hand_computed(n1: int, x1: int, n2: int, x2: int) -> dict[str, float]:
    """The textbook two-proportion comparison: unpooled CI, pooled z-test."""
    p1, p2 = x1 / n1, x2 / n2
    se = math.sqrt(p1 * (1 - p1) / n1 + p2 * (1 - p2) / n2)
    pooled = (x1 + x2) / (n1 + n2)
    z = (p2 - p1) / math.sqrt(pooled * (1 - pooled) * (1 / n1 + 1 / n2))
    return {
        "diff": p2 - p1,
        "ci_low": p2 - p1 - 1.959963984540054 * se,
        "ci_high": p2 - p1 + 1.959963984540054 * se,
        "z": z,
        "p_value": math.erfc(abs(z) / math.sqrt(2)),
    }


async def test_stats_match_a_hand_computed_example(api: httpx.AsyncClient, pool: db.Pool) -> None:
    """a: 1,000 sent, 100 clicked; b: 1,000 sent, 130 clicked. By hand: difference
    0.03, 95 % CI [0.00207, 0.05793], z = 2.1027, p = 0.0355 — the API and the view
    agree (p to the normal approximation's 1e-6)."""
    experiment = unique("stats")
    await experiment_with(pool, experiment, {"a": (1000, 100), "b": (1000, 130)})
    response = await api.get(f"/api/experiments/{experiment}", headers=ADMIN)
    assert response.status_code == 200, response.text
    a, b = response.json()["variants"]
    assert (a["name"], a["sent"], a["baseline"], b["name"], b["sent"]) == (
        "a",
        1000,
        True,
        "b",
        1000,
    )
    assert a["clicked"]["count"] == 100 and a["clicked"]["rate"] == pytest.approx(0.10)
    assert a["clicked"]["diff"] is None and a["clicked"]["p_value"] is None
    expected = hand_computed(1000, 100, 1000, 130)
    got = b["clicked"]
    for field in ("diff", "ci_low", "ci_high", "z"):
        assert got[field] == pytest.approx(expected[field], abs=1e-9), field
    assert got["p_value"] == pytest.approx(expected["p_value"], abs=1e-6)
    assert (round(got["ci_low"], 5), round(got["ci_high"], 5)) == (0.00207, 0.05793)
    assert round(got["z"], 4) == 2.1027 and round(got["p_value"], 4) == 0.0355
    # nothing delivered/opened in either: equal rates, no difference, p = 1
    assert b["opened"]["count"] == 0 and b["opened"]["p_value"] == 1.0
    view = await query(
        pool,
        "SELECT round(p_value::numeric, 4) AS p FROM experiment_stats"
        " WHERE experiment = %(e)s AND variant = 'b' AND metric = 'clicked'",
        {"e": experiment},
    )
    assert [float(r["p"]) for r in view] == [0.0355]


async def test_a_click_redirects_to_its_url_and_counts_once(
    api: httpx.AsyncClient, pool: db.Pool
) -> None:
    """/r/{token} redirects (302) to the URL the token signs and counts one click per
    delivery, however often it is followed."""
    experiment = unique("clicks")
    ids = await experiment_with(pool, experiment, {"a": (3, 0), "b": (3, 0)})
    token = tokens.click_token(INBOX_SECRET, ids["b"][0], "https://example.org/welcome?x=1")
    for _ in range(3):
        response = await api.get(f"/r/{token}")
        assert response.status_code == 302, response.text
        assert response.headers["location"] == "https://example.org/welcome?x=1"
    other = tokens.click_token(INBOX_SECRET, ids["b"][0], "https://example.org/other")
    assert (await api.get(f"/r/{other}")).status_code == 302  # another link, same delivery
    body = (await api.get(f"/api/experiments/{experiment}", headers=ADMIN)).json()
    clicked = {v["name"]: v["clicked"]["count"] for v in body["variants"]}
    assert clicked == {"a": 0, "b": 1}

    pixel = tokens.open_token(INBOX_SECRET, ids["a"][0])
    for _ in range(2):
        opened = await api.get(f"/o/{pixel}")
        assert (opened.status_code, opened.headers["content-type"]) == (200, "image/gif")
    bad_pixel = await api.get("/o/1.AAAA")
    assert bad_pixel.status_code == 200  # always the image, counting nothing
    body = (await api.get(f"/api/experiments/{experiment}", headers=ADMIN)).json()
    assert {v["name"]: v["opened"]["count"] for v in body["variants"]} == {"a": 1, "b": 0}


async def test_no_open_redirect(api: httpx.AsyncClient, pool: db.Pool) -> None:
    """A token redirects only to the URL it signs: a token whose URL was swapped, one
    signed by another secret or for another purpose, a non-http URL, or garbage is a
    404 with no Location, and counts nothing."""
    import base64

    good = tokens.click_token(INBOX_SECRET, 1, "https://example.org/")
    _, mac = good.split(".")
    forged_payload = base64.urlsafe_b64encode(b"1\x00https://evil.example/").decode().rstrip("=")
    evil = [
        f"{forged_payload}.{mac}",
        tokens.click_token("another-secret", 1, "https://evil.example/"),
        tokens.click_token(INBOX_SECRET, 1, "javascript:alert(1)"),
        tokens.open_token(INBOX_SECRET, 1),
        tokens.unsubscribe_token(INBOX_SECRET, "1", "https://evil.example/"),
        "garbage",
        "",
    ]
    for token in evil:
        response = await api.get(f"/r/{token}")
        assert response.status_code == 404, (token, response.status_code)
        assert "location" not in response.headers


def test_tracked_email_links_and_pixel() -> None:
    """With tracking on, each http(s) link of an experiment email's HTML goes through
    /r/ with a token that reads back to that link, and an open pixel ends the body."""
    tracking = Tracking("https://pb.example.org", INBOX_SECRET, opens=True, clicks=True)
    delivery = Delivery(
        id=42,
        attempts=0,
        notification_id=uuid.uuid4(),
        recipient=Recipient(external_id="u1", email="u1@example.org"),
        body="Hi",
        action_url="https://example.org/start?a=1&b=2",
        variant="b",
    )
    content = tracking.apply(delivery, mime.content_of(delivery))
    assert "https://example.org/start" not in content.html
    href = content.html.split('href="', 1)[1].split('"', 1)[0]
    assert href.startswith("https://pb.example.org/r/")
    assert tokens.read_click_token([INBOX_SECRET], href.rsplit("/", 1)[1]) == (
        42,
        "https://example.org/start?a=1&b=2",
    )
    assert '<img src="https://pb.example.org/o/42.' in content.html
    assert content.html_qp != mime.content_of(delivery).html_qp


BAD: list[tuple[str, dict[str, Any], str]] = [
    ("variants without experiment", {"variants": VARIANTS}, "experiment"),
    ("experiment without variants", {"experiment": "e"}, "variants"),
    ("one variant", {"experiment": "e", "variants": VARIANTS[:1]}, "variants"),
    (
        "duplicate name",
        {"experiment": "e", "variants": [VARIANTS[0], VARIANTS[0]]},
        "variants[1].name",
    ),
    (
        "template variant",
        {"experiment": "e", "variants": [{"name": "a", "weight": 1, "template": "w"}, VARIANTS[1]]},
        "variants[0].template",
    ),
    (
        "zero weight",
        {"experiment": "e", "variants": [{**VARIANTS[0], "weight": 0}, VARIANTS[1]]},
        "variants[0].weight",
    ),
    (
        "no text",
        {"experiment": "e", "variants": [{"name": "a", "weight": 1}, VARIANTS[1]]},
        "variants[0].body",
    ),
]


@pytest.mark.parametrize(("case", "extra", "field"), BAD, ids=[c[0] for c in BAD])
async def test_bad_experiment_is_422_naming_the_field(
    api: httpx.AsyncClient, case: str, extra: dict[str, Any], field: str
) -> None:
    response = await api.post(
        "/api/notifications", headers=ADMIN, json={"to": ["x"], "message": "m", **extra}
    )
    assert response.status_code == 422, response.text
    assert response.json()["field"] == field, response.json()


async def test_unknown_experiment_is_404(api: httpx.AsyncClient) -> None:
    response = await api.get(f"/api/experiments/{unique('none')}", headers=ADMIN)
    assert response.status_code == 404, response.text


async def test_experiment_email_through_smtp_is_tracked_end_to_end(
    fresh_database_url: str, smtp: Any
) -> None:
    """With POSTBELL_TRACK_CLICKS=1 and POSTBELL_TRACK_OPENS=1, an experiment email
    arrives (real SMTP) with its variant's text, its link through /r/ and an open
    pixel; following the link twice and loading the pixel counts one click and one open
    for that variant."""
    import email.policy
    from email import message_from_bytes

    from postbell.app.api.main import create_app
    from tests.conftest import api_client, make_settings, running_worker, wait_until

    settings = make_settings(
        fresh_database_url,
        **smtp.env(),
        POSTBELL_PUBLIC_URL="https://pb.example.org",
        POSTBELL_TRACK_CLICKS="1",
        POSTBELL_TRACK_OPENS="1",
    )
    experiment = unique("mail")
    address = f"{unique('ab')}@example.org"
    variants = [
        {**VARIANTS[0], "action_url": "https://example.org/a"},
        {**VARIANTS[1], "action_url": "https://example.org/b"},
    ]
    async with api_client(create_app(settings)) as client, running_worker(settings):
        await client.put("/api/recipients/mail-1", headers=ADMIN, json={"email": address})
        nid = await send(
            client,
            to=["mail-1"],
            channels=["EMAIL"],
            experiment=experiment,
            variants=variants,
        )
        await settled(client, nid, {"sent": 1})
        (received,) = await wait_until(lambda: _async(smtp.to(address)))
        message = message_from_bytes(received.message.as_bytes(), policy=email.policy.default)
        html_part = message.get_body(preferencelist=("html",)).get_content()
        chosen = next(v for v in variants if v["title"] == message["Subject"])
        assert chosen["body"] in html_part
        assert chosen["action_url"] not in html_part
        link = html_part.split('href="', 1)[1].split('"', 1)[0]
        pixel = html_part.split('<img src="', 1)[1].split('"', 1)[0]
        assert link.startswith("https://pb.example.org/r/")
        assert pixel.startswith("https://pb.example.org/o/")
        for _ in range(2):
            hop = await client.get(link.removeprefix("https://pb.example.org"))
            assert (hop.status_code, hop.headers["location"]) == (302, chosen["action_url"])
        assert (await client.get(pixel.removeprefix("https://pb.example.org"))).status_code == 200
        body = (await client.get(f"/api/experiments/{experiment}", headers=ADMIN)).json()
    (stats,) = [v for v in body["variants"] if v["name"] == chosen["name"]]
    assert (stats["sent"], stats["clicked"]["count"], stats["opened"]["count"]) == (1, 1, 1)


async def _async(value: Any) -> Any:
    return value


async def test_workflow_send_step_runs_an_experiment(
    api: httpx.AsyncClient, worker: None, pool: db.Pool
) -> None:
    """A workflow send step may carry "experiment" + "variants": its notification does,
    and each recipient's delivery gets the hash's variant; a bad step is a 422 naming
    steps[i].variants[j].<field>."""
    import json

    from tests.conftest import wait_until

    key, experiment = unique("wfexp"), unique("wfx")
    step = {"type": "send", "channels": ["IN_APP"], "experiment": experiment, "variants": VARIANTS}
    put = await api.put(f"/api/workflows/{key}", json={"steps": [step]}, headers=ADMIN)
    assert put.status_code == 200, put.text
    who = [unique("wr") for _ in range(6)]
    trigger = await api.post(f"/api/workflows/{key}/trigger", json={"to": who}, headers=ADMIN)
    assert trigger.status_code == 202, trigger.text

    async def delivered() -> list[dict[str, Any]] | None:
        rows = await query(
            pool,
            "SELECT r.external_id, d.variant FROM notifications AS n"
            " JOIN deliveries AS d ON d.notification_id = n.id"
            " JOIN recipients AS r ON r.id = d.recipient_id WHERE n.experiment = %(e)s",
            {"e": experiment},
        )
        return rows if len(rows) == len(who) else None

    got = await wait_until(delivered, timeout=30)
    expected = await query(
        pool,
        "SELECT w AS external_id, experiment_variant(%(e)s, w, %(v)s::jsonb) AS variant"
        " FROM unnest(%(to)s::text[]) AS w",
        {"e": experiment, "v": json.dumps(VARIANTS), "to": who},
    )
    assert sorted(got, key=str) == sorted(expected, key=str)

    bad = {**step, "variants": [VARIANTS[0], VARIANTS[0]]}
    response = await api.put(f"/api/workflows/{key}", json={"steps": [bad]}, headers=ADMIN)
    assert (response.status_code, response.json()["field"]) == (422, "steps[0].variants[1].name")
