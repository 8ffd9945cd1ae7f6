"""The API process's own HTTP metrics: requests by method, route and status, and their
durations. One registry per app (tests build several apps in one process)."""

from __future__ import annotations

import time
from typing import Any

from litestar.enums import ScopeType
from litestar.types import ASGIApp, Message, Receive, Scope, Send
from prometheus_client import CollectorRegistry, Counter, Histogram

#: Request durations, seconds: an API call is milliseconds; a stream is long-lived.
DURATION_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class HttpMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.requests = Counter(
            "postbell_http_requests",
            "HTTP requests answered by this API process",
            ("method", "route", "status"),
            registry=self.registry,
        )
        self.duration = Histogram(
            "postbell_http_request_duration_seconds",
            "Time from a request's arrival to the end of its answer, by route",
            ("method", "route"),
            buckets=DURATION_BUCKETS,
            registry=self.registry,
        )


class HttpMetricsMiddleware:
    """Counts every routed request (the route's template as label, never the raw
    path: ids would make a series per request)."""

    def __init__(self, app: ASGIApp, metrics: HttpMetrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != ScopeType.HTTP:
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500

        async def record(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, record)
        finally:
            route = str(_template(scope))
            method = str(scope.get("method", ""))
            self.metrics.requests.labels(method, route, str(status)).inc()
            self.metrics.duration.labels(method, route).observe(time.perf_counter() - started)


def _template(scope: Any) -> str:
    return scope.get("path_template") or "unrouted"
