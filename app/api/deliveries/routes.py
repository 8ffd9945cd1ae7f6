"""HTTP for deliveries: one delivery and its timeline."""

from __future__ import annotations

from litestar import Router, get

from postbell.app.api.auth import require_role
from postbell.app.api.deliveries import service
from postbell.app.api.deliveries.schemas import DeliveryDetail
from postbell.app.api.deps import Pool
from postbell.app.api.types import IdParam


@get("/{delivery_id:int}")
async def get_delivery(pool: Pool, delivery_id: IdParam) -> DeliveryDetail:
    """The delivery and its ``events``: attempts, provider feedback, requeues, cancellation."""
    return await service.read(pool, delivery_id)


router = Router(
    path="/api/deliveries",
    guards=[require_role("send")],
    tags=["deliveries"],
    route_handlers=[get_delivery],
)
