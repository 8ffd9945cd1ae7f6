"""Template variants of A/B experiments, and experiments through postbell.notify().

A variant naming a template gets the active version pinned when the notification
(or the workflow trigger) is accepted; its recipients get that version rendered per
channel and locale, exactly as a templated notification's. postbell.notify() takes
"experiment" and "variants" with the HTTP API's rules and stores them the same way.
A real worker runs in the test's event loop; email goes through the real SMTP peer.
"""

from __future__ import annotations

import copy
import datetime as dt
import json
from typing import Any

import httpx
import psycopg
import pytest

from postbell.app.core import db
from tests.conftest import ADMIN, query, unique, wait_until
from tests.integration.test_templated_sending import (
    EXAMPLE,
    TEMPLATE,
    inbox,
    put_template,
    recipient,
    send,
    settled,
)
from tests.peers.smtp import SmtpPeer

TEXT = {"name": "b", "weight": 50, "title": "Hello there", "body": "Come and say hi."}

#: what each (variant, language) shows: the inbox item's title, the email's subject
EXPECTED = {
    ("a", "de"): (
        "Neue Veranstaltung in Chess club",
        "Board games night — Einladung für Chess club",
    ),
    ("a", "en"): ("New event in Chess club", "Board games night — Chess club"),
    ("b", "de"): ("Hello there", "Hello there"),
    ("b", "en"): ("Hello there", "Hello there"),
}


async def assigned(pool: db.Pool, experiment: str, variants: Any, who: list[str]) -> dict[str, str]:
    """Each recipient's variant by the documented hash."""
    rows = await query(
        pool,
        "SELECT w, experiment_variant(%(e)s, w, %(v)s::jsonb) AS v FROM unnest(%(to)s::text[]) AS w",
        {"e": experiment, "v": json.dumps(variants), "to": who},
    )
    return {r["w"]: r["v"] for r in rows}


async def delivered_variants(pool: db.Pool, nid: str) -> dict[str, str]:
    rows = await query(
        pool,
        "SELECT r.external_id, d.variant FROM deliveries AS d"
        " JOIN recipients AS r ON r.id = d.recipient_id WHERE d.notification_id = %(id)s",
        {"id": nid},
    )
    return {r["external_id"]: r["variant"] for r in rows}


async def test_template_variant_and_text_variant(
    api: httpx.AsyncClient, worker: None, pool: db.Pool, smtp: SmtpPeer
) -> None:
    """Variant a names a template, b has its own text: the split is the hash's; a's
    recipients get the template rendered in their language in the inbox and by email
    (German for de-AT, English otherwise), b's get b's text; the stored variant holds
    the pinned version."""
    key = await put_template(api)
    experiment = unique("tplexp")
    variants = [{"name": "a", "weight": 50, "template": key}, TEXT]
    people: dict[str, tuple[str, str]] = {}  # external id -> (language, address)
    for i in range(16):
        address = f"{unique('v')}@example.org"
        if i % 2:
            rid = await recipient(api, email=address, name="Jörg", locale="de-AT")
            people[rid] = ("de", address)
        else:
            rid = await recipient(api, email=address, name="Ann")
            people[rid] = ("en", address)
    nid = await send(
        api,
        to=list(people),
        channels=["IN_APP", "EMAIL"],
        experiment=experiment,
        variants=variants,
        data=EXAMPLE,
    )
    await settled(api, nid, {"sent": 32})
    split = await delivered_variants(pool, nid)
    assert split == await assigned(pool, experiment, variants, list(people))
    assert set(split.values()) == {"a", "b"}, split  # 16 people: both arms (p = 2^-15)

    (stored,) = await query(pool, "SELECT variants FROM notifications WHERE id = %s", [nid])
    assert stored["variants"][0] == {
        "name": "a",
        "weight": 50,
        "template": key,
        "template_version": 1,
    }
    shown = (await api.get(f"/api/notifications/{nid}", headers=ADMIN)).json()
    assert (shown["experiment"], shown["variants"]) == (experiment, stored["variants"])
    assert shown["data"] == EXAMPLE
    for rid, (language, address) in people.items():
        title, subject = EXPECTED[(split[rid], language)]
        (item,) = await inbox(api, rid)
        assert item["title"] == title, (rid, split[rid], language)
        if split[rid] == "a":
            assert (item["body"], item["action_url"]) == (
                "Board games night",
                "https://example.org/e/1",
            )
        (mail,) = smtp.to(address)  # sent: settled above
        assert mail.message["Subject"] == subject


