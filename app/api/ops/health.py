"""Liveness and readiness, open without a credential."""

from __future__ import annotations

from typing import Any

import msgspec
from litestar import Response, get

from postbell.app.api.deps import Pool
from postbell.app.api.errors import error_response
from postbell.app.core import migrations


class Health(msgspec.Struct):
    status: str


@get("/health")
async def health() -> Health:
    """The process is up."""
    return Health(status="ok")


@get("/ready")
async def ready(pool: Pool) -> Response[Any]:
    """The database answers and every migration is applied."""
    try:
        async with pool.connection(timeout=5) as conn:
            waiting = await migrations.pending(conn)
    except Exception as exc:
        return error_response(503, "not_ready", f"database unreachable ({type(exc).__name__})")
    if waiting:
        names = ", ".join(f"{m.version:04d}_{m.name}" for m in waiting)
        return error_response(
            503, "not_ready", f"migrations pending: {names}; run 'postbell migrate'"
        )
    return Response(Health(status="ready"))
