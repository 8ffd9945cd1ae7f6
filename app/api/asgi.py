"""ASGI entry point for servers that import an app factory (``postbell serve --workers N``)."""

from __future__ import annotations

from litestar import Litestar

from postbell.app.api.main import create_app
from postbell.app.core import logs
from postbell.app.core.settings import Settings


def create() -> Litestar:
    settings = Settings.from_env()
    logs.configure(fmt=settings.log_format, level=settings.log_level)
    return create_app(settings)