async def test_notification_template_with_variants(
    api: httpx.AsyncClient, worker: None, pool: db.Pool
) -> None:
    """With a notification template, a variant without text or template shows the
    notification's template; another variant may name its own template."""
    base = await put_template(api)
    other_body = copy.deepcopy(TEMPLATE)
    other_body["locales"]["en"]["IN_APP"]["title"] = "Other: {{ community }}"
    other = await put_template(api, other_body)
    experiment = unique("inherit")
    variants = [{"name": "control", "weight": 1}, {"name": "other", "weight": 1, "template": other}]
    who = [await recipient(api) for _ in range(10)]
    nid = await send(
        api,
        to=who,
        channels=["IN_APP"],
        template=base,
        data=EXAMPLE,
        experiment=experiment,
        variants=variants,
    )
    await settled(api, nid, {"sent": 10})
    split = await delivered_variants(pool, nid)
    assert split == await assigned(pool, experiment, variants, who)
    for rid in who:
        (item,) = await inbox(api, rid)
        expected = "Other: Chess club" if split[rid] == "other" else "New event in Chess club"
        assert item["title"] == expected


async def test_bad_template_variants_are_422_and_nothing_written(
    api: httpx.AsyncClient, pool: db.Pool
) -> None:
    """An unknown variant template, one without a part for a channel, a variant with
    both a template and text, data lacking a key the variant's template requires: 422
    naming the field; no notification of the experiment is written."""
    key = await put_template(api)
    email_only = await put_template(
        api,
        {
            "default_locale": "en",
            "locales": {"en": {"EMAIL": {"subject": "s", "html": "<p>t</p>"}}},
        },
    )
    experiment = unique("bad")
    cases: list[tuple[dict[str, Any], str]] = [
        (
            {
                "variants": [{"name": "a", "weight": 1, "template": "no-such-tpl"}, TEXT],
                "data": EXAMPLE,
            },
            "variants[0].template",
        ),
        (
            {
                "variants": [TEXT, {"name": "a", "weight": 1, "template": email_only}],
                "channels": ["SMS"],
            },
            "variants[1].template",
        ),
        (
            {
                "variants": [{"name": "a", "weight": 1, "template": key, "title": "t"}, TEXT],
                "data": EXAMPLE,
            },
            "variants[0].template",
        ),
        (
            {
                "variants": [{"name": "a", "weight": 1, "template": key}, TEXT],
                "data": {"event": EXAMPLE["event"]},
            },
            "data.community",
        ),
        ({"variants": [{"name": "a", "weight": 1}, TEXT]}, "variants[0].body"),
    ]
    for extra, field in cases:
        response = await api.post(
            "/api/notifications",
            headers=ADMIN,
            json={"to": ["x"], "experiment": experiment, **extra},
        )
        assert response.status_code == 422, response.text
        assert response.json()["field"] == field, (extra, response.json())
    rows = await query(
        pool, "SELECT count(*) AS n FROM notifications WHERE experiment = %s", [experiment]
    )
    assert rows == [{"n": 0}]


async def test_notify_in_sql_runs_an_experiment_like_the_api(
    api: httpx.AsyncClient, worker: None, pool: db.Pool
) -> None:
    """postbell.notify() with "experiment" and "variants" (one a template) splits
    exactly as the API does for the same experiment, stores the variants the same way
    (the template version pinned) and GET /api/experiments/{key} counts both."""
    key = await put_template(api)
    experiment = unique("sqlexp")
    variants = [{"name": "a", "weight": 50, "template": key}, TEXT]
    who = [await recipient(api, locale="de") for _ in range(12)]
    rows = await query(
        pool,
        "SELECT postbell.notify(%s, %s::jsonb, ARRAY['IN_APP']) AS id",
        [who, json.dumps({"experiment": experiment, "variants": variants, "data": EXAMPLE})],
    )
    from_sql = str(rows[0]["id"])
    await settled(api, from_sql, {"sent": 12})
    from_api = await send(
        api, to=who, channels=["IN_APP"], experiment=experiment, variants=variants, data=EXAMPLE
    )
    await settled(api, from_api, {"sent": 12})

    split = await delivered_variants(pool, from_sql)
    assert split == await delivered_variants(pool, from_api)
    assert split == await assigned(pool, experiment, variants, who)
    stored = await query(
        pool,
        "SELECT variants, template_data FROM notifications WHERE id = ANY(%s::uuid[]) ORDER BY id",
        [[from_sql, from_api]],
    )
    assert stored[0] == stored[1]
    assert stored[0]["variants"][0]["template_version"] == 1
    for rid in who:
        titles = [i["title"] for i in await inbox(api, rid)]
        assert titles == [EXPECTED[(split[rid], "de")][0]] * 2

    stats = (await api.get(f"/api/experiments/{experiment}", headers=ADMIN)).json()
    sent = {v["name"]: v["sent"] for v in stats["variants"]}
    expected = {name: 2 * list(split.values()).count(name) for name in set(split.values())}
    assert sent == expected


