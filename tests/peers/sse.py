"""A small server-sent-events client for tests, on httpx's streaming responses."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
from collections.abc import AsyncIterator
from typing import Any

import httpx


@dataclasses.dataclass
class Message:
    event: str
    data: str
    id: str | None

    def json(self) -> Any:
        return json.loads(self.data)


class SseClient:
    """Collects the events of one stream in the background."""

    def __init__(
        self, client: httpx.AsyncClient, url: str, headers: dict[str, str] | None = None
    ) -> None:
        self.client = client
        self.url = url
        self.headers = headers or {}
        self.messages: list[Message] = []
        self.comments = 0
        self.status: int | None = None
        self._task: asyncio.Task[None] | None = None
        self._arrived = asyncio.Event()

    async def _run(self) -> None:
        async with self.client.stream(
            "GET", self.url, headers=self.headers, timeout=None
        ) as response:
            self.status = response.status_code
            self._arrived.set()
            if response.status_code != 200:
                return
            event, data, ident = "message", [], None
            async for line in response.aiter_lines():
                if line == "":
                    if data:
                        self.messages.append(Message(event, "\n".join(data), ident))
                        self._arrived.set()
                    event, data, ident = "message", [], None
                elif line.startswith(":"):
                    self.comments += 1
                elif line.startswith("event:"):
                    event = line[6:].strip()
                elif line.startswith("data:"):
                    data.append(line[5:].lstrip())
                elif line.startswith("id:"):
                    ident = line[3:].strip()

    async def __aenter__(self) -> SseClient:
        self._task = asyncio.create_task(self._run())
        await asyncio.wait_for(self._arrived.wait(), timeout=10)
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, httpx.HTTPError):
                await self._task

    def of(self, event: str) -> list[Message]:
        return [m for m in self.messages if m.event == event]

    async def wait_for(self, event: str, count: int = 1, timeout: float = 15.0) -> list[Message]:
        async def enough() -> None:
            while len(self.of(event)) < count:
                self._arrived.clear()
                await self._arrived.wait()

        await asyncio.wait_for(enough(), timeout=timeout)
        return self.of(event)


@contextlib.asynccontextmanager
async def sse(
    client: httpx.AsyncClient, url: str, headers: dict[str, str] | None = None
) -> AsyncIterator[SseClient]:
    async with SseClient(client, url, headers) as stream:
        yield stream
