"""HTTP for provider callbacks. No API key: each request must carry its provider's
signature, else 403, and nothing is recorded. A repeated event answers 200
``{"status": "duplicate"}`` and changes nothing."""

from __future__ import annotations

from typing import Any

import msgspec
from litestar import Request, Router, post

from postbell.app.api.callbacks import service
from postbell.app.api.deps import AppSettings, Pool


class Processed(msgspec.Struct):
    status: str


@post("/sendgrid", status_code=200)
async def sendgrid(request: Request[Any, Any, Any], pool: Pool, settings: AppSettings) -> Processed:
    """SendGrid Event Webhook (signed: ECDSA; set SENDGRID_WEBHOOK_PUBLIC_KEY)."""
    applied = await service.sendgrid(pool, settings, request.headers, await request.body())
    return Processed(status=applied.status)


@post("/ses", status_code=200)
async def ses(request: Request[Any, Any, Any], pool: Pool, settings: AppSettings) -> Processed:
    """Amazon SES events through an SNS HTTPS subscription (SNS-signed)."""
    outcome = await service.ses(pool, settings, await request.body())
    return Processed(status=outcome)


@post("/twilio", status_code=200)
async def twilio(request: Request[Any, Any, Any], pool: Pool, settings: AppSettings) -> Processed:
    """Twilio message status callback (X-Twilio-Signature over the URL and the form)."""
    applied = await service.twilio(
        pool,
        settings,
        request.scope.get("query_string", b""),
        await request.body(),
        request.headers.get("X-Twilio-Signature", ""),
    )
    return Processed(status=applied.status)


router = Router(path="/api/callbacks", tags=["callbacks"], route_handlers=[sendgrid, ses, twilio])
