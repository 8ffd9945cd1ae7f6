"""Database access: connection settings, the pool and the named-query loader.

Every connection postbell opens sets ``search_path`` to ``postbell, public``:
procrastinate's SQL functions refer to their tables unqualified, and a connection
without the setting would silently look in ``public``.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Iterator, Mapping
from importlib import resources
from typing import Any

import psycopg
import psycopg_pool
from psycopg.abc import AdaptContext, Buffer
from psycopg.adapt import Loader
from psycopg.conninfo import conninfo_to_dict, make_conninfo
from psycopg.rows import DictRow, dict_row

SCHEMA = "postbell"
SEARCH_PATH_OPTION = f"-c search_path={SCHEMA},public"

Pool = psycopg_pool.AsyncConnectionPool[psycopg.AsyncConnection[DictRow]]
Conn = psycopg.AsyncConnection[DictRow]


def conninfo(database_url: str, *, application_name: str = "postbell") -> str:
    """The libpq connection string for ``database_url`` with postbell's session options."""
    params = conninfo_to_dict(database_url)
    options = str(params.get("options") or "")
    if "search_path" not in options:
        options = f"{options} {SEARCH_PATH_OPTION}".strip()
    params["options"] = options
    params.setdefault("application_name", application_name)
    params.setdefault("connect_timeout", 10)
    return make_conninfo("", **params)


def create_pool(
    database_url: str,
    *,
    max_size: int,
    min_size: int = 1,
    name: str = "postbell",
    timeout: float = 30.0,
) -> Pool:
    """An unopened async pool of autocommit connections returning dict rows.

    Multi-statement work opens ``conn.transaction()`` explicitly; single statements
    run in autocommit, saving the BEGIN/COMMIT round trips on hot paths.
    """
    return psycopg_pool.AsyncConnectionPool(
        conninfo(database_url, application_name=name),
        min_size=min(min_size, max_size),
        max_size=max_size,
        # autocommit is set in configure, not kwargs: procrastinate opens its LISTEN
        # connection with this pool's kwargs plus its own autocommit=True.
        kwargs={"row_factory": dict_row},
        configure=_configure,
        open=False,
        name=name,
        # No check on checkout: it costs a round trip per use. A connection that broke
        # (a database restart) fails its first query and the pool drops it; the API
        # answers 503 once and workers retry.
        # How long a caller waits for a connection: the API answers 503 after it.
        timeout=timeout,
        reconnect_timeout=3600,
    )


async def _configure(conn: Conn) -> None:
    await conn.set_autocommit(True)
    register_loaders(conn)


def register_loaders(conn: psycopg.AsyncConnection[Any]) -> None:
    """Values Postgres stores but Python's datetime cannot hold ('infinity', year 10000
    and later, BC dates) load as the nearest datetime Python has, so a stored row can
    always be read and reported (never a 500, never a job that fails on every run)."""
    oid = conn.adapters.types["timestamptz"].oid
    inner = conn.adapters.get_loader(oid, psycopg.pq.Format.TEXT)
    if inner is None or issubclass(inner, _ClampedTimestamptz):
        return

    class Clamped(_ClampedTimestamptz):
        wrapped = inner

    conn.adapters.register_loader(oid, Clamped)


class _ClampedTimestamptz(Loader):
    wrapped: Any

    def __init__(self, oid: int, context: AdaptContext | None = None) -> None:
        super().__init__(oid, context)
        self._inner = self.wrapped(oid, context)

    def load(self, data: Buffer) -> dt.datetime:
        try:
            return self._inner.load(data)  # type: ignore[no-any-return]
        except psycopg.DataError as exc:
            return _EARLIEST if "too small" in str(exc) else _LATEST


_EARLIEST = dt.datetime.min.replace(tzinfo=dt.UTC)
_LATEST = dt.datetime.max.replace(tzinfo=dt.UTC)


async def connect(database_url: str, *, name: str = "postbell") -> Conn:
    """One autocommit connection outside any pool (migrations, LISTEN, CLI)."""
    conn = await psycopg.AsyncConnection.connect(
        conninfo(database_url, application_name=name), autocommit=True, row_factory=dict_row
    )
    register_loaders(conn)
    return conn


_NAME_RE = re.compile(r"^--\s*name:\s*([a-z0-9_]+)\s*$", re.MULTILINE)


class Queries(Mapping[str, bytes]):
    """Named queries from ``sql/queries/*.sql``; each starts with ``-- name: <name>``.

    Values are bytes so that they pass psycopg's typed ``execute`` unchanged; every
    parameter is bound (``%(name)s``), never formatted into the text.
    """

    def __init__(self, texts: Mapping[str, str]) -> None:
        self._queries: dict[str, bytes] = {}
        for source, text in texts.items():
            for name, body in _split_named(text):
                if name in self._queries:
                    raise ValueError(f"query {name!r} is defined twice ({source})")
                self._queries[name] = body.encode()

    @classmethod
    def load(cls) -> Queries:
        folder = resources.files("postbell.sql") / "queries"
        texts = {
            entry.name: entry.read_text(encoding="utf-8")
            for entry in sorted(folder.iterdir(), key=lambda e: e.name)
            if entry.name.endswith(".sql")
        }
        return cls(texts)

    def __getitem__(self, name: str) -> bytes:
        return self._queries[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._queries)

    def __len__(self) -> int:
        return len(self._queries)


def _split_named(text: str) -> Iterator[tuple[str, str]]:
    matches = list(_NAME_RE.finditer(text))
    for index, match in enumerate(matches):
        end = matches[index + 1].start() if index + 1 < len(matches) else len(text)
        body = text[match.end() : end].strip().rstrip(";").strip()
        if not body:
            raise ValueError(f"query {match.group(1)!r} is empty")
        yield match.group(1), body


queries = Queries.load()


async def fetch_all(
    conn: Conn, name: str, params: Mapping[str, Any] | None = None
) -> list[DictRow]:
    cursor = await conn.execute(queries[name], params)
    return await cursor.fetchall()


async def fetch_one(
    conn: Conn, name: str, params: Mapping[str, Any] | None = None
) -> DictRow | None:
    cursor = await conn.execute(queries[name], params)
    return await cursor.fetchone()


async def execute(conn: Conn, name: str, params: Mapping[str, Any] | None = None) -> int:
    """Run a named statement; answer how many rows it touched."""
    cursor = await conn.execute(queries[name], params)
    return cursor.rowcount
