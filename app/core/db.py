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
from urllib.parse import urlsplit

import psycopg
import psycopg_pool
from psycopg.abc import AdaptContext, Buffer
from psycopg.adapt import Loader
from psycopg.conninfo import conninfo_to_dict, make_conninfo
from psycopg.rows import DictRow, dict_row

SCHEMA = "postbell"
SEARCH_PATH_OPTION = f"-c search_path={SCHEMA},public"

#: Seconds libpq may take to establish a connection, unless the URL says otherwise
#: (``?connect_timeout=``): the long-running processes wait this long per attempt.
CONNECT_TIMEOUT = 10
#: See ``create_pool``: seconds one reconnect attempt of a pool goes on retrying.
RECONNECT_TIMEOUT = 30.0

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
    params.setdefault("connect_timeout", CONNECT_TIMEOUT)
    return make_conninfo("", **params)


def with_connect_timeout(database_url: str, seconds: int) -> str:
    """``database_url`` (as a libpq connection string) with ``connect_timeout`` set to
    ``seconds``, unless it sets one itself. libpq counts at least 2."""
    params = conninfo_to_dict(database_url)
    params.setdefault("connect_timeout", seconds)
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
        # How long one attempt to (re)connect keeps retrying, with psycopg_pool's
        # doubling delay and no cap, before it gives up. The next request starts a
        # fresh attempt at once, so a short value bounds how late the pool notices a
        # database that came back (with 3600 it waited up to about half the outage).
        reconnect_timeout=RECONNECT_TIMEOUT,
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


_SERVER_AT_RE = re.compile(
    r'connection to server at "(?P<host>[^"]*)"(?: \([^)]*\))?, port (?P<port>\d+)'
    r" failed: (?P<why>.*)"
)
_SOCKET_RE = re.compile(r'connection to server on socket "(?P<path>[^"]*)" failed: (?P<why>.*)')
_RESOLVE_RE = re.compile(
    r"failed to resolve host '(?P<host>[^']*)': (?:\[Errno -?\d+\] )?(?P<why>.*)"
)
_SEVERITY_RE = re.compile(r"^(?:FATAL|ERROR|PANIC):\s+")
_POOL_TIMEOUT_RE = re.compile(r"after (\d+(?:\.\d+)?) sec")


def describe_error(exc: BaseException, database_url: str | None = None) -> str:
    """Why the database could not be used, in one line for a person: the CLI prints it
    after ``DATABASE_URL:``, the long-running processes log it once per attempt.

    ``cannot connect to 127.0.0.1:1 (connection refused)``, ``database "x" does not
    exist (server 127.0.0.1:5432)``, ``cannot resolve host db.internal (...)``. libpq's
    hints ("Is the server running ...?") are dropped. The password of
    ``database_url`` never appears, even where libpq quotes part of the URL.
    """
    error = _database_error(exc)
    params = _params(database_url)
    text = " ".join(_first_line(error).split())
    if isinstance(error, psycopg_pool.PoolTimeout):
        waited = _POOL_TIMEOUT_RE.search(text)
        within = f" within {float(waited.group(1)):g} s" if waited else ""
        text = f"no connection from the pool{within} (the database is unreachable or busy)"
    elif isinstance(error, psycopg.errors.ConnectionTimeout | TimeoutError):
        seconds = params.get("connect_timeout")
        within = f"no answer within {seconds} s" if seconds else "timed out"
        text = f"cannot connect to {_where(params)} ({within})"
    elif match := _SERVER_AT_RE.search(text):
        host, port, why = match["host"], match["port"], match["why"]
        where = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        if _SEVERITY_RE.match(why):  # the server answered, and said no
            text = f"{_SEVERITY_RE.sub('', why)} (server {where})"
        else:
            text = f"cannot connect to {where} ({_lower_first(why)})"
    elif match := _SOCKET_RE.search(text):
        text = f"cannot connect to socket {match['path']} ({_lower_first(match['why'])})"
    elif match := _RESOLVE_RE.search(text):
        text = f"cannot resolve host {match['host']} ({_lower_first(match['why'])})"
    elif isinstance(error, psycopg.Error):
        text = _SEVERITY_RE.sub("", text) or type(error).__name__
    else:  # not the database's: say what it is
        text = f"{type(error).__name__}: {text}" if text else type(error).__name__
    password = params.get("password") or _url_password(database_url)
    if password:
        text = text.replace(str(password), "***")
    return text


def _database_error(exc: BaseException) -> BaseException:
    """The psycopg error behind ``exc`` (procrastinate wraps them), else ``exc``."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        if isinstance(current, psycopg.Error):
            return current
        seen.add(id(current))
        current = current.__cause__ or current.__context__
    return exc


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    for prefix in ("connection failed: ", "connection is bad: "):
        text = text.removeprefix(prefix)
    return text.splitlines()[0] if text else ""


def _lower_first(text: str) -> str:
    text = text.strip().rstrip(".")
    if len(text) > 1 and text[0].isupper() and text[1].islower():
        return text[0].lower() + text[1:]
    return text


def _params(database_url: str | None) -> dict[str, Any]:
    if not database_url:
        return {}
    try:
        return conninfo_to_dict(database_url)
    except psycopg.Error:
        return {}


def _url_password(database_url: str | None) -> str | None:
    if not database_url or "://" not in database_url:
        return None
    try:
        return urlsplit(database_url).password
    except ValueError:
        return None


def _where(params: Mapping[str, Any]) -> str:
    host = str(params.get("host") or params.get("hostaddr") or "localhost")
    port = str(params.get("port") or 5432)
    if host.startswith("/"):
        return f"socket {host}"
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


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
    conn: Conn, name: str, params: Mapping[str, Any] | None = None, *, prepare: bool | None = None
) -> list[DictRow]:
    """``prepare=False``: never a server-side prepared statement, so a query whose
    filters are optional is planned for the values of each call (a generic plan
    cannot use the index that only one filter makes usable)."""
    cursor = await conn.execute(queries[name], params, prepare=prepare)
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
