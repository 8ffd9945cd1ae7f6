"""The templates API: save (validated, versioned), read, list, roll back, delete, preview."""

from __future__ import annotations

import copy
from typing import Any

import httpx

from postbell.app.core import db, keys
from tests.conftest import ADMIN, unique

EXAMPLE = {
    "event": {
        "title": "Board games night",
        "starts_at": "2027-01-15T19:00:00Z",
        "url": "https://example.org/e/1",
    },
    "community": "Chess club",
}
BODY: dict[str, Any] = {
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
                "html": "<p>Hi {{ recipient.name }}, {{ event.title }} starts "
                "{{ event.starts_at | datetime('medium') }}.</p>",
            },
        },
        "de": {
            "IN_APP": {"title": "Neu in {{ community }}", "body": "{{ event.title }}"},
            "EMAIL": {
                "subject": "{{ event.title }} — {{ community }}",
                "html": "<p>Hallo {{ recipient.name }}, {{ event.title }} beginnt "
                "{{ event.starts_at | datetime('medium') }}.</p>",
            },
        },
    },
}


async def put(api: httpx.AsyncClient, key: str, body: dict[str, Any]) -> httpx.Response:
    return await api.put(f"/api/templates/{key}", headers=ADMIN, json=body)


async def test_save_read_list_versions_activate(api: httpx.AsyncClient) -> None:
    """Each changed PUT makes a new active version; the same content makes none;
    activate rolls back; the list and the versions show it."""
    key = unique("t")
    first = await put(api, key, BODY)
    assert first.status_code == 200, first.text
    saved = first.json()
    assert (saved["key"], saved["version"], saved["active_version"]) == (key, 1, 1)
    assert saved["required_data"] == ["community", "event"]
    assert sorted(saved["locales"]) == ["de", "en"]

    again = await put(api, key, BODY)
    assert again.json()["version"] == 1  # nothing changed: no new version

    changed = copy.deepcopy(BODY)
    changed["locales"]["en"]["IN_APP"]["title"] = "Fresh in {{ community }}"
    second = (await put(api, key, changed)).json()
    assert (second["version"], second["active_version"], second["latest_version"]) == (2, 2, 2)

    current = (await api.get(f"/api/templates/{key}", headers=ADMIN)).json()
    assert current["locales"]["en"]["IN_APP"]["title"] == "Fresh in {{ community }}"
    versions = (await api.get(f"/api/templates/{key}/versions", headers=ADMIN)).json()
    assert [(v["version"], v["active"]) for v in versions["items"]] == [(2, True), (1, False)]

    rolled = await api.post(f"/api/templates/{key}/versions/1/activate", headers=ADMIN)
    assert rolled.status_code == 200, rolled.text
    assert (rolled.json()["version"], rolled.json()["latest_version"]) == (1, 2)
    current = (await api.get(f"/api/templates/{key}", headers=ADMIN)).json()
    assert current["locales"]["en"]["IN_APP"]["title"] == "New event in {{ community }}"
    one = (await api.get(f"/api/templates/{key}/versions/2", headers=ADMIN)).json()
    assert one["version"] == 2 and one["active_version"] == 1

    listed = (await api.get("/api/templates", headers=ADMIN, params={"limit": 500})).json()
    mine = [t for t in listed["items"] if t["key"] == key]
    assert [(t["version"], t["latest_version"], t["locales"]) for t in mine] == [
        (1, 2, ["de", "en"])
    ]
    missing = await api.post(f"/api/templates/{key}/versions/9/activate", headers=ADMIN)
    assert missing.status_code == 404


