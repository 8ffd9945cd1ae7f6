"""Callers are limited: per API key, per recipient token, per client after failed
authentication, and open streams per recipient; over a limit, 429 with Retry-After and
the one error body, and other callers are not touched."""

from __future__ import annotations

import contextlib

import httpx
import pytest

from postbell.app.api.limits import Limiter
from postbell.app.api.main import create_app
from postbell.app.core import db, keys
from postbell.app.core.errors import TooManyRequests
from postbell.app.core.settings import ConfigError
from tests.conftest import ADMIN, INBOX_SECRET, api_client, live_server, make_settings, unique


def test_a_bucket_refills_at_its_rate_and_holds_twice_it() -> None:
    limiter = Limiter(2.0, what="API key")
    for _ in range(4):  # the burst: twice the per-second rate
        limiter.take("k", now=100.0)
    with pytest.raises(TooManyRequests) as refused:
        limiter.take("k", now=100.0)
    assert refused.value.retry_after == pytest.approx(0.5)
    limiter.take("k", now=100.5)  # one token back after 1/rate seconds
    limiter.take("other", now=100.5)  # buckets are per caller
    assert Limiter(None, what="x").exhausted("k") is False


@pytest.mark.parametrize("value", ["fast", "0/s", "-1/s", "10/fortnight"])
def test_bad_limits_fail_at_start_naming_the_variable(value: str) -> None:
    with pytest.raises(ConfigError, match="POSTBELL_RATE_LIMIT_TOKEN"):
        make_settings("postgresql://x@127.0.0.1/x", POSTBELL_RATE_LIMIT_TOKEN=value)
    assert (
        make_settings("postgresql://x@127.0.0.1/x", POSTBELL_RATE_LIMIT_KEY="off").rate_limit_key
        is None
    )


async def test_an_api_key_over_its_rate_gets_429_and_others_do_not(
    database_url: str, pool: db.Pool
) -> None:
    settings = make_settings(database_url, POSTBELL_RATE_LIMIT_KEY="2/s")
    async with pool.connection() as conn:
        _, other = await keys.create_key(conn, "send", "limits")
    async with api_client(create_app(settings)) as client:
        answers = [
            (await client.get("/api/categories", headers=ADMIN)).status_code for _ in range(6)
        ]
        assert answers[:4] == [200] * 4 and answers[-1] == 429
        refused = await client.get("/api/categories", headers=ADMIN)
        assert refused.status_code == 429
        assert refused.json()["error"] == "too_many_requests"
        assert int(refused.headers["Retry-After"]) >= 1
        mine = await client.get("/api/categories", headers={"Authorization": f"Bearer {other}"})
        assert mine.status_code == 200


async def test_a_recipient_token_over_its_rate_gets_429(database_url: str) -> None:
    from postbell.app.core.tokens import recipient_token

    settings = make_settings(database_url, POSTBELL_RATE_LIMIT_TOKEN="1/s")
    alice, bob = unique("alice"), unique("bob")
    as_alice = {"Authorization": f"Bearer {recipient_token(INBOX_SECRET, alice)}"}
    as_bob = {"Authorization": f"Bearer {recipient_token(INBOX_SECRET, bob)}"}
    async with api_client(create_app(settings)) as client:
        statuses = [
            (await client.get(f"/api/inbox/{alice}", headers=as_alice)).status_code
            for _ in range(3)
        ]
        assert statuses == [200, 200, 429]
        assert (await client.get(f"/api/inbox/{bob}", headers=as_bob)).status_code == 200


async def test_failed_authentication_is_limited_without_locking_out_known_keys(
    database_url: str,
) -> None:
    """Past the failure limit, an unknown credential is 429 (and costs no database
    lookup); a key this process accepted before still works."""
    settings = make_settings(database_url, POSTBELL_RATE_LIMIT_AUTH_FAILURES="2/s")
    async with api_client(create_app(settings)) as client:
        assert (await client.get("/api/categories", headers=ADMIN)).status_code == 200
        wrong = [
            (
                await client.get("/api/categories", headers={"Authorization": f"Bearer guess-{n}"})
            ).status_code
            for n in range(6)
        ]
        assert wrong[:4] == [401] * 4 and set(wrong[4:]) == {429}
        assert (await client.get("/api/categories", headers=ADMIN)).status_code == 200


async def test_open_streams_per_recipient_are_capped(database_url: str) -> None:
    settings = make_settings(database_url, POSTBELL_MAX_STREAMS_PER_RECIPIENT="2")
    rid = unique("streams")
    async with (
        live_server(create_app(settings)) as base,
        httpx.AsyncClient(timeout=10) as client,
        contextlib.AsyncExitStack() as stack,
    ):
        readers = []  # kept, not closed: closing a reader hangs the stream up
        for _ in range(2):
            stream = await stack.enter_async_context(
                client.stream("GET", f"{base}/api/inbox/{rid}/stream", headers=ADMIN)
            )
            assert stream.status_code == 200
            lines = stream.aiter_lines()
            readers.append(lines)
            while await anext(lines) != "event: counts":  # registered once it sends them
                pass
        third = await client.get(f"{base}/api/inbox/{rid}/stream", headers=ADMIN)
        assert third.status_code == 429 and third.json()["error"] == "too_many_requests"
        other = unique("other")
        async with client.stream("GET", f"{base}/api/inbox/{other}/stream", headers=ADMIN) as s:
            assert s.status_code == 200
