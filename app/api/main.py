"""The Litestar application: ``create_app(settings)``. Nothing happens at import time.

One Router per feature (its path, guards and tags declared once, in its routes.py);
handlers get the pool, settings, waker and inbox hub through dependency injection
(``deps.py``). The authentication middleware and guards read the same services
from ``app.state.services``.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from pathlib import Path

from litestar import Litestar, Router
from litestar.config.cors import CORSConfig
from litestar.datastructures import State
from litestar.middleware import DefineMiddleware
from litestar.openapi import OpenAPIConfig
from litestar.openapi.plugins import SwaggerRenderPlugin
from litestar.static_files import create_static_files_router

from postbell.app.api import errors
from postbell.app.api.auth import AuthMiddleware
from postbell.app.api.callbacks.routes import router as callbacks
from postbell.app.api.categories.routes import router as categories
from postbell.app.api.dashboard.routes import router as dashboard
from postbell.app.api.deliveries.routes import router as deliveries
from postbell.app.api.deps import Services
from postbell.app.api.experiments.routes import experiments, tracking
from postbell.app.api.inbox.routes import router as inbox
from postbell.app.api.metrics.http import HttpMetricsMiddleware
from postbell.app.api.metrics.routes import router as metrics
from postbell.app.api.notifications.routes import router as notifications
from postbell.app.api.openapi import document_errors
from postbell.app.api.ops.routes import dead_letters, health, index
from postbell.app.api.recipients.routes import preferences, recipients, unsubscribe
from postbell.app.api.replays.routes import notification_replays, replays
from postbell.app.api.templates.routes import router as templates
from postbell.app.api.topics.routes import router as topics
from postbell.app.api.workflows.routes import workflow_runs, workflows
from postbell.app.core import db
from postbell.app.core.settings import Settings

#: Vendored front-end assets (no CDN: the docs page works offline), served at /static.
STATIC = Path(__file__).parent / "static"
_SWAGGER = "/static/vendor/swagger-ui"

ROUTERS: list[Router] = [
    health,
    index,
    notifications,
    deliveries,
    recipients,
    preferences,
    unsubscribe,
    categories,
    templates,
    topics,
    inbox,
    dead_letters,
    replays,
    notification_replays,
    experiments,
    tracking,
    callbacks,
    metrics,
    workflows,
    workflow_runs,
    dashboard,
]
#: Paths open without a credential: probes, the API docs, provider callbacks (they
#: carry the provider's signature instead) and one-click unsubscribe (a signed token).
OPEN_PATHS = [
    "^/health",
    "^/ready",
    "^/schema",
    "^/static/",
    "^/r/",
    "^/o/",
    "^/api$",
    "^/api/callbacks/",
    "^/api/unsubscribe",
    # a browser sends the dashboard's session cookie, not a Bearer credential: its own
    # check (app/api/dashboard/routes.py) runs before every page
    "^/dashboard",
]
#: Large enough for 10,000 recipient ids or a bulk upsert, small enough to refuse abuse.
MAX_BODY_BYTES = 8 * 1024 * 1024


def create_app(settings: Settings, *, pool: db.Pool | None = None) -> Litestar:
    """The API. Opens its own pool on startup unless one is given (``postbell dev`` shares one)."""
    services = Services.build(settings, pool)

    @contextlib.asynccontextmanager
    async def lifespan(_: Litestar) -> AsyncIterator[None]:
        await services.start()
        try:
            yield
        finally:
            await services.stop()

    cors = None
    if settings.cors_origins:
        cors = CORSConfig(
            allow_origins=list(settings.cors_origins),
            allow_methods=["GET", "POST", "PUT", "OPTIONS"],
            allow_headers=["Authorization", "Content-Type", "Last-Event-ID"],
            allow_credentials=False,
        )
    app = Litestar(
        route_handlers=[*ROUTERS, create_static_files_router("/static", [STATIC])],
        dependencies=services.dependencies(),
        lifespan=[lifespan],
        middleware=[
            DefineMiddleware(HttpMetricsMiddleware, metrics=services.http_metrics),
            DefineMiddleware(AuthMiddleware, exclude=OPEN_PATHS),
        ],
        exception_handlers=errors.exception_handlers,
        openapi_config=OpenAPIConfig(
            title="postbell",
            version="0.1.0",
            description="Postgres-native notifications: inbox, email, push, SMS, webhooks.",
            path="/schema",
            render_plugins=[
                SwaggerRenderPlugin(
                    path=["/", "/swagger"],
                    js_url=f"{_SWAGGER}/swagger-ui-bundle.js",
                    css_url=f"{_SWAGGER}/swagger-ui.css",
                    standalone_preset_js_url=f"{_SWAGGER}/swagger-ui-standalone-preset.js",
                    favicon=f"<link rel='icon' href='{_SWAGGER}/favicon-32x32.png'>",
                )
            ],
        ),
        cors_config=cors,
        request_max_body_size=MAX_BODY_BYTES,
        state=State({"services": services}),
        logging_config=None,
        debug=False,
    )
    document_errors(app.openapi_schema, OPEN_PATHS)
    return app


def close_streams(app: Litestar) -> None:
    """Before a graceful stop: end the open inbox streams (browsers keep them open for
    ever; the ASGI server would wait on them). Their clients reconnect by themselves."""
    services: Services = app.state.services
    services.hub.close_streams()
