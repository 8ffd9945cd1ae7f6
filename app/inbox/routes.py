"""HTTP for the in-app inbox. Open to API keys and to the recipient's own token."""

from __future__ import annotations

from typing import Annotated, Any

from litestar import Request, get, post
from litestar.params import FromPath, FromQuery, JSONBody, QueryParameter

from app.auth import recipient_guard
from app.inbox import service
from app.inbox.schemas import InboxPage, MarkIn, MarkOut
from app.pagination import DEFAULT_LIMIT, MAX_LIMIT

_INBOX = [recipient_guard]


@get("/api/inbox/{recipient:str}", guards=_INBOX, tags=["inbox"])
async def get_inbox(
    request: Request[Any, Any, Any],
    recipient: FromPath[str],
    cursor: FromQuery[str | None] = None,
    limit: Annotated[int, QueryParameter(ge=1, le=MAX_LIMIT)] = DEFAULT_LIMIT,
    unread: FromQuery[bool] = False,
    archived: FromQuery[bool | None] = False,
    category: FromQuery[str | None] = None,
) -> InboxPage:
    """The inbox, newest first, without archived items (``archived=true``: only those)."""
    return await service.list_items(
        request.app.state.pool,
        recipient,
        cursor=cursor,
        limit=limit,
        unread=unread,
        archived=archived,
        category=category,
    )


@post("/api/inbox/{recipient:str}/read", guards=_INBOX, tags=["inbox"], status_code=200)
async def mark_read(
    request: Request[Any, Any, Any], recipient: FromPath[str], data: JSONBody[MarkIn]
) -> MarkOut:
    """Mark items read (and seen): ``{"ids": [...]}`` or ``{"all": true}``."""
    return await service.mark_read(request.app.state.pool, recipient, data)
