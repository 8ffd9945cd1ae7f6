"""HTTP for categories: anyone sending may read them; only admins change them."""

from __future__ import annotations

from litestar import Router, get, put
from litestar.params import JSONBody

from postbell.app.api.auth import require_role
from postbell.app.api.categories import service
from postbell.app.api.deps import AppSettings, Pool
from postbell.app.api.types import KeyParam


@get("/")
async def list_categories(pool: Pool) -> service.CategoryList:
    return await service.list_all(pool)


@get("/{key:str}")
async def get_category(pool: Pool, key: KeyParam) -> service.CategoryOut:
    return await service.get(pool, key)


@put("/{key:str}", guards=[require_role("admin")])
async def put_category(
    pool: Pool, settings: AppSettings, key: KeyParam, data: JSONBody[service.CategoryIn]
) -> service.CategoryOut:
    """Create or replace a category: default channels, required, fallback, rate limits,
    and per-channel settings (Teams URL, Apprise URLs, SMS type, WhatsApp template).
    Apprise URLs are write-only: answers show each one's scheme only, and a PUT that
    leaves them out keeps the stored ones."""
    return await service.put(pool, settings, key, data)


router = Router(
    path="/api/categories",
    guards=[require_role("send")],
    tags=["categories"],
    route_handlers=[list_categories, get_category, put_category],
)
