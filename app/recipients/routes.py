"""HTTP for recipients."""

from __future__ import annotations

from typing import Any

from litestar import Request, delete, get, put
from litestar.params import FromPath, JSONBody

from app.auth import require_role
from app.recipients import service
from app.recipients.schemas import RecipientIn, RecipientOut

_SEND = [require_role("send")]


@put("/api/recipients/{recipient:str}", guards=_SEND, tags=["recipients"])
async def put_recipient(
    request: Request[Any, Any, Any], recipient: FromPath[str], data: JSONBody[RecipientIn]
) -> RecipientOut:
    """Create or update a recipient; fields left out keep their values."""
    return await service.put(request.app.state.pool, recipient, data)


@get("/api/recipients/{recipient:str}", guards=_SEND, tags=["recipients"])
async def get_recipient(request: Request[Any, Any, Any], recipient: FromPath[str]) -> RecipientOut:
    return await service.get(request.app.state.pool, recipient)


@delete("/api/recipients/{recipient:str}", guards=_SEND, tags=["recipients"], status_code=204)
async def delete_recipient(request: Request[Any, Any, Any], recipient: FromPath[str]) -> None:
    """Delete a recipient with its deliveries and inbox."""
    await service.delete(request.app.state.pool, recipient)
