"""Urgent deliveries overtake a queued low-priority backlog of their own channel
(issue 19 W5b, issue 21 "Priority in the deliver queues").

A slow receiver makes the backlog real: every request to it takes 100 ms, so 3,000
low-priority webhooks (or emails) take seconds to drain. An urgent one sent while
they drain must not wait for them: the assertions count how many backlog items
arrived after the urgent one was accepted and before it arrived (never times).
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from postbell.app.api.main import create_app
from postbell.app.core import db
from postbell.app.core.settings import Settings
from tests.conftest import (
    ADMIN,
    api_client,
    make_settings,
    query,
    running_worker,
    unique,
    wait_until,
)
from tests.peers.smtp import SmtpPeer
from tests.peers.webhooks import WebhookReceiver

BACKLOG = 3_000
#: at most this share of the backlog may arrive between the urgent one's acceptance
#: and its arrival (issue 19: ahead of >= 90 % of the backlog)
OVERTAKEN_SHARE = 0.10


@pytest.fixture
async def own_pool(fresh_database_url: str) -> AsyncIterator[db.Pool]:
    pool = db.create_pool(fresh_database_url, max_size=8)
    await pool.open(wait=True)
    yield pool
    await pool.close()


async def _queue_backlog(pool: db.Pool, prefix: str, channel: str) -> None:
    """BACKLOG low-priority deliveries of ``channel``, in one notification."""
    await query(
        pool,
        "SELECT notify(ARRAY(SELECT %s || i FROM generate_series(1, %s) AS i),"
        ' \'{"title": "Digest", "message": "newsletter"}\', ARRAY[%s], \'low\')',
        (prefix, BACKLOG, channel),
    )


async def _post_urgent(settings: Settings, pool: db.Pool, to: str, channel: str) -> str:
    async with api_client(create_app(settings, pool=pool)) as client:
        response = await client.post(
            "/api/notifications",
            headers=ADMIN,
            json={
                "to": [to],
                "title": "Sign-in code",
                "message": "your code is 123456",
                "channels": [channel],
                "priority": "urgent",
            },
        )
    assert response.status_code == 202, response.text
    return str(response.json()["id"])


@pytest.mark.slow
async def test_an_urgent_webhook_overtakes_a_slow_low_backlog(
    fresh_database_url: str, own_pool: db.Pool, receiver: WebhookReceiver
) -> None:
    """3,000 low webhooks drain through a receiver answering in 100 ms; an urgent
    webhook to the same receiver, accepted once the drain is under way, arrives
    ahead of at least 90 % of the backlog, and the backlog is real (most of it still
    unsent when the urgent one arrives); every backlog webhook arrives in the end."""
    path = f"/{unique('slow')}"
    receiver.delay[path] = 0.1
    prefix = unique("low") + "-"
    settings = make_settings(
        fresh_database_url, POSTBELL_WEBHOOK_ALLOW_ADDRESSES=receiver.allow_entry
    )
    await query(
        own_pool,
        "INSERT INTO recipients (external_id, webhook_url)"
        " SELECT %s || i, %s FROM generate_series(1, %s) AS i"
        " UNION ALL SELECT %s, %s",
        (prefix, receiver.url_for(path), BACKLOG, prefix + "urgent", receiver.url_for(path)),
    )
    await _queue_backlog(own_pool, prefix, "WEBHOOK")
    try:
        async with running_worker(settings, own_pool):
            await wait_until(lambda: _arrived(receiver, path, 100), timeout=60)
            urgent = await _post_urgent(settings, own_pool, prefix + "urgent", "WEBHOOK")
            before = len(receiver.at(path))

            async def urgent_index() -> int | None:
                for index, request in enumerate(receiver.at(path)):
                    if request.headers.get("X-Postbell-Notification") == urgent:
                        return index + 1  # truthy even at 0
                return None

            arrived_at = (await wait_until(urgent_index, timeout=60)) - 1
            overtaken = arrived_at - before
            left = BACKLOG - arrived_at
            assert overtaken <= OVERTAKEN_SHARE * BACKLOG, (overtaken, before, arrived_at)
            assert left >= BACKLOG // 2, (left, before, arrived_at)
            await wait_until(lambda: _arrived(receiver, path, BACKLOG + 1), timeout=120)
    finally:
        receiver.delay.pop(path, None)
    sent = await query(
        own_pool, "SELECT status, count(*) AS n FROM deliveries GROUP BY status ORDER BY 1"
    )
    assert sent == [{"status": "sent", "n": BACKLOG + 1}]


async def _arrived(receiver: WebhookReceiver, path: str, count: int) -> bool:
    return len(receiver.at(path)) >= count


@pytest.mark.slow
async def test_an_urgent_email_overtakes_a_slow_low_backlog(
    fresh_database_url: str, own_pool: db.Pool, smtp: SmtpPeer
) -> None:
    """The same through SMTP: a relay that takes 100 ms per message, 3,000 low
    emails in jobs of 50, one urgent email accepted once they drain: it is delivered
    ahead of at least 90 % of the backlog, with most of the backlog still to go."""
    prefix = unique("low") + "-"
    domain = "slow.example.org"
    # Jobs of 50: more runs than the channel has slots, so the urgent run cannot
    # simply find a free one.
    settings = make_settings(fresh_database_url, POSTBELL_BATCH_SIZE_EMAIL="50", **smtp.env())
    await query(
        own_pool,
        "INSERT INTO recipients (external_id, email)"
        " SELECT %s || i, %s || i || '@' || %s FROM generate_series(1, %s) AS i"
        " UNION ALL SELECT %s, %s",
        (prefix, prefix, domain, BACKLOG, prefix + "urgent", f"{prefix}urgent@{domain}"),
    )
    urgent_address = f"{prefix}urgent@{domain}"

    def delivered() -> list[str]:
        """This test's addresses, in the order the relay accepted their messages."""
        with smtp._lock:
            return [r.rcpt_tos[0] for r in smtp.received if r.rcpt_tos[0].startswith(prefix)]

    await _queue_backlog(own_pool, prefix, "EMAIL")
    smtp.delay = 0.1
    try:
        async with running_worker(settings, own_pool):

            async def started() -> bool:
                return len(delivered()) >= 100

            await wait_until(started, timeout=60)
            await _post_urgent(settings, own_pool, prefix + "urgent", "EMAIL")
            before = len(delivered())

            async def urgent_index() -> int | None:
                mine = delivered()
                return mine.index(urgent_address) + 1 if urgent_address in mine else None

            arrived_at = (await wait_until(urgent_index, timeout=60)) - 1
            overtaken = arrived_at - before
            left = BACKLOG - arrived_at
            assert overtaken <= OVERTAKEN_SHARE * BACKLOG, (overtaken, before, arrived_at)
            assert left >= BACKLOG // 2, (left, before, arrived_at)
            smtp.delay = 0.0

            async def drained() -> bool:
                return len(set(delivered())) == BACKLOG + 1

            await wait_until(drained, timeout=300, interval=0.2)
    finally:
        smtp.delay = 0.0