NOTIFY_BAD: list[tuple[str, dict[str, Any], str]] = [
    (
        "variants without experiment",
        {"message": "m", "variants": [TEXT, TEXT]},
        "postbell.notify: experiment: 'variants' go with an 'experiment' key",
    ),
    (
        "experiment without variants",
        {"message": "m"},
        "postbell.notify: variants: an experiment needs 'variants' (two to ten)",
    ),
    (
        "one variant",
        {"message": "m", "variants": [TEXT]},
        "an experiment needs 'variants' (two to ten)",
    ),
    (
        "duplicate name",
        {"message": "m", "variants": [TEXT, TEXT]},
        "postbell.notify: variants[1].name: variant name 'b' is used twice",
    ),
    (
        "zero weight",
        {"message": "m", "variants": [TEXT, {**TEXT, "name": "c", "weight": 0}]},
        "postbell.notify: variants[1].weight:",
    ),
    (
        "no text",
        {"message": "m", "variants": [TEXT, {"name": "c", "weight": 1}]},
        "postbell.notify: variants[1].body: a variant needs its own 'title' or 'body'",
    ),
    (
        "unknown template",
        {"variants": [TEXT, {"name": "c", "weight": 1, "template": "no-tpl"}]},
        "postbell.notify: variants[1].template: unknown template no-tpl",
    ),
    (
        "unknown field",
        {"message": "m", "variants": [TEXT, {**TEXT, "name": "c", "colour": 1}]},
        "postbell.notify: variants[1].colour: unknown field",
    ),
    (
        "bad url",
        {"message": "m", "variants": [TEXT, {**TEXT, "name": "c", "action_url": "x:y"}]},
        "postbell.notify: variants[1].action_url:",
    ),
]


@pytest.mark.parametrize(("case", "body", "message"), NOTIFY_BAD, ids=[c[0] for c in NOTIFY_BAD])
async def test_notify_in_sql_refuses_bad_variants(
    pool: db.Pool, case: str, body: dict[str, Any], message: str
) -> None:
    experiment = unique("sqlbad")
    if case != "variants without experiment":
        body = {**body, "experiment": experiment}
    with pytest.raises(psycopg.errors.InvalidParameterValue) as caught:
        await query(pool, "SELECT postbell.notify(ARRAY['sql-bad'], %s::jsonb)", [json.dumps(body)])
    assert message in str(caught.value), str(caught.value)
    rows = await query(
        pool,
        "SELECT count(*) AS n FROM notifications WHERE experiment = %s"
        " OR (recipients = ARRAY['sql-bad'] AND body = 'm')",
        [experiment],
    )
    assert rows == [{"n": 0}]


async def test_workflow_send_step_with_a_template_variant(
    api: httpx.AsyncClient, worker: None, pool: db.Pool
) -> None:
    """A send step's variant may name a template: the trigger pins it with the step
    templates, its recipients get it rendered with the run's data; deleting the
    template is refused (409) while the workflow names it; an unknown one is a 422
    naming steps[0].variants[0].template."""
    key = await put_template(api)
    workflow, experiment = unique("wftv"), unique("wfexp")
    variants = [{"name": "a", "weight": 1, "template": key}, {**TEXT, "weight": 1}]
    step = {"type": "send", "channels": ["IN_APP"], "experiment": experiment, "variants": variants}
    put = await api.put(f"/api/workflows/{workflow}", json={"steps": [step]}, headers=ADMIN)
    assert put.status_code == 200, put.text
    who = [await recipient(api) for _ in range(8)]
    trigger = await api.post(
        f"/api/workflows/{workflow}/trigger", json={"to": who, "data": EXAMPLE}, headers=ADMIN
    )
    assert trigger.status_code == 202, trigger.text

    async def items() -> dict[str, dict[str, Any]] | None:
        found = {rid: await inbox(api, rid) for rid in who}
        return {r: i[0] for r, i in found.items()} if all(found.values()) else None

    shown = await wait_until(items, timeout=30)
    (pins,) = await query(
        pool, "SELECT templates FROM workflow_triggers WHERE workflow_key = %s", [workflow]
    )
    assert pins["templates"] == {key: 1}
    split = await assigned(pool, experiment, variants, who)
    for rid in who:
        assert shown[rid]["title"] == EXPECTED[(split[rid], "en")][0]

    deleted = await api.delete(f"/api/templates/{key}", headers=ADMIN)
    assert deleted.status_code == 409, deleted.text
    bad = {**step, "variants": [{"name": "a", "weight": 1, "template": "no-tpl"}, TEXT]}
    response = await api.put(f"/api/workflows/{workflow}", json={"steps": [bad]}, headers=ADMIN)
    assert (response.status_code, response.json()["field"]) == (
        422,
        "steps[0].variants[0].template",
    )


