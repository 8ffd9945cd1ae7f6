"""The dashboard's sign-in and session: who gets in, the cookie's flags, CSRF on every
POST, sign-out, the failed-sign-in limit; and every page answers for a signed-in admin."""

from __future__ import annotations

import contextlib
import dataclasses
import re
from collections.abc import AsyncIterator

import httpx
import pytest

from postbell.app.api.main import create_app
from postbell.app.core import db
from postbell.app.core.keys import create_key
from postbell.app.core.settings import Settings
from postbell.app.core.tokens import recipient_token
from tests.conftest import ADMIN, ADMIN_KEY, INBOX_SECRET, api_client, query, unique, wait_until
from tests.integration.test_delivery_flow import send

CSRF = re.compile(r'name="csrf" value="([^"]*)"')


@contextlib.asynccontextmanager
async def browser(settings: Settings, pool: db.Pool) -> AsyncIterator[httpx.AsyncClient]:
    """A client of its own (its own cookie jar), like one browser."""
    async with api_client(create_app(settings, pool=pool)) as client:
        client.follow_redirects = False
        yield client


async def sign_in(client: httpx.AsyncClient, key: str, **headers: str) -> httpx.Response:
    page = await client.get("/dashboard/sign-in", headers=headers)
    assert page.status_code == 200
    match = CSRF.search(page.text)
    assert match
    return await client.post(
        "/dashboard/sign-in", data={"key": key, "csrf": match.group(1)}, headers=headers
    )


def csrf_of(page: httpx.Response) -> str:
    match = CSRF.search(page.text)
    assert match, page.text
    return match.group(1)


async def test_an_admin_key_signs_in_with_a_strict_httponly_cookie(
    settings: Settings, pool: db.Pool
) -> None:
    """The bootstrap admin key and a stored admin key both open a session: 303 to the
    overview with an HttpOnly, SameSite=Strict cookie scoped to /dashboard; without a
    session every page sends the browser to the sign-in form."""
    async with pool.connection() as conn:
        _, stored = await create_key(conn, "admin", unique("dash"))
    for key in (ADMIN_KEY, stored):
        async with browser(settings, pool) as client:
            before = await client.get("/dashboard/queues")
            assert (before.status_code, before.headers["location"]) == (303, "/dashboard/sign-in")
            response = await sign_in(client, key)
            assert (response.status_code, response.headers["location"]) == (303, "/dashboard")
            cookie = response.headers["set-cookie"].lower()
            assert "pb_dashboard=" in cookie
            assert (
                "httponly" in cookie and "samesite=strict" in cookie and "path=/dashboard" in cookie
            )
            assert "secure" not in cookie.split("pb_dashboard_signin")[0]
            page = await client.get("/dashboard")
            assert page.status_code == 200, page.text
            assert "Deliveries sent per minute" in page.text
            assert page.headers["cache-control"] == "no-store"


async def test_behind_https_the_cookie_is_secure(settings: Settings, pool: db.Pool) -> None:
    """Served over https (the request's scheme, or a proxy's X-Forwarded-Proto), the
    cookies get Secure."""
    async with browser(settings, pool) as client:
        client.base_url = httpx.URL("https://testserver")
        response = await sign_in(client, ADMIN_KEY)
        assert response.status_code == 303
        session = [
            c for c in response.headers.get_list("set-cookie") if c.startswith("pb_dashboard=")
        ]
        assert session and "secure" in session[0].lower()
    async with browser(settings, pool) as client:
        form = await client.get("/dashboard/sign-in", headers={"X-Forwarded-Proto": "https"})
        assert "secure" in form.headers["set-cookie"].lower()


async def test_send_keys_recipient_tokens_and_wrong_keys_are_refused(
    settings: Settings, pool: db.Pool
) -> None:
    """A send key (403), a recipient token or an unknown key (401) open no session."""
    async with pool.connection() as conn:
        _, send_key = await create_key(conn, "send", unique("dash"))
    cases = [
        (send_key, 403),
        (recipient_token(INBOX_SECRET, "member-1"), 401),
        ("pb_not-a-key-this-server-knows", 401),
        ("", 401),
    ]
    for key, status in cases:
        async with browser(settings, pool) as client:
            response = await sign_in(client, key)
            assert response.status_code == status, (key[:6], response.text)
            assert "pb_dashboard=" not in response.headers.get("set-cookie", "")
            assert (await client.get("/dashboard")).status_code == 303


async def test_the_api_credentials_do_not_open_pages(api: httpx.AsyncClient) -> None:
    """A Bearer admin key is not a session: the pages want the cookie."""
    response = await api.get("/dashboard/notifications", headers=ADMIN, follow_redirects=False)
    assert response.status_code == 303
    assert (await api.get("/dashboard/overview.json", headers=ADMIN)).status_code == 401


