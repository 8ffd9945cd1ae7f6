"""Sending with a template, end to end: API -> router -> IN_APP inbox + SMTP + SMS.

A real worker runs in the test's event loop; email goes through the real SMTP peer,
SMS through the Twilio peer.
"""

from __future__ import annotations

import copy
import datetime as dt
from typing import Any

import httpx

from postbell.app.core import db
from tests.conftest import ADMIN, query, unique, wait_until
from tests.peers.fake_twilio import TwilioPeer
from tests.peers.smtp import SmtpPeer

EXAMPLE = {
    "event": {
        "title": "Board games night",
        "starts_at": "2027-01-15T19:00:00Z",
        "url": "https://example.org/e/1",
    },
    "community": "Chess club",
}
TEMPLATE: dict[str, Any] = {
    "default_locale": "en",
    "example_data": EXAMPLE,
    "locales": {
        "en": {
            "IN_APP": {
                "title": "New event in {{ community }}",
                "body": "{{ event.title }}",
                "action_url": "{{ event.url }}",
            },
            "EMAIL": {
                "subject": "{{ event.title }} — {{ community }}",
                "html": "<p>Hi {{ recipient.name }},</p><p>{{ event.title }} starts "
                "{{ event.starts_at | datetime('medium') }}.</p>"
                '<p><a href="{{ event.url }}">See the event</a></p>',
            },
            "SMS": {"body": "{{ community }}: {{ event.title }}"},
        },
        "de": {
            "IN_APP": {
                "title": "Neue Veranstaltung in {{ community }}",
                "body": "{{ event.title }}",
                "action_url": "{{ event.url }}",
            },
            "EMAIL": {
                "subject": "{{ event.title }} — Einladung für {{ community }}",
                "html": "<p>Hallo {{ recipient.name }},</p><p>{{ event.title }} beginnt am "
                "{{ event.starts_at | datetime('medium') }}.</p>",
                "text": "Hallo {{ recipient.name }}, {{ event.title }} beginnt am "
                "{{ event.starts_at | datetime('medium') }}.",
            },
        },
    },
}


async def put_template(api: httpx.AsyncClient, body: dict[str, Any] = TEMPLATE) -> str:
    key = unique("tpl")
    response = await api.put(f"/api/templates/{key}", headers=ADMIN, json=body)
    assert response.status_code == 200, response.text
    return key


async def recipient(api: httpx.AsyncClient, **fields: Any) -> str:
    rid = unique("m")
    response = await api.put(f"/api/recipients/{rid}", headers=ADMIN, json=fields)
    assert response.status_code in (200, 201), response.text
    return rid


async def send(api: httpx.AsyncClient, **body: Any) -> str:
    response = await api.post("/api/notifications", headers=ADMIN, json=body)
    assert response.status_code == 202, response.text
    return str(response.json()["id"])


async def settled(api: httpx.AsyncClient, nid: str, expected: dict[str, int]) -> dict[str, Any]:
    async def check() -> dict[str, Any] | None:
        body = (await api.get(f"/api/notifications/{nid}", headers=ADMIN)).json()
        return body if body["delivery_counts"] == expected else None

    result: dict[str, Any] = await wait_until(check)
    return result


async def inbox(api: httpx.AsyncClient, rid: str) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = (await api.get(f"/api/inbox/{rid}", headers=ADMIN)).json()[
        "items"
    ]
    return items


