"""The benchmark's world: a fresh database, postbell's processes, local peers.

The database: the machine's Postgres on 127.0.0.1:5432 when it answers (or
POSTBELL_BENCH_ADMIN_URL), else the embedded one. Every process is a real one
(``postbell serve``, ``postbell worker``, the receiver, the SMTP sink, the load
generator), so each has its own event loop and the numbers include the real costs.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import psutil
import psycopg
from psycopg import sql

from postbell.app.core import db, embedded, migrations

ADMIN_KEY = "bench-admin-key-0123456789abcdef"
LOCAL_ADMIN_URL = "postgresql://root@127.0.0.1:5432/postgres"
POSTBELL = str(Path(sys.executable).parent / "postbell")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def admin_url() -> tuple[str, str]:
    """A URL that may create databases, and what it is ("local" or "embedded")."""
    explicit = os.environ.get("POSTBELL_BENCH_ADMIN_URL")
    if explicit:
        return explicit, "POSTBELL_BENCH_ADMIN_URL"
    try:
        with psycopg.connect(LOCAL_ADMIN_URL, connect_timeout=2):
            return LOCAL_ADMIN_URL, "PostgreSQL on 127.0.0.1:5432"
    except psycopg.Error:
        pass
    folder = Path(tempfile.mkdtemp(prefix="postbell-bench-pg-"))
    url = embedded.start(folder / "pg")
    return url.replace(f"/{embedded.DATABASE}?", "/postgres?"), "embedded PostgreSQL"


def url_for(admin: str, name: str) -> str:
    params = psycopg.conninfo.conninfo_to_dict(admin)
    params["dbname"] = name
    return psycopg.conninfo.make_conninfo("", **params)


@dataclasses.dataclass
class Database:
    admin: str
    name: str

    @property
    def url(self) -> str:
        return url_for(self.admin, self.name)

    @classmethod
    def create(cls, admin: str, prefix: str = "pbbench") -> Database:
        name = f"{prefix}_{uuid.uuid4().hex[:10]}"
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        return cls(admin, name)

    def migrate(self) -> None:
        asyncio.run(migrations.migrate(self.url))

    def drop(self) -> None:
        with psycopg.connect(self.admin, autocommit=True) as conn:
            conn.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(self.name))
            )

    def connect(self) -> psycopg.Connection[Any]:
        return psycopg.connect(db.conninfo(self.url), autocommit=True)

    def scalar(self, query: str, params: tuple[Any, ...] = ()) -> Any:
        with self.connect() as conn:
            row = conn.execute(query.encode(), params).fetchone()
        return row[0] if row else None

    def execute(self, query: str, params: tuple[Any, ...] = ()) -> None:
        with self.connect() as conn:
            conn.execute(query.encode(), params)


class Process:
    """A child process with its output in a file; stopped with SIGTERM on exit."""

    def __init__(self, args: list[str], environ: dict[str, str], name: str) -> None:
        self.name = name
        # open for the process's lifetime; closed in stop()
        self.log = tempfile.NamedTemporaryFile(  # noqa: SIM115
            prefix=f"bench-{name}-", suffix=".log", delete=False
        )
        self.popen = subprocess.Popen(args, env=environ, stdout=self.log, stderr=subprocess.STDOUT)
        self.ps = psutil.Process(self.popen.pid)
        self.peak_rss = 0

    def sample(self) -> None:
        with contextlib.suppress(psutil.Error):
            self.peak_rss = max(self.peak_rss, self.ps.memory_info().rss)

    def stop(self) -> None:
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait()
        self.log.close()

    def output(self) -> str:
        return Path(self.log.name).read_text(errors="replace")


def postbell_env(database_url: str, **extra: str) -> dict[str, str]:
    environ = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("POSTBELL_", "SMTP_", "DATABASE_URL"))
    }
    environ.update(
        DATABASE_URL=database_url,
        POSTBELL_ADMIN_KEY=ADMIN_KEY,
        POSTBELL_LOG_LEVEL="warning",
        POSTBELL_LOG_FORMAT="json",
        POSTBELL_WEBHOOK_ALLOW_PRIVATE="1",
    )
    environ.update(extra)
    return environ


def wait_http(url: str, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(url, timeout=1).status_code < 500:
                return
        time.sleep(0.05)
    raise RuntimeError(f"{url} did not come up")


@contextlib.contextmanager
def processes() -> Iterator[list[Process]]:
    started: list[Process] = []
    try:
        yield started
    finally:
        for process in reversed(started):
            process.stop()


def start_api(started: list[Process], database_url: str, **extra: str) -> str:
    port = free_port()
    environ = postbell_env(database_url, PORT=str(port), POSTBELL_HOST="127.0.0.1", **extra)
    started.append(Process([POSTBELL, "serve"], environ, "api"))
    base = f"http://127.0.0.1:{port}"
    wait_http(f"{base}/health")
    return base


def start_worker(started: list[Process], database_url: str, *args: str, **extra: str) -> Process:
    process = Process([POSTBELL, "worker", *args], postbell_env(database_url, **extra), "worker")
    started.append(process)
    return process


def start_receiver(started: list[Process], delay: float = 0.0) -> str:
    port = free_port()
    started.append(
        Process(
            [sys.executable, "-m", "bench.receiver", "--port", str(port), "--delay", str(delay)],
            dict(os.environ),
            "receiver",
        )
    )
    base = f"http://127.0.0.1:{port}"
    wait_http(f"{base}/stats")
    return base


def start_smtp_sink(started: list[Process]) -> tuple[int, str]:
    smtp_port, http_port = free_port(), free_port()
    args = [
        sys.executable,
        "-m",
        "bench.smtp_sink",
        "--smtp-port",
        str(smtp_port),
        "--http-port",
        str(http_port),
    ]
    started.append(Process(args, dict(os.environ), "smtp"))
    base = f"http://127.0.0.1:{http_port}"
    wait_http(f"{base}/stats")
    return smtp_port, base


def machine() -> dict[str, Any]:
    import platform

    return {
        "cpus": os.cpu_count(),
        "memory_gb": round(psutil.virtual_memory().total / 2**30, 1),
        "python": platform.python_version(),
        "platform": platform.platform(),
    }


SERVER_SETTINGS = ("autovacuum", "synchronous_commit", "shared_buffers", "max_connections", "fsync")


def server_settings(admin: str) -> dict[str, str]:
    """The Postgres settings a run's figures depend on, as the server reports them
    (``SHOW``: shared_buffers with its unit). This machine runs ``autovacuum = off``;
    users' servers do not, and nothing in postbell relies on either."""
    with psycopg.connect(admin, autocommit=True) as conn:
        out = {"server_version": str(conn.execute("SHOW server_version").fetchone()[0])}  # type: ignore[index]
        for name in SERVER_SETTINGS:
            row = conn.execute(sql.SQL("SHOW {}").format(sql.Identifier(name))).fetchone()
            out[name] = str(row[0]) if row else "?"
    return out
