"""HTTP for recipients: the recipient itself and its devices (API keys), its
preferences (also its own recipient token) and one-click unsubscribe (a signed link)."""

from __future__ import annotations

from litestar import Response, Router, delete, get, post, put
from litestar.params import JSONBody

from postbell.app.api.auth import recipient_guard, require_role
from postbell.app.api.deps import AppSettings, Pool
from postbell.app.api.recipients import devices, service
from postbell.app.api.recipients import preferences as preferences_service
from postbell.app.api.recipients import unsubscribe as unsubscribe_service
from postbell.app.api.recipients.schemas import BulkIn, BulkOut, RecipientIn, RecipientOut
from postbell.app.api.types import RecipientParam, TokenParam
from postbell.app.core.tokens import read_unsubscribe_token


@put("/{recipient:str}")
async def put_recipient(
    pool: Pool, settings: AppSettings, recipient: RecipientParam, data: JSONBody[RecipientIn]
) -> RecipientOut:
    """Create or update a recipient; fields left out keep their values."""
    return await service.put(pool, settings, recipient, data)


@get("/{recipient:str}")
async def get_recipient(pool: Pool, recipient: RecipientParam) -> RecipientOut:
    return await service.get(pool, recipient)


@delete("/{recipient:str}", status_code=204)
async def delete_recipient(pool: Pool, recipient: RecipientParam) -> None:
    """Delete a recipient with its deliveries and inbox."""
    await service.delete(pool, recipient)


@post("/{recipient:str}/devices", status_code=201)
async def add_device(
    pool: Pool, recipient: RecipientParam, data: JSONBody[devices.DeviceIn]
) -> devices.DeviceOut:
    """Register a push device (FCM token); an unknown recipient is created."""
    return await devices.register(pool, recipient, data)


@get("/{recipient:str}/devices")
async def list_devices(pool: Pool, recipient: RecipientParam) -> devices.DeviceList:
    """The recipient's devices, disabled ones included (with why)."""
    return await devices.list_devices(pool, recipient)


@delete("/{recipient:str}/devices/{token:str}", status_code=204)
async def remove_device(pool: Pool, recipient: RecipientParam, token: TokenParam) -> None:
    await devices.remove(pool, recipient, token)


@post("/bulk", status_code=200)
async def bulk_recipients(pool: Pool, settings: AppSettings, data: JSONBody[BulkIn]) -> BulkOut:
    """Create or update up to 10,000 recipients in one statement."""
    return await service.bulk(pool, settings, data)


@get("/")
async def get_preferences(
    pool: Pool, recipient: RecipientParam
) -> preferences_service.PreferencesOut:
    """The recipient's preferences (also with the recipient's own token)."""
    return await preferences_service.get(pool, recipient)


@put("/")
async def put_preferences(
    pool: Pool, recipient: RecipientParam, data: JSONBody[preferences_service.PreferencesIn]
) -> preferences_service.PreferencesOut:
    """Change what is named: channel switches, category switches, quiet hours (null clears)."""
    return await preferences_service.put(pool, recipient, data)


_UNSUBSCRIBE_PAGE = (
    '<!doctype html><html><head><meta charset="utf-8"><title>Unsubscribe</title></head><body>'
    '<form method="post"><p>Stop these emails?</p><button type="submit">Unsubscribe</button>'
    "</form></body></html>"
)


_INVALID_LINK_PAGE = (
    '<!doctype html><html><head><meta charset="utf-8"><title>Unsubscribe</title></head><body>'
    "<p>This unsubscribe link is not valid. Use the link in a recent email.</p></body></html>"
)


@get("/", media_type="text/html", include_in_schema=False)
async def unsubscribe_page(settings: AppSettings, token: TokenParam) -> Response[str]:
    """A page with one button: following the link alone unsubscribes nobody. A link that
    does not verify says so (403) instead of offering a button that would fail."""
    if read_unsubscribe_token(settings.inbox_secrets, token) is None:
        return Response(_INVALID_LINK_PAGE, status_code=403, media_type="text/html")
    return Response(_UNSUBSCRIBE_PAGE, media_type="text/html")


@post("/", status_code=200)
async def unsubscribe_now(pool: Pool, settings: AppSettings, token: TokenParam) -> dict[str, str]:
    """RFC 8058 one-click unsubscribe: opts the recipient out of the category's EMAIL."""
    _, category = await unsubscribe_service.unsubscribe(pool, settings.inbox_secrets, token)
    return {"status": "unsubscribed", "category": category}


recipients = Router(
    path="/api/recipients",
    guards=[require_role("send")],
    tags=["recipients"],
    route_handlers=[
        bulk_recipients,
        put_recipient,
        get_recipient,
        delete_recipient,
        add_device,
        list_devices,
        remove_device,
    ],
)
preferences = Router(
    path="/api/recipients/{recipient:str}/preferences",
    guards=[recipient_guard],
    tags=["preferences"],
    route_handlers=[get_preferences, put_preferences],
)
unsubscribe = Router(
    path="/api/unsubscribe",
    tags=["unsubscribe"],
    route_handlers=[unsubscribe_page, unsubscribe_now],
)
