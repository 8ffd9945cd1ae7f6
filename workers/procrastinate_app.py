"""The procrastinate App. Its connector gets the process's shared pool when the worker
(or ``postbell dev``) opens it; nothing connects at import time. It imports nothing
from ``app/`` so the queue definition stands on its own."""

from __future__ import annotations

from procrastinate import App, PsycopgConnector

#: Queues: "route", plus one per channel named after it in lower case ("email",
#: "push", ...; see deliver_job() in sql/migrations/0002_core.sql).
ROUTE_QUEUE = "route"

app = App(connector=PsycopgConnector(), import_paths=["postbell.workers.tasks"])
