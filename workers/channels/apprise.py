"""APPRISE: the long tail (ntfy, Pushover, Matrix, Mattermost, … about 150 services)
through the Apprise library, to operator-configured destinations only.

A delivery goes to every URL in its category's ``apprise_urls`` (set with an admin
key on ``PUT /api/categories/{key}``; a recipient or a send key can never name one):
the category is the address, and a category without URLs is ``no_address``. Apprise
is synchronous, so sends run on a bounded pool of threads of their own
(POSTBELL_APPRISE_THREADS, 4), never on the event loop.

Apprise answers only "worked" or "did not" per URL; the status it logs
(``error=404``) sorts a failure: a 4xx other than 408/425/429 is permanent, anything
else (5xx, 429, a connection error, no status) is retried. When a category has
several URLs and one fails, the retry sends to all of them again (at least once). A
URL Apprise cannot load is ``invalid_address``. The URLs hold credentials: they
never reach a log line, an error text or an answer (``core/apprise_urls.py``).
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, ClassVar

from postbell.app.core import apprise_urls
from postbell.app.core.settings import Settings
from postbell.workers.channels.base import Channel, Delivery, Outcome

_STATUS = re.compile(r"error=(\d{3})")


def _permanent(status: int) -> bool:
    return 400 <= status < 500 and status not in (408, 425, 429)


def send_blocking(delivery: Delivery, asset: Any) -> Outcome:
    """Send one delivery to each of its category's URLs (in a pool thread)."""
    import apprise

    urls = delivery.category_options.apprise_urls
    body = delivery.body + (f"\n{delivery.action_url}" if delivery.action_url else "")
    kind = (
        apprise.NotifyType.WARNING
        if delivery.priority in ("high", "urgent")
        else apprise.NotifyType.INFO
    )
    failures: list[str] = []
    permanent = True
    for number, url in enumerate(urls, start=1):
        where = f"#{number} ({apprise_urls.mask(url)})"
        with apprise_urls.capture() as lines:
            try:
                service = apprise_urls.load(url, asset)
                if service is None:
                    return Outcome.fail(
                        f"Apprise cannot load the category's URL {where}", "invalid_address"
                    )
                ok = bool(
                    service.notify(
                        body=body,
                        title=delivery.title or "",
                        notify_type=kind,
                        body_format=apprise.NotifyFormat.TEXT,
                    )
                )
            except Exception as exc:  # a plugin's bug: this URL only
                ok = False
                lines.append(type(exc).__name__)
        if ok:
            continue
        said = apprise_urls.scrub("; ".join(lines)[:300], urls) or "no detail"
        failures.append(f"{where}: {said}")
        statuses = [int(s) for s in _STATUS.findall(" ".join(lines))]
        if not statuses or not all(_permanent(s) for s in statuses):
            permanent = False
    if not failures:
        return Outcome.sent()
    error = f"Apprise: {len(failures)} of {len(urls)} destinations failed: " + " | ".join(failures)
    return Outcome.fail(error) if permanent else Outcome.retry(error)


class AppriseChannel:
    name: ClassVar[str] = "APPRISE"
    #: No recipient has this column: the category's apprise_urls is the address
    #: (delivery_skip_reason() looks there when the recipient has none).
    address_field: ClassVar[str | None] = "apprise_urls"
    inactive_field: ClassVar[str | None] = None

    def __init__(self, threads: int) -> None:
        self._pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="postbell-apprise")
        self._asset: Any = None

    @classmethod
    def from_settings(cls, settings: Settings) -> Channel:
        return cls(settings.apprise_threads)

    def asset(self) -> Any:
        if self._asset is None:
            import apprise

            self._asset = apprise.AppriseAsset(app_id="postbell", app_desc="postbell")
        return self._asset

    async def send(self, deliveries: Sequence[Delivery]) -> list[Outcome]:
        return list(await asyncio.gather(*(self._send_one(d) for d in deliveries)))

    async def _send_one(self, delivery: Delivery) -> Outcome:
        if not delivery.category_options.apprise_urls:
            return Outcome.skip("no_address")
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(self._pool, send_blocking, delivery, self.asset())
        except Exception as exc:
            return Outcome.retry(f"Apprise: {type(exc).__name__}")

    async def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