async def test_german_and_english_at_the_smtp_server(
    api: httpx.AsyncClient, worker: None, smtp: SmtpPeer
) -> None:
    """de-AT gets German (fallback de), no locale gets English; each channel its own
    part; UTF-8 subjects encoded; the inbox shows each recipient's language."""
    key = await put_template(api)
    de_address, en_address = f"{unique('de')}@example.org", f"{unique('en')}@example.org"
    jorg = await recipient(
        api, email=de_address, name="Jörg Müller", locale="de-AT", timezone="Europe/Vienna"
    )
    ann = await recipient(api, email=en_address, name="Ann Lee")
    nid = await send(api, to=[jorg, ann], template=key, data=EXAMPLE, channels=["IN_APP", "EMAIL"])
    notification = await settled(api, nid, {"sent": 4})
    assert (notification["template"], notification["template_version"]) == (key, 1)
    assert notification["data"] == EXAMPLE

    (german,) = smtp.to(de_address)
    raw_subject = str(dict(german.message.raw_items())["Subject"])
    assert raw_subject.lower().startswith("=?utf-8?") and raw_subject.isascii()
    assert german.message["Subject"] == "Board games night — Einladung für Chess club"
    text = german.message.get_body(preferencelist=("plain",)).get_content()
    html = german.message.get_body(preferencelist=("html",)).get_content()
    assert text.strip() == "Hallo Jörg Müller, Board games night beginnt am 15.01.2027, 20:00:00."
    assert "<p>Hallo Jörg Müller,</p>" in html
    assert german.message.get_body(preferencelist=("plain",))["Content-Type"].endswith(
        'charset="utf-8"'
    )

    (english,) = smtp.to(en_address)
    assert english.message["Subject"] == "Board games night — Chess club"
    text = english.message.get_body(preferencelist=("plain",)).get_content()
    assert "Hi Ann Lee," in text and "Jan 15, 2027, 7:00:00\u202fPM" in text
    assert "See the event (https://example.org/e/1)" in text  # derived from the HTML

    assert [(i["title"], i["body"], i["action_url"]) for i in await inbox(api, jorg)] == [
        ("Neue Veranstaltung in Chess club", "Board games night", "https://example.org/e/1")
    ]
    assert [(i["title"], i["body"]) for i in await inbox(api, ann)] == [
        ("New event in Chess club", "Board games night")
    ]


async def test_autoescape_in_html_only(
    api: httpx.AsyncClient, worker: None, smtp: SmtpPeer, twilio: TwilioPeer
) -> None:
    """A <script> in data arrives escaped in the HTML part and unchanged in the text
    part, the SMS and the inbox item."""
    key = await put_template(api)
    address, phone = f"{unique('x')}@example.org", "+15005550123"
    rid = await recipient(api, email=address, phone=phone, name="Ann")
    data = copy.deepcopy(EXAMPLE)
    data["event"]["title"] = "<script>alert(1)</script>"
    nid = await send(api, to=[rid], template=key, data=data, channels=["IN_APP", "EMAIL", "SMS"])
    await settled(api, nid, {"sent": 3})
    (mail,) = smtp.to(address)
    html = mail.message.get_body(preferencelist=("html",)).get_content()
    text = mail.message.get_body(preferencelist=("plain",)).get_content()
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html and "<script>" not in html
    assert "<script>alert(1)</script>" in text
    assert mail.message["Subject"].startswith("<script>alert(1)</script>")
    sms = [m for m in twilio.to(phone) if "alert" in m["Body"]]
    assert [m["Body"] for m in sms] == ["Chess club: <script>alert(1)</script>"]
    assert [i["body"] for i in await inbox(api, rid)] == ["<script>alert(1)</script>"]


async def test_missing_data_is_refused_and_nothing_written(
    api: httpx.AsyncClient, pool: db.Pool
) -> None:
    """422 naming the first missing required key; data that does not fit the
    template (an undefined attribute) is refused too; no notification is written."""
    key = await put_template(api)
    rid = unique("r")
    response = await api.post(
        "/api/notifications",
        headers=ADMIN,
        json={"to": [rid], "template": key, "data": {"event": EXAMPLE["event"]}},
    )
    assert response.status_code == 422
    assert response.json()["field"] == "data.community"
    assert "'community'" in response.json()["detail"]
    response = await api.post(
        "/api/notifications",
        headers=ADMIN,
        json={"to": [rid], "template": key, "data": {"community": "c", "event": {}}},
    )
    assert (response.status_code, response.json()["field"]) == (422, "data")
    assert "undefined" in response.json()["detail"] or "attribute" in response.json()["detail"]
    for body, field in [
        ({"to": [rid], "template": "no-such-template", "data": {}}, "template"),
        ({"to": [rid], "template": key, "data": EXAMPLE, "message": "x"}, "message"),
        ({"to": [rid], "data": EXAMPLE, "message": "x"}, "data"),
    ]:
        response = await api.post("/api/notifications", headers=ADMIN, json=body)
        assert (response.status_code, response.json()["field"]) == (422, field), response.text
    rows = await query(
        pool, "SELECT count(*) AS n FROM postbell.notifications WHERE template_key = %s", [key]
    )
    assert rows[0]["n"] == 0