async def test_delete_refused_while_a_scheduled_variant_names_it(api: httpx.AsyncClient) -> None:
    """DELETE /api/templates/{key} answers 409 while a scheduled notification's
    variant will render the template, 204 once that notification is cancelled."""
    key = await put_template(api)
    later = (dt.datetime.now(dt.UTC) + dt.timedelta(days=1)).isoformat()
    nid = await send(
        api,
        to=[unique("s")],
        experiment=unique("sched"),
        variants=[{"name": "a", "weight": 1, "template": key}, TEXT],
        data=EXAMPLE,
        send_at=later,
    )
    assert (await api.delete(f"/api/templates/{key}", headers=ADMIN)).status_code == 409
    cancel = await api.post(f"/api/notifications/{nid}/cancel", headers=ADMIN)
    assert cancel.status_code == 200, cancel.text
    assert (await api.delete(f"/api/templates/{key}", headers=ADMIN)).status_code == 204


async def test_each_text_variant_gets_its_own_email(
    api: httpx.AsyncClient, worker: None, pool: db.Pool, smtp: SmtpPeer
) -> None:
    """Two text variants of one notification by email: each recipient's email has
    their variant's subject and body (a deliver run builds the shared MIME parts once
    per variant, not once per notification)."""
    experiment = unique("twotext")
    variants = [
        {"name": "a", "weight": 1, "title": "Subject A", "body": "Body A"},
        {"name": "b", "weight": 1, "title": "Subject B", "body": "Body B"},
    ]
    people = {await recipient(api, email=f"{unique('t')}@example.org"): None for _ in range(12)}
    addresses = {
        rid: (await api.get(f"/api/recipients/{rid}", headers=ADMIN)).json()["email"]
        for rid in people
    }
    nid = await send(
        api, to=list(people), channels=["EMAIL"], experiment=experiment, variants=variants
    )
    await settled(api, nid, {"sent": 12})
    split = await delivered_variants(pool, nid)
    assert set(split.values()) == {"a", "b"}, split
    for rid, address in addresses.items():
        (mail,) = smtp.to(address)
        assert mail.message["Subject"] == f"Subject {split[rid].upper()}", (rid, split[rid])
        text = mail.message.get_body(preferencelist=("plain",)).get_content()
        assert f"Body {split[rid].upper()}" in text


async def test_topic_notification_with_a_template_variant(
    api: httpx.AsyncClient, worker: None, pool: db.Pool
) -> None:
    """A topic notification's template variant is rendered for its members as for a
    recipient list: German for de members, the text variant for the others."""
    key = await put_template(api)
    topic, experiment = unique("tvtopic"), unique("tvexp")
    who = [await recipient(api, locale="de") for _ in range(10)]
    response = await api.put(
        f"/api/topics/{topic}/subscribers", headers=ADMIN, json={"recipients": who}
    )
    assert response.status_code == 200, response.text
    variants = [{"name": "a", "weight": 1, "template": key}, {**TEXT, "weight": 1}]
    nid = await send(
        api,
        topic=topic,
        channels=["IN_APP"],
        experiment=experiment,
        variants=variants,
        data=EXAMPLE,
    )
    await settled(api, nid, {"sent": 10})
    split = await delivered_variants(pool, nid)
    assert split == await assigned(pool, experiment, variants, who)
    for rid in who:
        (item,) = await inbox(api, rid)
        assert item["title"] == EXPECTED[(split[rid], "de")][0]
