"""ASGI entry point for servers that import an app factory (``postbell serve --workers N``)."""

from __future__ import annotations

from litestar import Litestar

from app import logs
from app.main import create_app
from app.settings import Settings


def create() -> Litestar:
    settings = Settings.from_env()
    logs.configure(fmt=settings.log_format, level=settings.log_level)
    return create_app(settings)
