"""An SMTP server for benchmarks, in a process of its own: accepts and counts.

It speaks plain SMTP on --smtp-port (a relay on the same host) and answers
``GET /stats`` on --http-port with the count of accepted messages.
"""

from __future__ import annotations

import argparse
import asyncio

from aiohttp import web
from aiosmtpd.controller import Controller


class Counter:
    def __init__(self) -> None:
        self.count = 0

    async def handle_DATA(self, server: object, session: object, envelope: object) -> str:
        self.count += 1
        return "250 OK"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--smtp-port", type=int, required=True)
    parser.add_argument("--http-port", type=int, required=True)
    args = parser.parse_args()
    handler = Counter()
    controller = Controller(handler, hostname="127.0.0.1", port=args.smtp_port)
    controller.start()

    async def stats(_: web.Request) -> web.Response:
        return web.json_response({"count": handler.count})

    async def reset(_: web.Request) -> web.Response:
        handler.count = 0
        return web.json_response({"ok": True})

    app = web.Application()
    app.router.add_get("/stats", stats)
    app.router.add_post("/reset", reset)
    try:
        web.run_app(app, host="127.0.0.1", port=args.http_port, access_log=None, print=None)
    finally:
        controller.stop()
        asyncio.set_event_loop(asyncio.new_event_loop())


if __name__ == "__main__":
    main()
