"""HTTP for the in-app inbox. Open to API keys and to the recipient's own token."""

from __future__ import annotations

from typing import Annotated, Any

from litestar import Request, get, post
from litestar.params import Parameter

from app.auth import recipient_guard
from app.inbox import service
from app.inbox.schemas import InboxPage, MarkIn, MarkOut
from app.pagination import DEFAULT_LIMIT, MAX_LIMIT

_INBOX = [recipient_guard]


@get("/api/inbox/{recipient:str}", guards=_INBOX, tags=["inbox"])
async def get_inbox(
    request: Request[Any, Any, Any],
    recipient: str,
    cursor: str | None = None,
    limit: Annotated[int, Parameter(ge=1, le=MAX_LIMIT)] = DEFAULT_LIMIT,
    unread: bool = False,
    archived: bool | None = False,
    category: str | None = None,
) -> InboxPage:
    """The inbox, newest first. ``archived=true`` lists archived items only; leave it out for the rest."""
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
async def mark_read(request: Request[Any, Any, Any], recipient: str, data: MarkIn) -> MarkOut:
    """Mark items read (and seen): ``{"ids": [...]}`` or ``{"all": true}``."""
    return await service.mark_read(request.app.state.pool, recipient, data)
