"""A webhook receiver for benchmarks, in a process of its own.

POST on any path: counted, with the arrival time of each notification id
(``X-Postbell-Notification``). ``GET /stats`` answers the count; ``GET /arrivals``
the first arrival time per notification id; ``POST /reset`` clears both.
"""

from __future__ import annotations

import argparse
import time

from aiohttp import web


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    state: dict[str, object] = {"count": 0, "arrivals": {}}

    async def hook(request: web.Request) -> web.Response:
        await request.read()
        state["count"] = int(state["count"]) + 1  # type: ignore[call-overload]
        nid = request.headers.get("X-Postbell-Notification")
        arrivals = state["arrivals"]
        assert isinstance(arrivals, dict)
        if nid and nid not in arrivals:
            arrivals[nid] = time.time()
        return web.Response(text="ok")

    async def stats(_: web.Request) -> web.Response:
        return web.json_response({"count": state["count"]})

    async def arrivals(_: web.Request) -> web.Response:
        return web.json_response(state["arrivals"])

    async def reset(_: web.Request) -> web.Response:
        state["count"], state["arrivals"] = 0, {}
        return web.json_response({"ok": True})

    app = web.Application()
    app.router.add_get("/stats", stats)
    app.router.add_get("/arrivals", arrivals)
    app.router.add_post("/reset", reset)
    app.router.add_post("/{tail:.*}", hook)
    web.run_app(app, host="127.0.0.1", port=args.port, access_log=None, print=None)


if __name__ == "__main__":
    main()
