"""The drop-in inbox widget (``/static/postbell-inbox.js``) in a real headless Chromium,
on examples/inbox.html served from another origin than the API (CORS), against real ``postbell serve`` and
``postbell worker`` processes: the badge, live items, mark read, archive, keyboard use,
and a reconnect after the API restarts on the same port.

Screenshots go to build/screenshots/ (desktop 1280x800 and phone 390x844)."""

from __future__ import annotations

import asyncio
import contextlib
import http.server
import re
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest

from postbell.app.core import tokens
from tests.conftest import ADMIN_KEY, INBOX_SECRET, unique
from tests.e2e.browser import SCREENSHOTS, browser, chromium_path  # noqa: F401 (fixtures)
from tests.e2e.procs import background, env, wait_http
from tests.peers.net import free_port

pytest.importorskip("playwright.async_api", reason="playwright is not installed")
from playwright.async_api import Page, expect

ADMIN = {"Authorization": f"Bearer {ADMIN_KEY}"}

#: The example page of the repository, filled in as a host app would.
EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "inbox.html"
#: Before the page's own scripts: record the events the widget dispatches.
RECORD_EVENTS = """
window.seen = [];
for (const type of ["postbell-notification", "postbell-counts", "postbell-error"]) {
  document.addEventListener(type, (event) => window.seen.push([type, event.detail]));
}
"""


def example_page(api: str, rid: str, token: str) -> str:
    html = EXAMPLE.read_text()
    for placeholder, value in (
        ("https://notify.example.org", api),
        ('recipient="user-1"', f'recipient="{rid}"'),
        ("RECIPIENT-TOKEN", token),
    ):
        assert placeholder in html, placeholder
        html = html.replace(placeholder, value)
    return html


@contextlib.contextmanager
def page_server(html: str) -> Iterator[str]:
    """A tiny web server of another origin (another port) serving one page."""

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            body = html.encode()
            self.send_response(200)
            self.send_header("Content-Type", "text/html; charset=utf-8")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: Any) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


async def send(api: httpx.AsyncClient, rid: str, title: str, body: str) -> None:
    response = await api.post(
        "/api/notifications",
        headers=ADMIN,
        json={
            "to": [rid],
            "title": title,
            "body": body,
            "channels": ["IN_APP"],
            "action_url": "https://community.example.org/t/42",
        },
    )
    assert response.status_code == 202, response.text


async def item_ids(api: httpx.AsyncClient, rid: str, **query: str) -> dict[str, int]:
    """Title → inbox item id, as the API lists them."""
    page = (await api.get(f"/api/inbox/{rid}", headers=ADMIN, params=query)).json()
    return {item["title"]: item["id"] for item in page["items"]}


async def wait_item(api: httpx.AsyncClient, rid: str, title: str) -> int:
    for _ in range(300):
        ids = await item_ids(api, rid)
        if title in ids:
            return ids[title]
        await asyncio.sleep(0.05)
    raise AssertionError(f"{title!r} never reached {rid}'s inbox")


async def shoot(page: Page, name: str) -> None:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    await page.screenshot(path=str(SCREENSHOTS / f"{name}.png"))


