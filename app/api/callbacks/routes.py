"""HTTP for provider callbacks. No API key: each request must carry its provider's
signature, else 403, and nothing is recorded."""

from __future__ import annotations

from typing import Any

import msgspec
from litestar import Request, post

from postbell.app.api.callbacks import service


class Processed(msgspec.Struct):
    status: str


@post("/api/callbacks/sendgrid", tags=["callbacks"], status_code=200)
async def sendgrid(request: Request[Any, Any, Any]) -> Processed:
    """SendGrid Event Webhook (signed: ECDSA; set SENDGRID_WEBHOOK_PUBLIC_KEY)."""
    body = await request.body()
    await service.sendgrid(
        request.app.state.pool, request.app.state.settings, request.headers, body
    )
    return Processed(status="processed")


@post("/api/callbacks/ses", tags=["callbacks"], status_code=200)
async def ses(request: Request[Any, Any, Any]) -> Processed:
    """Amazon SES events through an SNS HTTPS subscription (SNS-signed)."""
    outcome = await service.ses(
        request.app.state.pool, request.app.state.settings, await request.body()
    )
    return Processed(status=outcome)


@post("/api/callbacks/twilio", tags=["callbacks"], status_code=200)
async def twilio(request: Request[Any, Any, Any]) -> Processed:
    """Twilio message status callback (X-Twilio-Signature)."""
    form = await request.form()
    params = {k: str(v) for k, v in form.items()}
    signature = request.headers.get("X-Twilio-Signature", "")
    await service.twilio(
        request.app.state.pool,
        request.app.state.settings,
        request.scope.get("query_string", b"").decode(),
        params,
        signature,
    )
    return Processed(status="processed")
