"""Base for local HTTP peers: an aiohttp server in a thread of its own.

Each peer runs its own event loop in a background thread, so it serves the test's
event loop, synchronous tests and postbell subprocesses alike, and a slow handler
never blocks the code under test. ``stop()`` then ``start()`` brings it back on the
same port (an outage). Subclasses add routes in ``routes()``.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import threading
from collections.abc import Callable
from typing import Any

from aiohttp import web

from tests.peers.net import free_port


@dataclasses.dataclass
class Recorded:
    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


class HttpPeer:
    def __init__(self) -> None:
        self.port = free_port()
        self.received: list[Recorded] = []
        self.lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._runner: web.AppRunner | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def routes(self, app: web.Application) -> None:
        raise NotImplementedError

    async def record(self, request: web.Request) -> Recorded:
        body = await request.read()
        entry = Recorded(
            method=request.method,
            path=request.path,
            query=dict(request.query),
            headers={k: v for k, v in request.headers.items()},
            body=body,
        )
        with self.lock:
            self.received.append(entry)
        return entry

    def start(self) -> HttpPeer:
        ready = threading.Event()
        failure: list[BaseException] = []

        def serve() -> None:
            loop = asyncio.new_event_loop()
            self._loop = loop
            try:
                app = web.Application(client_max_size=32 * 1024 * 1024)
                self.routes(app)
                runner = web.AppRunner(app, access_log=None)
                loop.run_until_complete(runner.setup())
                site = web.TCPSite(runner, "127.0.0.1", self.port, reuse_address=True)
                loop.run_until_complete(site.start())
                self._runner = runner
            except BaseException as exc:  # surface bind errors to start()
                failure.append(exc)
                ready.set()
                return
            ready.set()
            loop.run_forever()
            loop.run_until_complete(runner.cleanup())
            loop.close()

        self._thread = threading.Thread(
            target=serve, name=f"{type(self).__name__}:{self.port}", daemon=True
        )
        self._thread.start()
        ready.wait(10)
        if failure:
            raise failure[0]
        return self

    def stop(self) -> None:
        if self._loop is not None and self._thread is not None:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(10)
        self._loop = None
        self._thread = None

    def call(self, fn: Callable[[], Any]) -> Any:
        """Run ``fn`` under the peer's lock (for reading or scripting its state)."""
        with self.lock:
            return fn()

    def requests_to(self, path_prefix: str) -> list[Recorded]:
        with self.lock:
            return [r for r in self.received if r.path.startswith(path_prefix)]
