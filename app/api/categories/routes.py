"""HTTP for categories: anyone sending may read them; only admins change them."""

from __future__ import annotations

from typing import Any

from litestar import Request, get, put
from litestar.params import FromPath, JSONBody

from postbell.app.api.auth import require_role
from postbell.app.api.categories import service


@get("/api/categories", guards=[require_role("send")], tags=["categories"])
async def list_categories(request: Request[Any, Any, Any]) -> service.CategoryList:
    return await service.list_all(request.app.state.pool)


@get("/api/categories/{key:str}", guards=[require_role("send")], tags=["categories"])
async def get_category(request: Request[Any, Any, Any], key: FromPath[str]) -> service.CategoryOut:
    return await service.get(request.app.state.pool, key)


@put("/api/categories/{key:str}", guards=[require_role("admin")], tags=["categories"])
async def put_category(
    request: Request[Any, Any, Any], key: FromPath[str], data: JSONBody[service.CategoryIn]
) -> service.CategoryOut:
    """Create or replace a category: default channels, required, fallback, rate limits."""
    return await service.put(request.app.state.pool, key, data)