async def test_version_pinned_across_an_edit(
    api: httpx.AsyncClient, worker: None, smtp: SmtpPeer
) -> None:
    """A notification renders with the version active when it was accepted, though the
    template is edited before it is sent."""
    key = await put_template(api)
    address = f"{unique('pin')}@example.org"
    rid = await recipient(api, email=address, name="Ann")
    send_at = (dt.datetime.now(dt.UTC) + dt.timedelta(seconds=2)).isoformat()
    nid = await send(
        api, to=[rid], template=key, data=EXAMPLE, channels=["IN_APP", "EMAIL"], send_at=send_at
    )
    edited = copy.deepcopy(TEMPLATE)
    edited["locales"]["en"]["EMAIL"]["subject"] = "EDITED {{ event.title }}"
    edited["locales"]["en"]["IN_APP"]["title"] = "EDITED"
    response = await api.put(f"/api/templates/{key}", headers=ADMIN, json=edited)
    assert response.json()["version"] == 2
    notification = await settled(api, nid, {"sent": 2})
    assert notification["template_version"] == 1
    (mail,) = smtp.to(address)
    assert mail.message["Subject"] == "Board games night — Chess club"
    assert [i["title"] for i in await inbox(api, rid)] == ["New event in Chess club"]
    # a notification accepted now renders the edit
    nid = await send(api, to=[rid], template=key, data=EXAMPLE, channels=["IN_APP"])
    await settled(api, nid, {"sent": 1})
    assert (await inbox(api, rid))[0]["title"] == "EDITED"


async def test_undefined_at_send_fails_only_that_delivery(
    api: httpx.AsyncClient, worker: None, smtp: SmtpPeer
) -> None:
    """A part that reads a recipient's metadata renders for the recipient who has it
    and ends dead (template_error, naming the field) for the one who has not."""
    body = copy.deepcopy(TEMPLATE)
    body["example_recipient"] = {"metadata": {"plan": "gold"}}
    body["locales"]["en"]["IN_APP"]["body"] = "{{ event.title }} for {{ recipient.metadata.plan }}"
    body["locales"]["en"]["EMAIL"]["subject"] = "{{ recipient.metadata.plan }}: {{ event.title }}"
    body["locales"]["de"].pop("EMAIL")
    body["locales"]["de"]["IN_APP"]["body"] = "{{ recipient.metadata.plan }}"
    key = await put_template(api, body)
    with_plan = f"{unique('p')}@example.org"
    without = f"{unique('n')}@example.org"
    gold = await recipient(api, email=with_plan, name="G", metadata={"plan": "gold"})
    bare = await recipient(api, email=without, name="B")
    nid = await send(api, to=[gold, bare], template=key, data=EXAMPLE, channels=["IN_APP", "EMAIL"])
    notification = await settled(api, nid, {"sent": 2, "dead": 2})
    dead = [d for d in notification["deliveries"] if d["status"] == "dead"]
    assert {(d["recipient"], d["reason"]) for d in dead} == {
        (bare, "template_error"),
    }
    assert {d["channel"] for d in dead} == {"IN_APP", "EMAIL"}
    for d in dead:
        assert "undefined" in d["last_error"] or "no attribute 'plan'" in d["last_error"]
        assert f"template {key} v1" in d["last_error"]
    (mail,) = smtp.to(with_plan)
    assert mail.message["Subject"] == "gold: Board games night"
    assert smtp.to(without) == []
    assert [i["body"] for i in await inbox(api, gold)] == ["Board games night for gold"]
    assert await inbox(api, bare) == []


async def test_notify_in_sql_with_a_template(
    api: httpx.AsyncClient, worker: None, pool: db.Pool
) -> None:
    """postbell.notify()'s body takes {"template", "data"}; a missing key is refused."""
    import json

    import psycopg

    key = await put_template(api)
    rid = await recipient(api, locale="de")
    rows = await query(
        pool,
        "SELECT postbell.notify(ARRAY[%s], %s::jsonb, ARRAY['IN_APP']) AS id",
        [rid, json.dumps({"template": key, "data": EXAMPLE})],
    )
    nid = str(rows[0]["id"])
    notification = await settled(api, nid, {"sent": 1})
    assert (notification["template"], notification["template_version"]) == (key, 1)
    assert [i["title"] for i in await inbox(api, rid)] == ["Neue Veranstaltung in Chess club"]
    for body, message in [
        ({"template": key, "data": {"event": {}}}, 'data lacks "community"'),
        ({"template": "nope-x", "data": {}}, "unknown template"),
        ({"template": key, "data": EXAMPLE, "message": "m"}, "not both"),
    ]:
        try:
            await query(
                pool,
                "SELECT postbell.notify(ARRAY[%s], %s::jsonb)",
                [rid, json.dumps(body)],
            )
        except psycopg.errors.InvalidParameterValue as exc:
            assert message in str(exc)
        else:
            raise AssertionError(f"notify accepted {body}")


