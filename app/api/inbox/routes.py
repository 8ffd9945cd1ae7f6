"""HTTP for the in-app inbox. Open to API keys and to the recipient's own token."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Annotated

from litestar import Router, get, post
from litestar.params import FromPath, FromQuery, HeaderParameter, JSONBody, QueryParameter
from litestar.response import ServerSentEvent, ServerSentEventMessage

from postbell.app.api.auth import recipient_guard
from postbell.app.api.deps import Hub, Pool, RateLimits
from postbell.app.api.inbox import live, service
from postbell.app.api.inbox.schemas import InboxPage, MarkIn, MarkOut
from postbell.app.api.pagination import DEFAULT_LIMIT, MAX_LIMIT
from postbell.app.api.types import CursorParam, FilterParam, RecipientParam
from postbell.app.core.errors import NotFound, TooManyRequests
from postbell.app.core.validation import MAX_ID


@get("/")
async def get_inbox(
    pool: Pool,
    recipient: RecipientParam,
    cursor: CursorParam = None,
    limit: Annotated[int, QueryParameter(ge=1, le=MAX_LIMIT)] = DEFAULT_LIMIT,
    unread: FromQuery[bool] = False,
    archived: FromQuery[bool | None] = False,
    category: FilterParam = None,
) -> InboxPage:
    """The inbox, newest first, without archived items (``archived=true``: only those)."""
    return await service.list_items(
        pool,
        recipient,
        cursor=cursor,
        limit=limit,
        unread=unread,
        archived=archived,
        category=category,
    )


@get("/stream", media_type="text/event-stream")
async def stream(
    pool: Pool,
    hub: Hub,
    limits: RateLimits,
    recipient: RecipientParam,
    last_event_id: Annotated[str | None, HeaderParameter(name="Last-Event-ID")] = None,
) -> ServerSentEvent:
    """Server-sent events: ``notification`` (a new item), ``update`` (read, seen, archive
    changes), ``counts`` (unread/unseen), ``resync`` (refetch); comment heartbeats.
    EventSource cannot send headers: it may pass the recipient token as ``?token=``."""
    recipient_id = await service.ensure_recipient(pool, recipient)
    if hub.streams_of(recipient_id) >= limits.max_streams_per_recipient:
        raise TooManyRequests(
            f"{limits.max_streams_per_recipient} streams of this recipient are open already;"
            " close one (POSTBELL_MAX_STREAMS_PER_RECIPIENT)",
            retry_after=30,
        )
    resume = _event_id(last_event_id)

    async def messages() -> AsyncIterator[ServerSentEventMessage]:
        yield ServerSentEventMessage(data=None, comment="postbell inbox stream", retry=3000)
        async for event in live.stream(hub, pool, recipient_id, resume):
            if event is None:
                yield ServerSentEventMessage(comment="ping")
            else:
                yield ServerSentEventMessage(data=event.data, event=event.event, id=event.id)

    return ServerSentEvent(
        messages(), headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
    )


@post("/{action:str}", status_code=200)
async def mark(
    pool: Pool,
    recipient: RecipientParam,
    action: FromPath[str],
    data: JSONBody[MarkIn],
) -> MarkOut:
    """Mark items ``read``, ``unread``, ``seen``, ``archive`` or ``unarchive``.

    Body: ``{"ids": [...]}`` or ``{"all": true}``. Reading also marks seen."""
    if action not in service.ACTIONS:
        raise NotFound(f"no inbox action {action!r}; one of {', '.join(service.ACTIONS)}")
    return await service.mark(pool, recipient, action, data)


router = Router(
    path="/api/inbox/{recipient:str}",
    guards=[recipient_guard],
    tags=["inbox"],
    route_handlers=[get_inbox, stream, mark],
)


def _event_id(value: str | None) -> int | None:
    """A Last-Event-ID this stream handed out (a non-negative bigint), else None: a
    browser may send anything here, and anything else just means "from now"."""
    if value and value.isascii() and value.isdigit() and len(value) <= 19:
        number = int(value)
        return number if number <= MAX_ID else None
    return None