async def test_validation_names_locale_channel_field_and_line(api: httpx.AsyncClient) -> None:
    """A syntax error or an undefined variable answers 422 naming where; nothing saved."""
    key = unique("t")
    broken = copy.deepcopy(BODY)
    broken["locales"]["de"]["EMAIL"]["html"] = "<p>Hallo\n{{ recipient.name }} {{ venue.name }}</p>"
    response = await put(api, key, broken)
    assert response.status_code == 422
    body = response.json()
    assert body["error"] == "invalid"
    assert body["field"] == "locales.de.EMAIL.html"
    assert "line 2" in body["detail"] and "'venue' is undefined" in body["detail"]

    broken["locales"]["de"]["EMAIL"]["html"] = "{% if %}"
    body = (await put(api, key, broken)).json()
    assert (body["field"], "line 1" in body["detail"]) == ("locales.de.EMAIL.html", True)
    assert (await api.get(f"/api/templates/{key}", headers=ADMIN)).status_code == 404

    for bad, field in [
        ({**BODY, "default_locale": "fr"}, None),
        ({**BODY, "locales": {"en": {"FAX": {"body": "x"}}}}, "locales"),
        ({**BODY, "locales": {"en": {"SMS": {"subject": "x", "body": "y"}}}}, None),
        ({**BODY, "category": "no-such-category"}, "category"),
        ({**BODY, "example_data": {**EXAMPLE, "recipient": "x"}}, None),
        ({**BODY, "colour": "red"}, None),
    ]:
        response = await put(api, key, bad)
        assert response.status_code in (400, 422), (bad, response.text)
        if field:
            assert response.json()["field"] == field, response.text


async def test_sandbox_escape_refused_on_save(api: httpx.AsyncClient) -> None:
    """A template that reaches for Python internals or loops without bound is refused."""
    for source in [
        "{{ ''.__class__.__mro__ }}",
        "{{ cycler.__init__.__globals__ }}",
        "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}",
    ]:
        body = {**BODY, "locales": {"en": {"SMS": {"body": source}}}}
        response = await put(api, unique("t"), body)
        assert response.status_code == 422, response.text
        assert response.json()["field"] == "locales.en.SMS.body"


async def test_preview(api: httpx.AsyncClient) -> None:
    """Preview renders one channel in a locale, for a stored or the sample recipient."""
    key = unique("t")
    assert (await put(api, key, BODY)).status_code == 200
    rid = unique("r")
    await api.put(
        f"/api/recipients/{rid}",
        headers=ADMIN,
        json={"name": "Jörg", "locale": "de-AT", "timezone": "Europe/Vienna"},
    )
    response = await api.post(
        f"/api/templates/{key}/preview",
        headers=ADMIN,
        json={"channel": "EMAIL", "recipient": rid, "data": EXAMPLE},
    )
    assert response.status_code == 200, response.text
    out = response.json()
    assert (out["locale"], out["version"], out["channel"]) == ("de", 1, "EMAIL")
    assert out["fields"]["subject"] == "Board games night — Chess club"
    assert out["fields"]["html"] == (
        "<p>Hallo Jörg, Board games night beginnt 15.01.2027, 20:00:00.</p>"
    )
    assert out["fields"]["text"] == "Hallo Jörg, Board games night beginnt 15.01.2027, 20:00:00."

    english = (
        await api.post(
            f"/api/templates/{key}/preview",
            headers=ADMIN,
            json={"channel": "IN_APP", "locale": "en"},
        )
    ).json()
    assert english["fields"] == {
        "title": "New event in Chess club",
        "body": "Board games night",
        "action_url": "https://example.org/e/1",
    }
    bad = await api.post(
        f"/api/templates/{key}/preview",
        headers=ADMIN,
        json={"channel": "IN_APP", "data": {"community": "x"}},
    )
    assert bad.status_code == 422 and bad.json()["field"] == "locales.en.IN_APP.body"
    unknown = await api.post(
        f"/api/templates/{key}/preview",
        headers=ADMIN,
        json={"channel": "IN_APP", "recipient": "nobody-x"},
    )
    assert unknown.status_code == 404


async def test_delete(api: httpx.AsyncClient) -> None:
    """DELETE answers 204, then the template is gone (404); a new PUT continues numbering."""
    key = unique("t")
    await put(api, key, BODY)
    assert (await api.delete(f"/api/templates/{key}", headers=ADMIN)).status_code == 204
    assert (await api.get(f"/api/templates/{key}", headers=ADMIN)).status_code == 404
    assert (await api.delete(f"/api/templates/{key}", headers=ADMIN)).status_code == 404
    again = (await put(api, key, BODY)).json()
    assert again["version"] == 2


async def test_admin_key_only(api: httpx.AsyncClient, pool: db.Pool) -> None:
    """A send key may not read or change templates."""
    async with pool.connection() as conn:
        _, key = await keys.create_key(conn, "send", "templates-test")
    response = await api.get("/api/templates", headers={"Authorization": f"Bearer {key}"})
    assert response.status_code == 403