async def test_widget_live_from_another_origin_and_after_an_api_restart(
    fresh_database_url: str,
    browser: Any,  # noqa: F811 (the fixture imported above)
) -> None:
    """The widget on a page of another origin: the badge shows the unread count, a new
    notification appears live, marking read lowers the badge, archiving removes the
    item, Escape closes the panel and gives focus back to the bell. After the API
    process stops and starts again on the same port, the widget reconnects by itself:
    an item sent meanwhile (through another API process) shows, one archived meanwhile
    does not come back, and a new item arrives live."""
    rid = unique("widget")
    port, other_port = free_port(), free_port()
    api_url, other_url = f"http://127.0.0.1:{port}", f"http://127.0.0.1:{other_port}"
    token = tokens.recipient_token(INBOX_SECRET, rid)
    html = example_page(api_url, rid, token)
    with page_server(html) as page_url:
        common = {
            "DATABASE_URL": fresh_database_url,
            "POSTBELL_ADMIN_KEY": ADMIN_KEY,
            "POSTBELL_INBOX_SECRET": INBOX_SECRET,
            "POSTBELL_POLL_INTERVAL": "0.2",
            "POSTBELL_HOST": "127.0.0.1",
            "POSTBELL_CORS_ORIGINS": page_url,
        }
        with (
            background("worker", environ=env(**common)),
            background("serve", environ=env(PORT=str(other_port), **common)) as other,
        ):
            await asyncio.to_thread(wait_http, f"{other_url}/health", proc=other)
            async with (
                httpx.AsyncClient(base_url=other_url, timeout=30) as via_other,
                httpx.AsyncClient(base_url=api_url, timeout=30) as via_api,
            ):
                for n in (1, 2):
                    await send(via_other, rid, f"Earlier post {n}", f"Someone replied ({n})")
                    await wait_item(via_other, rid, f"Earlier post {n}")
                context = await browser.new_context(
                    viewport={"width": 1280, "height": 800}, locale="en-US"
                )
                await context.add_init_script(RECORD_EVENTS)
                page = await context.new_page()
                try:
                    await run_scenario(page, page_url, rid, token, common, port, via_api, via_other)
                finally:
                    await context.close()


