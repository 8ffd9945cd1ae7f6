"""Reading one delivery and its timeline. No HTTP here."""

from __future__ import annotations

import msgspec

from postbell.app.api.deliveries import repo
from postbell.app.api.deliveries.schemas import DeliveryDetail, DeliveryEvent
from postbell.app.core import db
from postbell.app.core.errors import NotFound


async def read(pool: db.Pool, delivery_id: int) -> DeliveryDetail:
    """The delivery with its ``events``, oldest first; ``NotFound`` when there is none."""
    async with pool.connection() as conn:
        row = await repo.get(conn, delivery_id)
        if row is None:
            raise NotFound(f"no delivery {delivery_id}")
        events = await repo.events(conn, delivery_id)
    return msgspec.convert(
        {**row, "events": [msgspec.convert(e, DeliveryEvent) for e in reversed(events)]},
        DeliveryDetail,
    )
