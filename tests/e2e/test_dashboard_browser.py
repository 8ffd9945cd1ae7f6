"""The dashboard in a real headless Chromium against real ``postbell serve`` and
``postbell worker`` processes: sign in with the admin key, watch the overview's chart
move while a workload runs, open a notification's delivery timeline, requeue a dead
letter by clicking and see it sent, sign out; keyboard reach of the navigation.

Screenshots go to build/screenshots/ (dashboard-*-1280x800.png, dashboard-*-375x800.png)."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import httpx
import pytest

from tests.conftest import ADMIN_KEY, INBOX_SECRET, unique
from tests.e2e.browser import SCREENSHOTS, browser, chromium_path  # noqa: F401 (fixtures)
from tests.e2e.procs import background, env, wait_http
from tests.peers.net import free_port
from tests.peers.webhooks import WebhookReceiver

pytest.importorskip("playwright.async_api", reason="playwright is not installed")
from playwright.async_api import Page, expect

ADMIN = {"Authorization": f"Bearer {ADMIN_KEY}"}
SIZES = {"1280x800": (1280, 800), "375x800": (375, 800)}


async def shoot(page: Page, name: str) -> None:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    await page.screenshot(path=str(SCREENSHOTS / f"{name}.png"), full_page=True)


async def notify(api: httpx.AsyncClient, **body: Any) -> str:
    response = await api.post("/api/notifications", headers=ADMIN, json=body)
    assert response.status_code == 202, response.text
    return str(response.json()["id"])


async def wait_for(check: Any, timeout: float = 30.0) -> Any:
    for _ in range(int(timeout / 0.1)):
        value = await check()
        if value:
            return value
        await asyncio.sleep(0.1)
    raise AssertionError(f"not met within {timeout}s: {value!r}")


async def test_dashboard_in_a_real_browser(
    fresh_database_url: str,
    browser: Any,  # noqa: F811 (the fixture imported above)
    receiver: WebhookReceiver,
) -> None:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    common = {
        "DATABASE_URL": fresh_database_url,
        "POSTBELL_ADMIN_KEY": ADMIN_KEY,
        "POSTBELL_INBOX_SECRET": INBOX_SECRET,
        "POSTBELL_POLL_INTERVAL": "0.2",
        "POSTBELL_HOST": "127.0.0.1",
        "POSTBELL_WEBHOOK_ALLOW_PRIVATE": "1",
    }
    with (
        background("worker", environ=env(**common)),
        background("serve", environ=env(PORT=str(port), **common)) as serve,
    ):
        await asyncio.to_thread(wait_http, f"{url}/health", proc=serve)
        async with httpx.AsyncClient(base_url=url, timeout=30) as api:
            # A dead letter: the receiver refuses the first webhook with 400 (permanent).
            hook = f"/dash-{unique('hook')}"
            receiver.script(hook, [400])
            rid = unique("member")
            put = await api.put(
                f"/api/recipients/{rid}",
                headers=ADMIN,
                json={"webhook_url": receiver.url_for(hook)},
            )
            assert put.status_code in (200, 201), put.text
            dead_nid = await notify(
                api, to=[rid], message="Your event starts soon", channels=["WEBHOOK"]
            )

            async def dead() -> Any:
                page = (await api.get("/api/dead-letters", headers=ADMIN)).json()
                return [d for d in page["items"] if d["notification_id"] == dead_nid]

            [dead_letter] = await wait_for(dead)
            context = await browser.new_context(
                viewport={"width": 1280, "height": 800}, locale="en-US"
            )
            page = await context.new_page()
            try:
                await scenario(page, url, api, dead_letter, receiver, hook)
                for size, (width, height) in SIZES.items():
                    await page.set_viewport_size({"width": width, "height": height})
                    for name, path in [
                        ("overview", "/dashboard"),
                        ("queues", "/dashboard/queues"),
                        ("dead-letters", "/dashboard/dead-letters"),
                        ("notifications", "/dashboard/notifications"),
                        ("delivery", f"/dashboard/deliveries/{dead_letter['id']}"),
                    ]:
                        await page.goto(url + path)
                        await shoot(page, f"dashboard-{name}-{size}")
                await sign_out(page, url)
            finally:
                await context.close()


async def scenario(
    page: Page,
    url: str,
    api: httpx.AsyncClient,
    dead_letter: dict[str, Any],
    receiver: WebhookReceiver,
    hook: str,
) -> None:
    # Signed out, the dashboard sends the browser to the sign-in form; a wrong key is refused.
    await page.goto(f"{url}/dashboard")
    await expect(page).to_have_url(f"{url}/dashboard/sign-in")
    await page.get_by_label("Admin API key").fill("pb_wrong")
    await page.get_by_role("button", name="Sign in").click()
    await expect(page.get_by_role("alert")).to_contain_text("Not an admin key")
    await shoot(page, "dashboard-sign-in-1280x800")
    await page.get_by_label("Admin API key").fill(ADMIN_KEY)
    await page.keyboard.press("Enter")
    await expect(page).to_have_url(f"{url}/dashboard")
    await expect(page.get_by_role("heading", name="Overview")).to_be_visible()

    # The chart moves while a workload runs: IN_APP deliveries per minute above zero.
    chart = page.locator("#chart")
    stop = asyncio.Event()

    async def workload() -> None:
        n = 0
        while not stop.is_set():
            await notify(
                api,
                to=[f"load-{n % 20}" for _ in range(1)] + [f"load-b-{n}"],
                message=f"load {n}",
                channels=["IN_APP"],
            )
            n += 1
            await asyncio.sleep(0.05)

    running = asyncio.create_task(workload())
    try:

        async def moving() -> Any:
            latest = await chart.get_attribute("data-latest")
            rates = json.loads(latest) if latest else {}
            return rates if rates.get("IN_APP", 0) > 0 else None

        rates = await wait_for(moving)
        assert rates["IN_APP"] > 0
        samples = int(await chart.get_attribute("data-samples") or 0)
        await wait_for(lambda: _more_samples(chart, samples))
        await expect(page.locator("#rates tbody th", has_text="IN_APP")).to_be_visible()
        await expect(page.locator("canvas")).to_have_count(1)
    finally:
        stop.set()
        await running
    await shoot(page, "dashboard-overview-live-1280x800")

    # Keyboard: the skip link, then the navigation, reachable with Tab.
    await page.keyboard.press("Tab")
    await expect(page.locator(".skip")).to_be_focused()
    await page.keyboard.press("Tab")
    await expect(page.get_by_role("link", name="Overview")).to_be_focused()

    # The dead letter: filter by channel, open its timeline, requeue it by clicking.
    await page.get_by_role("link", name="Dead letters").click()
    await page.get_by_label("Channel").fill("WEBHOOK")
    await page.get_by_role("button", name="Filter").click()
    row = page.locator("tr", has=page.get_by_role("link", name=str(dead_letter["id"]), exact=True))
    await expect(row).to_contain_text("400")
    await row.get_by_role("link", name=str(dead_letter["id"]), exact=True).click()
    await expect(page.locator("#delivery-status")).to_have_text("dead")
    await expect(page.locator("#timeline")).to_contain_text("attempt")
    await page.go_back()
    await page.get_by_role("button", name=f"Requeue delivery {dead_letter['id']}").click()
    await expect(page.get_by_role("status")).to_contain_text("Requeued 1")

    async def sent() -> Any:
        body = (await api.get(f"/api/deliveries/{dead_letter['id']}", headers=ADMIN)).json()
        return body["status"] == "sent"

    await wait_for(sent)
    assert len(receiver.accepted_json(hook)) == 1

    # The notification's page and the delivery's timeline now show the requeue and the send.
    await page.goto(f"{url}/dashboard/notifications?channel=WEBHOOK")
    await page.get_by_role("link", name=str(dead_letter["notification_id"])[:8]).click()
    await expect(page.get_by_role("heading", level=1)).to_contain_text("Notification")
    await page.get_by_role("link", name=f"{dead_letter['id']} · timeline").click()
    await expect(page.locator("#delivery-status")).to_have_text("sent")
    await expect(page.locator("#timeline")).to_contain_text("requeue")
    await shoot(page, "dashboard-timeline-1280x800")


async def _more_samples(chart: Any, before: int) -> bool:
    return int(await chart.get_attribute("data-samples") or 0) > before


async def sign_out(page: Page, url: str) -> None:
    await page.goto(f"{url}/dashboard")
    await page.get_by_role("button", name="Sign out").click()
    await expect(page).to_have_url(f"{url}/dashboard/sign-in")
    await page.goto(f"{url}/dashboard/queues")
    await expect(page).to_have_url(f"{url}/dashboard/sign-in")
