"""The procrastinate App. Its connector gets the process's shared pool when the worker
(or ``postbell dev``) opens it; nothing connects at import time. Queues: "route",
plus one per channel (``postbell.app.core.channels``)."""

from __future__ import annotations

from procrastinate import App, PsycopgConnector

app = App(connector=PsycopgConnector(), import_paths=["postbell.workers.tasks"])
