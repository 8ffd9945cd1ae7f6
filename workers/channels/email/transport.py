"""What an email provider implements (``EmailTransport``), and the HTTP base that the
SendGrid and SES transports share."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any, Protocol

import aiohttp

from postbell.workers.channels.base import Outcome
from postbell.workers.channels.email.mime import OutgoingEmail
from postbell.workers.channels.http import classify_exception, classify_status, new_session


class EmailTransport(Protocol):
    async def send(self, messages: Sequence[OutgoingEmail]) -> list[Outcome]: ...

    async def close(self) -> None: ...


CONCURRENCY = 32


def address(name: str | None, address: str) -> dict[str, str]:
    return {"email": address, "name": name} if name else {"email": address}


class HttpApiTransport:
    """The shared machinery of email providers with an HTTP API."""

    what = "email API"

    def __init__(self, *, timeout: float) -> None:
        self.timeout = timeout
        self._session: aiohttp.ClientSession | None = None
        self._limit = asyncio.Semaphore(CONCURRENCY)

    @property
    def session(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            # Provider endpoints are configured by the operator, not by recipients:
            # no private-address guard here (emulators run on localhost).
            self._session = new_session(timeout=self.timeout, guard=None, per_host=CONCURRENCY)
        return self._session

    def request(self, message: OutgoingEmail) -> tuple[str, bytes, dict[str, str]]:
        raise NotImplementedError

    def provider_id(self, headers: Any, body: bytes) -> str | None:
        raise NotImplementedError

    def error_detail(self, headers: Any, body: bytes) -> str:
        return body.decode(errors="replace")[:300]

    def classify(self, status: int, headers: Any, body: bytes) -> Outcome:
        detail = self.error_detail(headers, body)
        if status in (401, 403):
            # Our API key or account, not the recipient: retried while an operator fixes it.
            return Outcome.retry(f"{self.what} refused our credentials (HTTP {status}): {detail}")
        return classify_status(status, headers, self.what, detail)

    async def send(self, messages: Sequence[OutgoingEmail]) -> list[Outcome]:
        return list(await asyncio.gather(*(self._send_one(m) for m in messages)))

    async def _send_one(self, message: OutgoingEmail) -> Outcome:
        url, body, headers = self.request(message)
        async with self._limit:
            try:
                async with self.session.post(
                    url, data=body, headers=headers, allow_redirects=False
                ) as response:
                    raw = await response.read()
                    if 200 <= response.status < 300:
                        return Outcome.sent(self.provider_id(response.headers, raw))
                    return self.classify(response.status, response.headers, raw)
            except Exception as exc:
                return classify_exception(exc, self.what)

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