async def test_csrf_missing_or_wrong_is_403_and_changes_nothing(
    settings: Settings, pool: db.Pool, api: httpx.AsyncClient, worker: None
) -> None:
    """A POST without this session's CSRF token (or with another's) is refused with 403;
    the sign-in form checks its own token too."""
    async with browser(settings, pool) as client:
        no_form = await client.post("/dashboard/sign-in", data={"key": ADMIN_KEY})
        assert no_form.status_code == 403
        assert (await sign_in(client, ADMIN_KEY)).status_code == 303
        page = await client.get("/dashboard/dead-letters")
        good = csrf_of(page)
        for data in ({}, {"csrf": ""}, {"csrf": "0" * 64}, {"csrf": good[:-1] + "x"}):
            refused = await client.post("/dashboard/sign-out", data=data)
            assert refused.status_code == 403, data
            assert (await client.get("/dashboard")).status_code == 200
        refused = await client.post("/dashboard/dead-letters/requeue", data={"id": "1"})
        assert refused.status_code == 403


async def test_sign_out_ends_the_session_for_good(settings: Settings, pool: db.Pool) -> None:
    """After sign-out the old cookie, sent again by hand, opens nothing: the session row
    is gone, not only the browser's cookie."""
    async with browser(settings, pool) as client:
        assert (await sign_in(client, ADMIN_KEY)).status_code == 303
        cookie = client.cookies.get("pb_dashboard")
        assert cookie
        page = await client.get("/dashboard")
        out = await client.post("/dashboard/sign-out", data={"csrf": csrf_of(page)})
        assert (out.status_code, out.headers["location"]) == (303, "/dashboard/sign-in")
    async with browser(settings, pool) as replay:
        replay.cookies.set("pb_dashboard", cookie, domain="testserver.local", path="/dashboard")
        again = await replay.get("/dashboard", headers={"Cookie": f"pb_dashboard={cookie}"})
        assert again.status_code == 303


async def test_a_revoked_key_ends_its_sessions(settings: Settings, pool: db.Pool) -> None:
    async with pool.connection() as conn:
        key_id, key = await create_key(conn, "admin", unique("dash"))
    async with browser(settings, pool) as client:
        assert (await sign_in(client, key)).status_code == 303
        assert (await client.get("/dashboard")).status_code == 200
        await query(pool, "UPDATE api_keys SET revoked_at = now() WHERE id = %s", (key_id,))
        assert (await client.get("/dashboard")).status_code == 303


async def test_failed_sign_ins_are_rate_limited(settings: Settings, pool: db.Pool) -> None:
    """Failures count against the address like any failed authentication: over the
    limit a sign-in answers 429 with Retry-After, even with the right key."""
    slow = dataclasses.replace(settings, rate_limit_auth_failures=0.5)
    async with browser(slow, pool) as client:
        statuses = [(await sign_in(client, "pb_wrong")).status_code for _ in range(3)]
        assert statuses[0] == 401 and statuses[-1] == 429
        blocked = await sign_in(client, "pb_wrong")
        assert blocked.status_code == 429 and int(blocked.headers["retry-after"]) >= 1


@pytest.mark.parametrize(
    "path",
    [
        "/dashboard",
        "/dashboard/overview.json",
        "/dashboard/queues",
        "/dashboard/dead-letters",
        "/dashboard/dead-letters?channel=EMAIL&older_than=1h",
        "/dashboard/notifications",
        "/dashboard/templates",
        "/dashboard/workflows",
        "/dashboard/experiments",
    ],
)
async def test_pages_answer(settings: Settings, pool: db.Pool, path: str) -> None:
    async with browser(settings, pool) as client:
        assert (await sign_in(client, ADMIN_KEY)).status_code == 303
        response = await client.get(path)
        assert response.status_code == 200, response.text


async def test_bad_filters_show_the_problem(settings: Settings, pool: db.Pool) -> None:
    async with browser(settings, pool) as client:
        assert (await sign_in(client, ADMIN_KEY)).status_code == 303
        response = await client.get("/dashboard/notifications", params={"channel": "FAX"})
        assert response.status_code == 400 and "FAX" in response.text
        missing = await client.get("/dashboard/deliveries/999999999")
        assert missing.status_code == 404


async def test_a_notification_and_its_timeline(
    settings: Settings, pool: db.Pool, api: httpx.AsyncClient, worker: None
) -> None:
    """The notification's page lists its deliveries; each links to its timeline."""
    nid = await send(api, to=[unique("dash")], message="hello <b>there</b>", channels=["IN_APP"])
    async with browser(settings, pool) as client:
        assert (await sign_in(client, ADMIN_KEY)).status_code == 303
        search = await client.get("/dashboard/notifications", params={"limit": 5})
        assert search.status_code == 200
        page = await client.get(f"/dashboard/notifications/{nid}")
        assert page.status_code == 200
        assert "hello &lt;b&gt;there&lt;/b&gt;" in page.text  # escaped