async def run_scenario(
    page: Page,
    page_url: str,
    rid: str,
    token: str,
    common: dict[str, str],
    port: int,
    via_api: httpx.AsyncClient,
    via_other: httpx.AsyncClient,
) -> None:
    widget = page.locator("postbell-inbox")
    bell = widget.locator("button.bell")
    badge = widget.locator(".badge")
    items = widget.locator("li[data-id]")
    api = env(PORT=str(port), **common)
    with background("serve", environ=api) as first:
        await asyncio.to_thread(wait_http, f"http://127.0.0.1:{port}/health", proc=first)
        await page.goto(page_url)
        await expect(widget).to_have_attribute("status", "live")
        await expect(badge).to_have_text("2")
        await expect(bell).to_have_attribute("aria-label", "Notifications, 2 unread")
        await expect(bell).to_have_attribute("aria-expanded", "false")

        await bell.click()
        await expect(bell).to_have_attribute("aria-expanded", "true")
        await expect(items).to_have_count(2)
        await expect(items.first.locator(".title")).to_contain_text("Earlier post 2")
        await expect(items.first.locator("time")).to_have_text("now")

        # Live: sent through the API, it appears at the top and the badge counts it.
        await send(via_api, rid, "New reply", "Grace answered your post")
        await expect(items).to_have_count(3)
        await expect(items.first.locator(".title")).to_contain_text("New reply")
        await expect(items.first.locator(".body")).to_have_text("Grace answered your post")
        await expect(items.first.locator("a.title")).to_have_attribute(
            "href", "https://community.example.org/t/42"
        )
        await expect(badge).to_have_text("3")
        # Screen readers hear it: the polite live region names the new item or the count.
        await expect(widget.locator("[role=status][aria-live=polite]")).to_have_text(
            re.compile(r"New notification: New reply|3 unread notifications")
        )
        await shoot(page, "widget-desktop-open")

        # Mark read: the badge goes down, the server agrees.
        await items.first.locator("[data-role=toggle]").click()
        await expect(badge).to_have_text("2")
        await expect(items.first).not_to_have_class("item unread")
        unread = await item_ids(via_api, rid, unread="true")
        assert sorted(unread) == ["Earlier post 1", "Earlier post 2"]

        # Archive: the item leaves the list and focus stays in the panel.
        archived_title = "Earlier post 1"
        await widget.locator("li", has_text=archived_title).locator("[data-role=archive]").click()
        await expect(items).to_have_count(2)
        await expect(widget.locator("li", has_text=archived_title)).to_have_count(0)
        await expect(badge).to_have_text("1")
        assert archived_title in await item_ids(via_api, rid, archived="true")
        focused = await page.evaluate("document.activeElement.shadowRoot.activeElement.tagName")
        assert focused == "BUTTON"

        # Keyboard: Escape closes the panel and focus returns to the bell.
        await page.keyboard.press("Escape")
        await expect(bell).to_have_attribute("aria-expanded", "false")
        await expect(widget.locator(".panel")).to_be_hidden()
        assert await page.evaluate(
            "document.activeElement.shadowRoot.activeElement.classList.contains('bell')"
        )
        await page.keyboard.press("Enter")
        await expect(bell).to_have_attribute("aria-expanded", "true")
        await page.keyboard.press("ArrowDown")
        assert await page.evaluate(
            "document.activeElement.shadowRoot.activeElement.closest('li') !== null"
        )
        notified = await page.evaluate(
            "window.seen.filter(([t]) => t === 'postbell-notification').map(([, d]) => d.item.title)"
        )
        assert notified == ["New reply"]
        # No error reached the page so far: every cross-origin call was allowed.
        errors = await page.evaluate(
            "window.seen.filter(([t]) => t === 'postbell-error').map(([, d]) => d)"
        )
        assert errors == []

    # It stopped on SIGTERM without being killed: the open stream did not hold it up.
    assert first.returncode == 0, first.output()[-2000:]
    # The API process is gone: the widget says it is reconnecting.
    await expect(widget).to_have_attribute("status", "connecting")
    await expect(widget.locator(".status")).to_have_text("Reconnecting…")
    # Meanwhile, through another API process (another tab, the host app): one item
    # arrives and stays, one arrives and is archived before the widget is back.
    await send(via_other, rid, "While away", "Sent during the restart")
    gone = "Archived while away"
    await send(via_other, rid, gone, "Must not come back")
    gone_id = await wait_item(via_other, rid, gone)
    await wait_item(via_other, rid, "While away")
    archived = await via_other.post(
        f"/api/inbox/{rid}/archive", headers=ADMIN, json={"ids": [gone_id]}
    )
    assert archived.json()["updated"] == 1

    with background("serve", environ=api) as second:
        await asyncio.to_thread(wait_http, f"http://127.0.0.1:{port}/health", proc=second)
        await expect(widget).to_have_attribute("status", "live", timeout=30000)
        await expect(widget.locator(".status")).to_be_hidden()
        await expect(widget.locator("li", has_text="While away")).to_have_count(1)
        await send(via_api, rid, "After the restart", "Live again")
        await expect(items.first.locator(".title")).to_contain_text("After the restart")
        await expect(widget.locator("li", has_text=gone)).to_have_count(0)
        await expect(items).to_have_count(4)
        await expect(badge).to_have_text("3")
        await shoot(page, "widget-desktop-after-restart")
        await page.set_viewport_size({"width": 390, "height": 844})
        await expect(widget.locator(".panel")).to_be_visible()
        await page.keyboard.press("Escape")
        await bell.click()  # reopened at phone width: the panel spans the screen
        box = await widget.locator(".panel").bounding_box()
        assert box is not None and box["x"] >= 0 and box["x"] + box["width"] <= 390
        await shoot(page, "widget-phone-open")
        # Relative times follow the locale (the page's lang, or the attribute).
        await widget.evaluate("el => el.setAttribute('locale', 'de')")
        await expect(items.first.locator("time")).to_have_text("jetzt")
        # A new token (here a wrong one) starts over: the page hears the refusal...
        wrong = tokens.recipient_token("not-the-secret", rid)
        await widget.evaluate(f"el => el.setAttribute('token', '{wrong}')")
        refused = page.wait_for_function(
            "window.seen.some(([t, d]) => t === 'postbell-error' && d.status === 403)"
        )
        await refused
        # ...and the right one brings the inbox back, live.
        await widget.evaluate(f"el => el.setAttribute('token', '{token}')")
        await expect(widget).to_have_attribute("status", "live")
        await expect(items).to_have_count(4)
    assert second.returncode == 0, second.output()[-2000:]
    with psycopg.connect(common["DATABASE_URL"]) as conn:
        (archived_at,) = conn.execute(
            "SELECT archived_at FROM postbell.deliveries WHERE id = %s", (gone_id,)
        ).fetchone() or (None,)
    assert archived_at is not None
