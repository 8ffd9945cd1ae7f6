"""The Litestar application: ``create_app(settings)``. Nothing happens at import time."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Any

from litestar import Litestar
from litestar.config.cors import CORSConfig
from litestar.datastructures import State
from litestar.middleware import DefineMiddleware
from litestar.openapi import OpenAPIConfig

from postbell.app.api.auth import AuthMiddleware, KeyStore
from postbell.app.api.callbacks import routes as callbacks
from postbell.app.api.categories import routes as categories
from postbell.app.api.inbox import routes as inbox
from postbell.app.api.inbox.live import InboxHub
from postbell.app.api.notifications import routes as notifications
from postbell.app.api.ops import health
from postbell.app.api.ops import routes as ops
from postbell.app.api.recipients import routes as recipients
from postbell.app.api.topics import routes as topics
from postbell.app.api.wakeups import Waker
from postbell.app.core import db, errors
from postbell.app.core.settings import Settings

#: Seconds a request waits for a database connection before it answers 503.
API_POOL_TIMEOUT = 5.0
#: Large enough for 10,000 recipient ids or a bulk upsert, small enough to refuse abuse.
MAX_BODY_BYTES = 8 * 1024 * 1024


def create_app(settings: Settings, *, pool: db.Pool | None = None) -> Litestar:
    """The API. Opens its own pool on startup unless one is given (``postbell dev`` shares one)."""

    @contextlib.asynccontextmanager
    async def lifespan(app: Litestar) -> AsyncIterator[None]:
        own = pool is None
        active = pool
        if active is None:
            assert settings.database_url, "DATABASE_URL is required"
            active = db.create_pool(
                settings.database_url,
                max_size=settings.db_pool_size,
                name="postbell-api",
                timeout=API_POOL_TIMEOUT,
            )
            await active.open(wait=False)
        app.state.pool = active
        app.state.key_store = KeyStore(active, settings.admin_key)
        assert settings.database_url
        app.state.inbox_hub = InboxHub(settings.database_url, active)
        await app.state.inbox_hub.start()
        app.state.waker = Waker(settings.database_url)
        await app.state.waker.start()
        try:
            yield
        finally:
            await app.state.waker.stop()
            await app.state.inbox_hub.stop()
            if own:
                await active.close()

    cors = None
    if settings.cors_origins:
        cors = CORSConfig(
            allow_origins=list(settings.cors_origins),
            allow_methods=["GET", "POST", "PUT", "OPTIONS"],
            allow_headers=["Authorization", "Content-Type", "Last-Event-ID"],
            allow_credentials=False,
        )

    route_handlers: list[Any] = [
        health.health,
        health.ready,
        notifications.send_notification,
        notifications.get_notification,
        notifications.cancel_notification,
        recipients.bulk_recipients,
        recipients.get_preferences,
        recipients.put_preferences,
        recipients.unsubscribe_page,
        recipients.unsubscribe,
        categories.list_categories,
        categories.get_category,
        categories.put_category,
        topics.subscribe,
        topics.unsubscribe,
        topics.list_subscribers,
        recipients.put_recipient,
        recipients.get_recipient,
        recipients.delete_recipient,
        recipients.add_device,
        recipients.list_devices,
        recipients.remove_device,
        inbox.get_inbox,
        inbox.stream,
        inbox.mark,
        ops.list_dead_letters,
        ops.retry_dead_letter,
        ops.retry_dead_letters,
        callbacks.sendgrid,
        callbacks.ses,
        callbacks.twilio,
    ]
    return Litestar(
        route_handlers=route_handlers,
        lifespan=[lifespan],
        middleware=[
            DefineMiddleware(
                AuthMiddleware,
                exclude=[
                    "^/health",
                    "^/ready",
                    "^/schema",
                    "^/api/callbacks/",
                    "^/api/unsubscribe",
                ],
            )
        ],
        exception_handlers=errors.exception_handlers,
        openapi_config=OpenAPIConfig(
            title="postbell",
            version="0.1.0",
            description="Postgres-native notifications: inbox, email, push, SMS, webhooks.",
            path="/schema",
        ),
        cors_config=cors,
        request_max_body_size=MAX_BODY_BYTES,
        state=State({"settings": settings}),
        logging_config=None,
        debug=False,
    )