async def test_the_experiments_pages_show_each_variants_results(
    settings: Settings, pool: db.Pool
) -> None:
    """The list names the experiment; its page shows per outcome each variant's count,
    rate, the difference to the first with its interval and the p-value (the hand-
    computed example of test_experiments: clicked b - a = +3.0 pts, 0.2 to 5.8, p 0.0355)."""
    from tests.integration.test_experiments import experiment_with

    experiment = unique("dash-exp")
    await experiment_with(pool, experiment, {"a": (1000, 100), "b": (1000, 130)})
    async with browser(settings, pool) as client:
        assert (await sign_in(client, ADMIN_KEY)).status_code == 303
        listing = await client.get("/dashboard/experiments")
        assert listing.status_code == 200 and f"/dashboard/experiments/{experiment}" in listing.text
        page = await client.get(f"/dashboard/experiments/{experiment}")
        assert page.status_code == 200, page.text
        clicked = page.text.split('id="m-clicked"')[1].split("</section>")[0]
        assert "a (baseline)" in clicked and "10.0 %" in clicked and "13.0 %" in clicked
        assert "+3.0 pts (+0.2 to +5.8)" in clicked and "0.035" in clicked
        missing = await client.get("/dashboard/experiments/no-such-experiment")
        assert missing.status_code == 404


async def test_overview_fragment_templates_and_workflows(
    settings: Settings, pool: db.Pool, api: httpx.AsyncClient
) -> None:
    """htmx asks the overview for its figures alone; a template's page previews each of
    its channels in the chosen locale; a workflow's page lists its runs by state."""
    template = unique("tpl")
    body = {
        "default_locale": "en",
        "example_data": {"who": "Ada"},
        "locales": {
            "en": {"IN_APP": {"body": "Hi {{ who }}"}},
            "de": {"IN_APP": {"body": "Hallo {{ who }}"}},
        },
    }
    assert (
        await api.put(f"/api/templates/{template}", headers=ADMIN, json=body)
    ).status_code == 200
    workflow = unique("wf")
    steps = {"steps": [{"type": "delay", "for": "1d"}, {"type": "send", "message": "later"}]}
    assert (
        await api.put(f"/api/workflows/{workflow}", headers=ADMIN, json=steps)
    ).status_code == 200
    trigger = await api.post(
        f"/api/workflows/{workflow}/trigger", headers=ADMIN, json={"to": [unique("r")]}
    )
    assert trigger.status_code == 202
    async with browser(settings, pool) as client:
        assert (await sign_in(client, ADMIN_KEY)).status_code == 303
        fragment = await client.get("/dashboard", headers={"HX-Request": "true"})
        assert fragment.status_code == 200
        assert "<html" not in fragment.text and "Queue depth" in fragment.text
        german = await client.get(f"/dashboard/templates/{template}", params={"locale": "de"})
        assert german.status_code == 200 and "Hallo Ada" in german.text
        listed = await client.get("/dashboard/templates")
        assert template in listed.text
        waiting = await client.get(f"/dashboard/workflows/{workflow}", params={"state": "waiting"})
        assert (
            waiting.status_code == 200
            and "waiting" in waiting.text
            and "No runs" not in waiting.text
        )
        overview = await client.get("/dashboard/workflows")
        row = overview.text.split(f'href="/dashboard/workflows/{workflow}"')[1].split("</tr>")[0]
        assert "1 waiting" in row and "0 digesting" in row
        done = await client.get(f"/dashboard/workflows/{workflow}", params={"state": "done"})
        assert "No runs done" in done.text
        assert (await client.get("/dashboard/workflows/nope-none")).status_code == 404


async def test_an_experiments_variants_side_by_side(
    settings: Settings, pool: db.Pool, api: httpx.AsyncClient, worker: None
) -> None:
    """An experiment sent through the API shows in the list, and its page shows each
    variant; an unknown key says so (404)."""
    experiment = unique("exp")
    variants = [
        {"name": "a", "weight": 50, "title": "Welcome!", "body": "Glad you are here."},
        {"name": "b", "weight": 50, "title": "Hello there", "body": "Come and say hi."},
    ]
    people = [unique("p") for _ in range(20)]
    response = await api.post(
        "/api/notifications",
        headers=ADMIN,
        json={"to": people, "channels": ["IN_APP"], "experiment": experiment, "variants": variants},
    )
    assert response.status_code == 202, response.text
    async with browser(settings, pool) as client:
        assert (await sign_in(client, ADMIN_KEY)).status_code == 303
        empty = await client.get("/dashboard/experiments")
        assert empty.status_code == 200 and 'aria-current="page"' in empty.text

        async def shown() -> httpx.Response | None:
            page = await client.get(f"/dashboard/experiments/{experiment}")
            return page if page.status_code == 200 else None

        page = await wait_until(shown)
        assert "a (baseline)" in page.text and ">b<" in page.text.replace(" ", "")
        listed = await client.get("/dashboard/experiments")
        assert f"/dashboard/experiments/{experiment}" in listed.text
        missing = await client.get(f"/dashboard/experiments/{unique('none')}")
        assert missing.status_code == 404
