"""A webhook receiver for benchmarks, in a process of its own.

POST on any path: counted, with the arrival time of each notification id
(``X-Postbell-Notification``). ``GET /stats`` answers the count; ``GET /arrivals``
the first arrival time per notification id; ``GET /order`` the notification id of
every request, in arrival order; ``POST /reset`` clears them. ``--delay`` makes every
answer wait that many seconds (a slow receiver; arrival is counted before the wait).
"""

from __future__ import annotations

import argparse
import asyncio
import time

from aiohttp import web


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--delay", type=float, default=0.0)
    args = parser.parse_args()
    state: dict[str, object] = {"count": 0, "arrivals": {}}
    order: list[str] = []

    async def hook(request: web.Request) -> web.Response:
        await request.read()
        state["count"] = int(state["count"]) + 1  # type: ignore[call-overload]
        nid = request.headers.get("X-Postbell-Notification")
        arrivals = state["arrivals"]
        assert isinstance(arrivals, dict)
        if nid and nid not in arrivals:
            arrivals[nid] = time.time()
        order.append(nid or "")
        if args.delay:
            await asyncio.sleep(args.delay)
        return web.Response(text="ok")

    async def stats(_: web.Request) -> web.Response:
        return web.json_response({"count": state["count"]})

    async def arrivals(_: web.Request) -> web.Response:
        return web.json_response(state["arrivals"])

    async def arrival_order(_: web.Request) -> web.Response:
        return web.json_response(order)

    async def reset(_: web.Request) -> web.Response:
        state["count"], state["arrivals"] = 0, {}
        order.clear()
        return web.json_response({"ok": True})

    app = web.Application()
    app.router.add_get("/stats", stats)
    app.router.add_get("/arrivals", arrivals)
    app.router.add_get("/order", arrival_order)
    app.router.add_post("/reset", reset)
    app.router.add_post("/{tail:.*}", hook)
    web.run_app(app, host="127.0.0.1", port=args.port, access_log=None, print=None)


if __name__ == "__main__":
    main()
