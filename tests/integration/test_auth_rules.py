"""The API-key rules of app/api/auth.py, each where a break would show (issue 21: the
mutation run of auth.py found them unguarded): the bootstrap key is an admin, a send
key is not; the key cache answers for its time to live and no longer (a revoked key
stops); a caller over its failure limit is told only about keys already known;
``last_used_at`` is written at most once a minute; the metrics token opens /metrics
and nothing else."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import httpx
import pytest

from postbell.app.api.auth import KeyPrincipal, KeyStore
from postbell.app.api.main import create_app
from postbell.app.core import db, keys, tokens
from tests.conftest import (
    ADMIN,
    ADMIN_KEY,
    INBOX_SECRET,
    api_client,
    make_settings,
    query,
    unique,
)

METRICS_TOKEN = "metrics-token-0123456789abcdef"


@pytest.fixture
async def own_api(fresh_database_url: str) -> AsyncIterator[tuple[httpx.AsyncClient, db.Pool]]:
    pool = db.create_pool(fresh_database_url, max_size=4)
    await pool.open(wait=True)
    settings = make_settings(fresh_database_url, POSTBELL_METRICS_TOKEN=METRICS_TOKEN)
    try:
        async with api_client(create_app(settings, pool=pool)) as client:
            yield client, pool
    finally:
        await pool.close()


async def _stored(pool: db.Pool, role: keys.Role) -> tuple[int, str]:
    async with pool.connection() as conn:
        return await keys.create_key(conn, role, unique("k"))


async def test_the_bootstrap_key_is_an_admin_and_a_send_key_only_sends(
    own_api: tuple[httpx.AsyncClient, db.Pool],
) -> None:
    api, pool = own_api
    _, send_key = await _stored(pool, "send")
    _, admin_key = await _stored(pool, "admin")
    category = {"name": "Events", "default_channels": ["IN_APP"]}
    for headers, expected in (
        (ADMIN, 200),
        ({"Authorization": f"Bearer {admin_key}"}, 200),
        ({"Authorization": f"Bearer {send_key}"}, 403),
    ):
        answer = await api.put(f"/api/categories/{unique('c')}", headers=headers, json=category)
        assert answer.status_code == expected, answer.text
    sent = await api.post(
        "/api/notifications",
        headers={"Authorization": f"Bearer {send_key}"},
        json={"to": ["someone"], "message": "hi"},
    )
    assert sent.status_code == 202, sent.text


async def test_the_key_cache_answers_for_its_ttl_and_a_revoked_key_then_stops(
    fresh_database_url: str,
) -> None:
    """Within the time to live a known key answers from the cache (even once revoked);
    after it, the database says the key is revoked."""
    pool = db.create_pool(fresh_database_url, max_size=2)
    await pool.open(wait=True)
    try:
        key_id, key = await _stored(pool, "send")
        store = KeyStore(pool, ADMIN_KEY, ttl=0.5)
        first = await store.lookup(key)
        assert first == KeyPrincipal(role="send", key_id=key_id)
        async with pool.connection() as conn:
            await db.execute(conn, "api_keys_revoke", {"id": key_id})
        assert await store.lookup(key) == first  # the cache, within its ttl
        assert await store.lookup(key, ask_database=False) == first
        await asyncio.sleep(0.6)
        assert await store.lookup(key) is None
        assert await store.lookup(ADMIN_KEY) == KeyPrincipal(role="admin", key_id=None)
    finally:
        await pool.close()


async def test_over_its_failure_limit_a_caller_learns_only_of_keys_already_known(
    fresh_database_url: str,
) -> None:
    pool = db.create_pool(fresh_database_url, max_size=2)
    await pool.open(wait=True)
    try:
        key_id, key = await _stored(pool, "admin")
        _, unseen = await _stored(pool, "send")
        store = KeyStore(pool, ADMIN_KEY)
        assert await store.lookup(unseen, ask_database=False) is None
        assert await store.lookup(key) == KeyPrincipal(role="admin", key_id=key_id)
        assert await store.lookup(key, ask_database=False) == KeyPrincipal(
            role="admin", key_id=key_id
        )
        assert await store.lookup(ADMIN_KEY, ask_database=False) == KeyPrincipal(
            role="admin", key_id=None
        )
    finally:
        await pool.close()


async def test_last_used_at_is_written_at_most_once_a_minute_per_process(
    fresh_database_url: str,
) -> None:
    pool = db.create_pool(fresh_database_url, max_size=2)
    await pool.open(wait=True)
    try:
        key_id, key = await _stored(pool, "send")
        store = KeyStore(pool, None, ttl=0.0)
        await store.lookup(key)
        used = await query(pool, "SELECT last_used_at FROM api_keys WHERE id = %s", (key_id,))
        assert used[0]["last_used_at"] is not None
        await query(pool, "UPDATE api_keys SET last_used_at = NULL WHERE id = %s", (key_id,))
        await store.lookup(key)  # again, from the database (ttl 0), within the minute
        again = await query(pool, "SELECT last_used_at FROM api_keys WHERE id = %s", (key_id,))
        assert again[0]["last_used_at"] is None
    finally:
        await pool.close()


async def test_the_metrics_token_opens_metrics_and_nothing_else(
    own_api: tuple[httpx.AsyncClient, db.Pool],
) -> None:
    api, _ = own_api
    bearer = {"Authorization": f"Bearer {METRICS_TOKEN}"}
    assert (await api.get("/metrics", headers=bearer)).status_code == 200
    refused = await api.get("/api/notifications", headers=bearer)
    assert refused.status_code == 401, refused.text
    assert (await api.get("/metrics")).status_code == 401


MISSING = "missing credential: send 'Authorization: Bearer <key>'"
INVALID = (
    "invalid credential: neither an API key this server knows (revoked keys stop"
    " working) nor a recipient token (hex HMAC-SHA256, or <unix_exp>.<hex>)"
)


async def test_each_refusal_says_what_was_wrong(
    own_api: tuple[httpx.AsyncClient, db.Pool],
) -> None:
    """No credential, a credential of another scheme, an empty bearer, an unknown key,
    an API key in a stream's URL, a recipient token on a server endpoint: each gets
    its own status and words (what a client developer reads to fix the call)."""
    api, _ = own_api
    answers = {
        "none": await api.get("/api/categories"),
        "basic": await api.get("/api/categories", headers={"Authorization": "Basic YWRtaW4="}),
        "empty bearer": await api.get("/api/categories", headers={"Authorization": "Bearer  "}),
        "unknown key": await api.get(
            "/api/categories", headers={"Authorization": "Bearer pb_not-a-key"}
        ),
        "key in url": await api.get(f"/api/inbox/u-1/stream?token={ADMIN_KEY}"),
        "token on a server endpoint": await api.get(
            "/api/categories",
            headers={"Authorization": f"Bearer {tokens.recipient_token(INBOX_SECRET, 'u-1')}"},
        ),
    }
    seen = {name: (a.status_code, a.json()["detail"]) for name, a in answers.items()}
    assert seen == {
        "none": (401, MISSING),
        "basic": (401, MISSING),
        "empty bearer": (401, MISSING),
        "unknown key": (401, INVALID),
        "key in url": (
            401,
            "'token' in the URL must be a recipient token;"
            " send API keys as 'Authorization: Bearer <key>'",
        ),
        "token on a server endpoint": (
            403,
            "a recipient token opens only its own inbox and preferences",
        ),
    }


async def test_over_the_failure_limit_a_stored_key_not_seen_yet_is_not_looked_up(
    fresh_database_url: str,
) -> None:
    """A client that spent its failed-authentication allowance guessing is refused
    even a real key this process has not seen yet (no database lookup for a guesser),
    while the bootstrap key still works; the allowance is the client's: before it ran
    out, the same key would have been looked up and accepted."""
    pool = db.create_pool(fresh_database_url, max_size=2)
    await pool.open(wait=True)
    settings = make_settings(fresh_database_url, POSTBELL_RATE_LIMIT_AUTH_FAILURES="1/min")
    try:
        _, unseen = await _stored(pool, "admin")
        async with api_client(create_app(settings, pool=pool)) as api:
            statuses = [
                (
                    await api.get("/api/categories", headers={"Authorization": f"Bearer g-{n}"})
                ).status_code
                for n in range(12)
            ]
            assert statuses[0] == 401 and statuses[-1] == 429
            real = await api.get("/api/categories", headers={"Authorization": f"Bearer {unseen}"})
            assert real.status_code in (401, 429), real.text
            assert (await api.get("/api/categories", headers=ADMIN)).status_code == 200
        async with api_client(create_app(settings, pool=pool)) as fresh:  # a new process
            first = await fresh.get(
                "/api/categories", headers={"Authorization": f"Bearer {unseen}"}
            )
            assert first.status_code == 200, first.text
    finally:
        await pool.close()


async def test_the_failure_allowance_belongs_to_the_clients_address(
    fresh_database_url: str,
) -> None:
    """Failed authentications are counted per client address (its host, not its
    port): a guesser that spent its allowance is refused from a new connection of the
    same host too, while another host still gets the plain 401."""
    settings = make_settings(fresh_database_url, POSTBELL_RATE_LIMIT_AUTH_FAILURES="1/min")
    app = create_app(settings)

    def client_from(host: str, port: int) -> httpx.AsyncClient:
        transport = httpx.ASGITransport(app=app, client=(host, port))
        return httpx.AsyncClient(transport=transport, base_url="http://testserver")

    async def guess(client: httpx.AsyncClient) -> int:
        headers = {"Authorization": f"Bearer {unique('guess')}"}
        return (await client.get("/api/categories", headers=headers)).status_code

    async with (
        api_client(app),
        client_from("198.51.100.7", 40001) as first,
        client_from("198.51.100.7", 40002) as same_host,
        client_from("198.51.100.8", 40001) as other_host,
    ):
        statuses = [await guess(first) for _ in range(12)]
        assert statuses[0] == 401 and statuses[-1] == 429
        assert await guess(same_host) == 429
        assert await guess(other_host) == 401


async def test_a_send_key_on_an_admin_endpoint_is_told_it_needs_an_admin_key(
    own_api: tuple[httpx.AsyncClient, db.Pool],
) -> None:
    api, pool = own_api
    _, send_key = await _stored(pool, "send")
    answer = await api.get("/api/dead-letters", headers={"Authorization": f"Bearer {send_key}"})
    assert (answer.status_code, answer.json()["detail"]) == (
        403,
        "this endpoint needs an admin key",
    )


async def test_a_recipient_tokens_refusals_say_why(
    own_api: tuple[httpx.AsyncClient, db.Pool], fresh_database_url: str
) -> None:
    """Another recipient's inbox (403, naming the id asked for), an expired token (401),
    a server that signs no tokens (403): each says what to do."""
    api, _ = own_api
    token = tokens.recipient_token(INBOX_SECRET, "u-1")
    other = await api.get("/api/inbox/u-2", headers={"Authorization": f"Bearer {token}"})
    assert (other.status_code, other.json()["detail"]) == (
        403,
        "this token does not open 'u-2''s inbox: a recipient token is computed for one"
        " recipient id with POSTBELL_INBOX_SECRET (see docs/inbox.md)",
    )
    expired = tokens.recipient_token(INBOX_SECRET, "u-1", int(time.time()) - 60)
    late = await api.get("/api/inbox/u-1", headers={"Authorization": f"Bearer {expired}"})
    assert (late.status_code, late.json()["detail"]) == (
        401,
        "the recipient token has expired: issue a new one",
    )
    unsigned = make_settings(fresh_database_url, POSTBELL_INBOX_SECRET="")
    async with api_client(create_app(unsigned)) as off:
        answer = await off.get("/api/inbox/u-1", headers={"Authorization": f"Bearer {token}"})
    assert (answer.status_code, answer.json()["detail"]) == (
        403,
        "recipient tokens are off on this server: set POSTBELL_INBOX_SECRET to sign them",
    )


async def test_wrong_recipient_tokens_spend_the_failure_allowance(
    fresh_database_url: str,
) -> None:
    """A token that is not the recipient's counts as a failed authentication: one who
    tries tokens against an inbox meets the limit like one who guesses keys."""
    settings = make_settings(fresh_database_url, POSTBELL_RATE_LIMIT_AUTH_FAILURES="1/min")
    async with api_client(create_app(settings)) as api:
        statuses = []
        for n in range(12):
            token = tokens.recipient_token(INBOX_SECRET, f"someone-{n}")
            answer = await api.get("/api/inbox/u-1", headers={"Authorization": f"Bearer {token}"})
            statuses.append(answer.status_code)
        assert statuses[0] == 403 and 429 in statuses, statuses