async def test_delete_refused_while_scheduled(api: httpx.AsyncClient) -> None:
    """DELETE answers 409 while a scheduled notification uses the template, 204 once
    it is cancelled."""
    key = await put_template(api)
    send_at = (dt.datetime.now(dt.UTC) + dt.timedelta(days=1)).isoformat()
    nid = await send(
        api, to=[unique("r")], template=key, data=EXAMPLE, channels=["IN_APP"], send_at=send_at
    )
    response = await api.delete(f"/api/templates/{key}", headers=ADMIN)
    assert response.status_code == 409
    assert nid in response.json()["detail"]
    assert (await api.post(f"/api/notifications/{nid}/cancel", headers=ADMIN)).status_code == 200
    assert (await api.delete(f"/api/templates/{key}", headers=ADMIN)).status_code == 204


async def test_a_notification_without_a_category_takes_its_templates(
    api: httpx.AsyncClient,
) -> None:
    """A template's category stands for notifications that use it and name none; one
    that names its own keeps it. The notification's fallback is stored as given."""
    categories = [unique("cat-t"), unique("cat-n")]
    for category in categories:
        answer = await api.put(
            f"/api/categories/{category}", headers=ADMIN, json={"name": category}
        )
        assert answer.status_code in (200, 201), answer.text
    key = await put_template(api, {**TEMPLATE, "category": categories[0]})
    rid = await recipient(api)
    fallback = {"PUSH": "EMAIL"}
    inherited = await send(api, to=[rid], template=key, data=EXAMPLE, fallback=fallback)
    own = await send(api, to=[rid], template=key, data=EXAMPLE, category=categories[1])
    got = {
        nid: (await api.get(f"/api/notifications/{nid}", headers=ADMIN)).json()
        for nid in (inherited, own)
    }
    assert got[inherited]["category"] == categories[0]
    assert got[inherited]["fallback"] == fallback
    assert got[own]["category"] == categories[1]


async def test_an_inbox_page_renders_only_its_templated_items(
    api: httpx.AsyncClient, worker: None, database_url: str
) -> None:
    """A page of plain and templated items shows each right, and works out rendered
    text for the templated ones only: inbox_content() is called once per templated
    item, never for a plain one (it was called for every item of a page, ~1 ms of a
    51-item page; migration 0034)."""
    key = await put_template(api)
    rid = await recipient(api, name="Jörg", locale="de-AT")
    plain = [await send(api, to=[rid], message=f"plain {i}", channels=["IN_APP"]) for i in range(3)]
    templated = await send(api, to=[rid], template=key, data=EXAMPLE, channels=["IN_APP"])
    for nid in (*plain, templated):
        await settled(api, nid, {"sent": 1})
    # (one routing batch may write them in any order)
    assert sorted(i["body"] for i in await inbox(api, rid)) == [
        "Board games night",
        "plain 0",
        "plain 1",
        "plain 2",
    ]
    async with await db.connect(database_url) as conn, conn.transaction():
        await conn.execute("SET LOCAL track_functions = 'all'")
        cursor = await conn.execute(
            "SELECT p.title FROM recipients AS r,"
            " inbox_page(r.id, 9223372036854775807, false, NULL, NULL, 51) AS p"
            " WHERE r.external_id = %s",
            (rid,),
        )
        titles = [r["title"] for r in await cursor.fetchall()]
        cursor = await conn.execute(
            "SELECT pg_stat_get_xact_function_calls('postbell.inbox_content'::regproc) AS calls"
        )
        calls = (await cursor.fetchone())["calls"]
    assert sorted(titles, key=str) == ["Neue Veranstaltung in Chess club", None, None, None]
    assert calls == 1
