"""HTTP for recipients."""

from __future__ import annotations

from typing import Any

from litestar import Request, delete, get, post, put
from litestar.params import FromPath, FromQuery, JSONBody

from postbell.app.api.auth import recipient_guard, require_role
from postbell.app.api.recipients import devices, preferences, service
from postbell.app.api.recipients import unsubscribe as unsubscribe_service
from postbell.app.api.recipients.schemas import BulkIn, BulkOut, RecipientIn, RecipientOut

_SEND = [require_role("send")]


@put("/api/recipients/{recipient:str}", guards=_SEND, tags=["recipients"])
async def put_recipient(
    request: Request[Any, Any, Any], recipient: FromPath[str], data: JSONBody[RecipientIn]
) -> RecipientOut:
    """Create or update a recipient; fields left out keep their values."""
    return await service.put(request.app.state.pool, request.app.state.settings, recipient, data)


@get("/api/recipients/{recipient:str}", guards=_SEND, tags=["recipients"])
async def get_recipient(request: Request[Any, Any, Any], recipient: FromPath[str]) -> RecipientOut:
    return await service.get(request.app.state.pool, recipient)


@delete("/api/recipients/{recipient:str}", guards=_SEND, tags=["recipients"], status_code=204)
async def delete_recipient(request: Request[Any, Any, Any], recipient: FromPath[str]) -> None:
    """Delete a recipient with its deliveries and inbox."""
    await service.delete(request.app.state.pool, recipient)


@post("/api/recipients/{recipient:str}/devices", guards=_SEND, tags=["recipients"], status_code=201)
async def add_device(
    request: Request[Any, Any, Any], recipient: FromPath[str], data: JSONBody[devices.DeviceIn]
) -> devices.DeviceOut:
    """Register a push device (FCM token); an unknown recipient is created."""
    return await devices.register(request.app.state.pool, recipient, data)


@get("/api/recipients/{recipient:str}/devices", guards=_SEND, tags=["recipients"])
async def list_devices(
    request: Request[Any, Any, Any], recipient: FromPath[str]
) -> devices.DeviceList:
    """The recipient's devices, disabled ones included (with why)."""
    return await devices.list_devices(request.app.state.pool, recipient)


@delete(
    "/api/recipients/{recipient:str}/devices/{token:str}",
    guards=_SEND,
    tags=["recipients"],
    status_code=204,
)
async def remove_device(
    request: Request[Any, Any, Any], recipient: FromPath[str], token: FromPath[str]
) -> None:
    await devices.remove(request.app.state.pool, recipient, token)


@post("/api/recipients/bulk", guards=_SEND, tags=["recipients"], status_code=200)
async def bulk_recipients(request: Request[Any, Any, Any], data: JSONBody[BulkIn]) -> BulkOut:
    """Create or update up to 10,000 recipients in one statement."""
    return await service.bulk(request.app.state.pool, request.app.state.settings, data)


@get("/api/recipients/{recipient:str}/preferences", guards=[recipient_guard], tags=["preferences"])
async def get_preferences(
    request: Request[Any, Any, Any], recipient: FromPath[str]
) -> preferences.PreferencesOut:
    """The recipient's preferences (also with the recipient's own token)."""
    return await preferences.get(request.app.state.pool, recipient)


@put("/api/recipients/{recipient:str}/preferences", guards=[recipient_guard], tags=["preferences"])
async def put_preferences(
    request: Request[Any, Any, Any],
    recipient: FromPath[str],
    data: JSONBody[preferences.PreferencesIn],
) -> preferences.PreferencesOut:
    """Change what is named: channel switches, category switches, quiet hours (null clears)."""
    return await preferences.put(request.app.state.pool, recipient, data)


_UNSUBSCRIBE_PAGE = (
    '<!doctype html><html><head><meta charset="utf-8"><title>Unsubscribe</title></head><body>'
    '<form method="post"><p>Stop these emails?</p><button type="submit">Unsubscribe</button>'
    "</form></body></html>"
)


@get("/api/unsubscribe", tags=["unsubscribe"], media_type="text/html", include_in_schema=False)
async def unsubscribe_page(token: FromQuery[str]) -> str:
    """A page with one button: following the link alone unsubscribes nobody."""
    return _UNSUBSCRIBE_PAGE


@post("/api/unsubscribe", tags=["unsubscribe"], status_code=200)
async def unsubscribe(request: Request[Any, Any, Any], token: FromQuery[str]) -> dict[str, str]:
    """RFC 8058 one-click unsubscribe: opts the recipient out of the category's EMAIL."""
    secrets = request.app.state.settings.inbox_secrets
    _, category = await unsubscribe_service.unsubscribe(request.app.state.pool, secrets, token)
    return {"status": "unsubscribed", "category": category}
