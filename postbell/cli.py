"""The ``postbell`` command: dev, serve, worker, migrate, send, keys, db."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import datetime as dt
import json
import os
import re
import secrets
import signal
import socket
import sys
from collections.abc import AsyncIterator, Callable, Coroutine, Iterator, Sequence
from pathlib import Path
from typing import Any, NoReturn

import psycopg

from postbell.app.core import db, embedded, logs, migrations, schema
from postbell.app.core import keys as api_keys
from postbell.app.core.channels import CHANNELS, QUEUES, parse_channel, unknown_channel
from postbell.app.core.errors import PostbellError
from postbell.app.core.settings import (
    MAX_WEB_WORKERS,
    MAX_WORKER_CONCURRENCY,
    ConfigError,
    Settings,
)
from postbell.app.core.validation import MAX_ID

PROG = "postbell"

#: connect_timeout of the one-shot commands, unless DATABASE_URL sets one: a wrong
#: host or a filtered port fails in seconds (libpq counts at least 2).
CLI_CONNECT_TIMEOUT = 5
#: Bound of the check that the database is there, name resolution included.
CLI_CHECK_SECONDS = 15.0


class UsageError(Exception):
    """A problem the user can fix; printed as one line, exit status 2."""


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        result: int = args.func(args)
        return result
    except (ConfigError, UsageError, embedded.EmbeddedPostgresError) as exc:
        print(f"{PROG}: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


class _Parser(argparse.ArgumentParser):
    """argparse, with its errors in one line (usage stays behind --help)."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: {message} (see '{self.prog} --help')\n")


def _integer(minimum: int, maximum: int, what: str = "a whole number") -> Callable[[str], int]:
    """An argparse type: an integer from ``minimum`` to ``maximum``."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not {what}") from None
        if not minimum <= value <= maximum:
            raise argparse.ArgumentTypeError(
                f"{what} from {minimum} to {maximum} is needed, got {text.strip()}"
            )
        return value

    return parse


def _number(minimum: float, maximum: float) -> Callable[[str], float]:
    """An argparse type: a finite number from ``minimum`` to ``maximum``."""

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
        if not minimum <= value <= maximum:  # also NaN
            raise argparse.ArgumentTypeError(
                f"a number from {minimum:g} to {maximum:g} is needed, got {text.strip()}"
            )
        return value

    return parse


#: Ids of deliveries and API keys: bigint columns, 1 to 2**63 - 1.
_id = _integer(1, MAX_ID, "an id")


# -- helpers -----------------------------------------------------------------------


def _settings(*, dev: bool = False) -> Settings:
    settings = Settings.from_env(dev=dev)
    logs.configure(fmt=settings.log_format, level=settings.log_level)
    return settings


def _pgdata(settings: Settings) -> Path:
    return settings.data_dir / "pg"


def _with_database(settings: Settings) -> Settings:
    """Settings whose database_url is set: DATABASE_URL, else a running embedded server."""
    if settings.database_url:
        return settings
    running = embedded.url(_pgdata(settings))
    if running:
        print(
            f"{PROG}: DATABASE_URL is not set; using the embedded database ({running})",
            file=sys.stderr,
        )
        return dataclasses.replace(settings, database_url=running)
    raise UsageError(
        "DATABASE_URL is not set (for a local database run 'postbell db start' or 'postbell dev')"
    )


def _one_shot(settings: Settings) -> Settings:
    """Settings for a command that runs once and exits: DATABASE_URL (or the embedded
    database), with a short connect_timeout unless the URL sets its own."""
    settings = _with_database(settings)
    assert settings.database_url
    url = db.with_connect_timeout(settings.database_url, CLI_CONNECT_TIMEOUT)
    return dataclasses.replace(settings, database_url=url)


@contextlib.asynccontextmanager
async def _database(settings: Settings, *, need_schema: bool = True) -> AsyncIterator[str]:
    """The database URL, once the database answers (and, with ``need_schema``, is
    migrated). Any way the database fails, now or later in the block, is one
    ``DATABASE_URL: ...`` line (a UsageError), never a traceback or a long wait."""
    url = settings.database_url
    assert url
    problem = await migrations.database_problem(
        url, need_schema=need_schema, within=CLI_CHECK_SECONDS
    )
    if problem:
        raise UsageError(f"DATABASE_URL: {problem}")
    try:
        yield url
    except psycopg.OperationalError as exc:  # lost on the way, or a pool's timeout
        raise UsageError(f"DATABASE_URL: {db.describe_error(exc, url)}") from None


async def _cli_pool(url: str) -> db.Pool:
    """A small pool for the services the CLI shares with the API (opened: the database
    was just checked, so a failure here is rare and says why)."""
    pool = db.create_pool(url, max_size=2, name="postbell-cli", timeout=CLI_CHECK_SECONDS)
    try:
        await pool.open(wait=True, timeout=CLI_CHECK_SECONDS)
    except psycopg.OperationalError:
        await pool.close()
        raise
    return pool


def _run(coro: Coroutine[Any, Any, int]) -> int:
    return asyncio.run(coro)


@contextlib.contextmanager
def _stop_on_signals(stop: asyncio.Event) -> Iterator[None]:
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        yield
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)


def _bind(settings: Settings) -> socket.socket:
    """The API's listening socket, bound before anything says it is running: a port in
    use is one line naming PORT, not a traceback after a banner."""
    family = socket.AF_INET6 if ":" in settings.host else socket.AF_INET
    # IPPROTO_TCP named, and TCP_NODELAY on the listener (accepted sockets inherit it):
    # asyncio sets TCP_NODELAY only on sockets whose proto says TCP, and without it a
    # response written in two parts waits for the client's delayed ACK, ~40 ms a request.
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    try:
        sock.bind((settings.host, settings.port))
    except OSError as exc:
        sock.close()
        raise UsageError(
            f"PORT={settings.port}: cannot listen on {settings.host}:{settings.port}"
            f" ({exc.strerror}); set PORT to a free port"
        ) from None
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock


def _uvicorn_server(app: Any, settings: Settings) -> Any:
    import uvicorn

    class Server(uvicorn.Server):
        # postbell owns the signal handlers (it stops the worker too).
        @contextlib.contextmanager
        def capture_signals(self) -> Iterator[None]:
            yield

    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        log_config=None,
        access_log=False,
        proxy_headers=True,
        lifespan="on",
    )
    return Server(config)


async def _serving(server: Any, sock: socket.socket) -> asyncio.Task[None]:
    """Start ``server`` on ``sock``; return once it accepts requests (its lifespan ran)."""
    web = asyncio.create_task(server.serve(sockets=[sock]))
    while not server.started:
        if web.done():
            web.result()  # the startup failed: raise its error
            raise UsageError("the API stopped during start-up")
        await asyncio.sleep(0.02)
    return web


# -- commands ------------------------------------------------------------------------


def cmd_dev(args: argparse.Namespace) -> int:
    settings = _settings(dev=True)
    embedded_db = not settings.database_url
    if embedded_db:
        url = embedded.start(_pgdata(settings))
        settings = dataclasses.replace(settings, database_url=url)
    assert settings.database_url
    os.environ.setdefault("DATABASE_URL", settings.database_url)
    base = f"http://{settings.host}:{settings.port}"
    settings = dataclasses.replace(
        settings,
        inbox_secrets=settings.inbox_secrets or (_dev_secret(settings.data_dir),),
        public_url=settings.public_url or base,
    )
    try:
        return _run(_dev(settings, embedded_db))
    finally:
        if embedded_db:
            print(
                f"\nThe embedded Postgres under {_pgdata(settings)} is still running (your data"
                " stays); stop it with: postbell db stop",
                file=sys.stderr,
            )


async def _dev(settings: Settings, embedded_db: bool) -> int:
    from postbell.app.api.main import close_streams, create_app
    from postbell.workers import runner

    assert settings.database_url
    once = dataclasses.replace(
        settings, database_url=db.with_connect_timeout(settings.database_url, CLI_CONNECT_TIMEOUT)
    )
    async with _database(once, need_schema=False) as url:
        await migrations.migrate(url)
    sock = _bind(settings)
    pool = db.create_pool(
        settings.database_url, max_size=settings.db_pool_size, name="postbell-dev"
    )
    await pool.open(wait=True)
    stop = asyncio.Event()
    try:
        key = settings.admin_key or await _register_dev_key(pool, _dev_admin_key(settings.data_dir))
        app = create_app(settings, pool=pool)
        server = _uvicorn_server(app, settings)
        with _stop_on_signals(stop):
            work = asyncio.create_task(runner.run(settings, stop, pool=pool))
            web = await _serving(server, sock)
            print(_banner(settings, key, embedded_db), flush=True)
            waiter = asyncio.create_task(stop.wait())
            await asyncio.wait({web, waiter}, return_when=asyncio.FIRST_COMPLETED)
            stop.set()
            close_streams(app)
            server.should_exit = True
            await asyncio.gather(web, work, return_exceptions=True)
    finally:
        sock.close()
        await pool.close()
    return 0


def _banner(settings: Settings, key: str, embedded_db: bool) -> str:
    base = f"http://{settings.host}:{settings.port}"
    where = f"embedded, {_pgdata(settings)}" if embedded_db else "DATABASE_URL"
    secret = settings.inbox_secrets[0]
    return "\n".join(
        [
            "",
            "postbell is running (API + worker in one process)",
            f"  API          {base}/api  (an index of the endpoints)",
            f"  API docs     {base}/schema  (OpenAPI JSON: {base}/schema/openapi.json)",
            f"  admin key    {key}",
            f"  inbox secret {secret}  (POSTBELL_INBOX_SECRET: signs recipient tokens)",
            f"  database     {where}",
            "",
            f"  export KEY={key}",
            f'  curl -X PUT {base}/api/recipients/user-1 -H "Authorization: Bearer $KEY" '
            '-d \'{"email": "ada@example.org", "name": "Ada"}\'',
            "",
            "  Ctrl-C stops the API and the worker.",
            "",
        ]
    )


def _dev_file(data_dir: Path, name: str, make: Callable[[], str]) -> str:
    """A value kept in ``data_dir/name`` across dev runs (never used in production)."""
    path = data_dir / name
    if path.exists():
        return path.read_text().strip()
    value = make()
    data_dir.mkdir(parents=True, exist_ok=True)
    path.write_text(value + "\n")
    path.chmod(0o600)
    return value


def _dev_admin_key(data_dir: Path) -> str:
    """A stable local admin key, kept in .data/dev-admin-key."""
    return _dev_file(data_dir, "dev-admin-key", api_keys.generate_key)


def _dev_secret(data_dir: Path) -> str:
    """A stable local POSTBELL_INBOX_SECRET, kept in .data/dev-inbox-secret, so recipient
    tokens computed as the docs say work in dev."""
    return _dev_file(data_dir, "dev-inbox-secret", lambda: secrets.token_hex(32))


async def _register_dev_key(pool: db.Pool, key: str) -> str:
    async with pool.connection() as conn:
        await api_keys.store_key(conn, key, "admin", "dev")
    return key


def cmd_serve(args: argparse.Namespace) -> int:
    import uvicorn

    settings = _with_database(_settings())
    assert settings.database_url
    workers = args.workers or settings.web_concurrency
    sock = _bind(settings)
    if workers > 1:
        sock.close()  # uvicorn binds again for its worker processes
        os.environ["DATABASE_URL"] = settings.database_url
        uvicorn.run(
            "postbell.app.api.asgi:create",
            factory=True,
            host=settings.host,
            port=settings.port,
            workers=workers,
            log_config=None,
            access_log=False,
            proxy_headers=True,
        )
        return 0
    from postbell.app.api.main import close_streams, create_app

    app = create_app(settings)
    server = _uvicorn_server(app, settings)

    async def serve() -> int:
        stop = asyncio.Event()
        with _stop_on_signals(stop):
            web = await _serving(server, sock)
            waiter = asyncio.create_task(stop.wait())
            await asyncio.wait({web, waiter}, return_when=asyncio.FIRST_COMPLETED)
            close_streams(app)
            server.should_exit = True
            await web
            waiter.cancel()
        return 0

    try:
        return _run(serve())
    finally:
        sock.close()


def cmd_worker(args: argparse.Namespace) -> int:
    from postbell.workers import runner

    queues = [q.strip().lower() for part in args.queues or [] for q in part.split(",") if q.strip()]
    unknown = [q for q in queues if q not in QUEUES]
    if unknown:
        raise UsageError(f"--queues: unknown queue {unknown[0]!r}; choose from {', '.join(QUEUES)}")
    settings = _with_database(_settings())

    async def work() -> int:
        stop = asyncio.Event()
        with _stop_on_signals(stop):
            if args.metrics_port is not None:
                from postbell.workers import metrics

                metrics.serve(args.metrics_port, args.metrics_host)
            await runner.run(settings, stop, queues=queues or None, concurrency=args.concurrency)
        return 0

    return _run(work())


def cmd_migrate(args: argparse.Namespace) -> int:
    return _run(_migrate(_one_shot(_settings())))


async def _migrate(settings: Settings) -> int:
    async with _database(settings, need_schema=False) as url:
        applied = await migrations.migrate(url)
    if applied:
        for m in applied:
            print(f"applied {m.version:04d}_{m.name}")
    else:
        print("database is up to date")
    return 0


#: Where NotificationIn's fields come from on the command line, for error messages.
_SEND_ARGUMENTS = {"to": "--to", "message": "MESSAGE", "title": "--title", "category": "--category"}


def cmd_send(args: argparse.Namespace) -> int:
    import msgspec

    from postbell.app.api.notifications import service
    from postbell.app.api.notifications.schemas import NotificationIn

    settings = _one_shot(_settings())
    recipients = [r.strip() for part in args.to for r in part.split(",") if r.strip()]
    channels = []
    for part in args.channel or []:
        for name in (c for c in part.split(",") if c.strip()):
            channel = parse_channel(name)  # any case: a person is typing
            if channel is None:
                raise UsageError(f"--channel: {unknown_channel(name.strip())}")
            channels.append(channel)
    try:
        payload = msgspec.convert(
            {
                "to": recipients,
                "message": args.message,
                "title": args.title,
                "channels": channels or None,
                "priority": args.priority,
                "category": args.category,
            },
            NotificationIn,
        )
        service.check(settings, payload, dt.datetime.now(dt.UTC))
    except msgspec.ValidationError as exc:
        raise UsageError(_send_argument_error(str(exc), None, recipients)) from None
    except PostbellError as exc:
        raise UsageError(_send_argument_error(exc.detail, exc.field, recipients)) from None

    async def send() -> int:
        async with _database(settings) as url:
            pool = await _cli_pool(url)
            try:
                accepted, _ = await service.accept(
                    pool, settings, payload, idempotency_scope="cli", idempotency_key=None
                )
            except PostbellError as exc:
                raise UsageError(_send_argument_error(exc.detail, exc.field, recipients)) from None
            finally:
                await pool.close()
        print(f"{accepted.id} {accepted.status}")
        return 0

    return _run(send())


def _send_argument_error(detail: str, field: str | None, recipients: list[str]) -> str:
    """An error of the rules ``send`` shares with the API, named after the argument at
    fault: msgspec says ``... - at `$.to[0]```, the service says ``to[0]: ...``."""
    if field is None and " - at `$." in detail:
        detail, _, path = detail.partition(" - at `$.")
        field = path.rstrip("`")
    if field is None:
        return detail
    from postbell.app.api.errors import explain

    detail = explain(detail, field)  # msgspec's wording in the caller's terms, as the API
    name, _, index = field.partition("[")
    argument = _SEND_ARGUMENTS.get(name)
    if argument is None:
        return detail
    detail = detail.removeprefix(f"{field}: ")
    if argument == "--to" and index.rstrip("]").isdigit():
        position = int(index.rstrip("]"))
        if position < len(recipients):
            detail = f"{recipients[position]!r}: {detail}"  # repr: control characters show
    return f"{argument}: {detail}"


def cmd_keys(args: argparse.Namespace) -> int:
    settings = _one_shot(_settings())

    async def keys() -> int:
        async with (
            _database(settings) as url,
            await db.connect(url, name="postbell-cli") as conn,
        ):
            if args.keys_command == "create":
                key_id, key = await api_keys.create_key(conn, args.role, args.name)
                print(key)
                print(
                    f"(key {key_id}, role {args.role}: shown once, stored hashed)", file=sys.stderr
                )
            elif args.keys_command == "list":
                for row in await db.fetch_all(conn, "api_keys_list"):
                    state = "revoked" if row["revoked_at"] else "active"
                    fields = (row["id"], f"{row['prefix']}…", row["role"], state, row["name"] or "")
                    print("\t".join(str(f) for f in fields))
            elif args.keys_command == "revoke":
                if not await db.execute(conn, "api_keys_revoke", {"id": args.id}):
                    raise UsageError(f"no active key with id {args.id}")
                print(f"revoked key {args.id}")
        return 0

    return _run(keys())


def _key_name(text: str) -> str:
    problem = api_keys.name_problem(text)
    if problem:
        raise argparse.ArgumentTypeError(problem)
    return text


def cmd_queues(args: argparse.Namespace) -> int:
    settings = _one_shot(_settings())

    async def show(url: str) -> None:
        async with await db.connect(url, name="postbell-cli") as conn:
            depth = await db.fetch_all(conn, "console_queue_depth")
            waiting = await db.fetch_all(conn, "console_waiting")
            totals = await db.fetch_one(conn, "console_totals")
        assert totals is not None
        if args.watch:
            print("\033[2J\033[H", end="")
        print("jobs (postbell.queue_depth)")
        _print_table(
            ["queue", "status", "jobs", "deliveries", "oldest", "scheduled later"],
            [
                [
                    r["queue"],
                    r["status"],
                    r["jobs"],
                    r["items"],
                    _age(r["oldest_age"]),
                    r["scheduled_later"],
                ]
                for r in depth
            ]
            or [["(empty)", "", "", "", "", ""]],
        )
        print("\nunsent deliveries")
        _print_table(
            ["channel", "status", "reason", "deliveries", "earliest due"],
            [
                [
                    r["channel"],
                    r["status"],
                    r["reason"] or "",
                    r["deliveries"],
                    _due(r["oldest_due"]),
                ]
                for r in waiting
            ]
            or [["(none)", "", "", "", ""]],
        )
        print(
            f"\nsent in the last minute: {totals['sent_last_minute']}"
            f"   live workers: {totals['live_workers']}"
            f"   dead letters: {totals['dead']}   stalled jobs: {totals['stalled']}"
        )

    async def run() -> int:
        async with _database(settings) as url:
            while True:
                await show(url)
                if not args.watch:
                    return 0
                await asyncio.sleep(args.interval)

    return _run(run())


def cmd_dead_letters(args: argparse.Namespace) -> int:
    from postbell.app.api.ops import dead_letters

    if args.retry and (args.channel or args.reason or args.older_than):
        raise UsageError(
            "--retry takes ids only; --channel, --reason and --older-than filter the list"
            " and --retry-all"
        )
    if args.retry and len(args.retry) > dead_letters.MAX_BULK:
        raise UsageError(f"--retry: at most {dead_letters.MAX_BULK} ids at once")
    settings = _one_shot(_settings())

    async def run() -> int:
        async with _database(settings) as url:
            pool = await _cli_pool(url)
            try:
                if args.retry:
                    # The API's rule (POST /api/dead-letters/{id}/retry): an id that is
                    # not dead is not found; with several, none is requeued.
                    retried = (await dead_letters.retry_exactly(pool, settings, args.retry)).retried
                elif args.retry_all:
                    retried = await dead_letters.requeue(
                        pool,
                        settings,
                        channel=args.channel,
                        reason=args.reason,
                        older_than=args.older_than,
                    )
                else:
                    page = await dead_letters.list_page(
                        pool,
                        channel=args.channel,
                        reason=args.reason,
                        older_than=args.older_than,
                        cursor=None,
                        limit=args.limit,
                    )
            except PostbellError as exc:
                raise UsageError(_dead_letters_error(exc)) from None
            finally:
                await pool.close()
        if args.retry or args.retry_all:
            print(f"requeued {retried} dead deliver{'y' if retried == 1 else 'ies'}")
            return 0
        _print_table(
            ["id", "channel", "recipient", "reason", "attempts", "died", "last error"],
            [
                [
                    d.id,
                    d.channel,
                    d.recipient,
                    d.reason or "",
                    d.attempts,
                    d.died_at.strftime("%Y-%m-%d %H:%M:%S"),
                    (d.last_error or "")[:60],
                ]
                for d in page.items
            ],
        )
        print(
            f"{page.total} dead in all"
            + (f", {len(page.items)} shown" if page.total > len(page.items) else "")
        )
        return 0

    return _run(run())


def _replay_time(option: str, value: str) -> str:
    """``--from``/``--to``: an RFC 3339 time, ``now``, or an age (``90m``, ``2h``,
    ``1d``: that long ago), as the RFC 3339 time the API takes."""
    from postbell.app.api.ops.dead_letters import parse_older_than

    if value.strip().lower() == "now":
        return dt.datetime.now(dt.UTC).isoformat()
    try:
        moment = parse_older_than(value)
    except PostbellError as exc:
        raise UsageError(f"{option}: " + exc.detail.replace("older_than", option)) from None
    assert moment is not None
    return moment.isoformat()


def cmd_replay(args: argparse.Namespace) -> int:
    import uuid

    import msgspec

    from postbell.app.api.replays import service
    from postbell.app.api.replays.schemas import NotificationReplayIn, ReplayIn

    channels = []
    for part in args.channel or []:
        for name in (c for c in part.split(",") if c.strip()):
            channel = parse_channel(name)
            if channel is None:
                raise UsageError(f"--channel: {unknown_channel(name.strip())}")
            channels.append(channel)
    statuses = [s.strip() for part in args.status or [] for s in part.split(",") if s.strip()]
    body: dict[str, Any] = {"dry_run": args.dry_run, "priority": args.priority}
    if statuses:
        body["statuses"] = statuses
    notification_id = None
    try:
        if args.notification:
            if args.start or args.end or args.recipient or args.category:
                raise UsageError(
                    "--notification replays that notification: no --from, --to, --recipient"
                    " or --category"
                )
            try:
                notification_id = uuid.UUID(args.notification)
            except ValueError:
                raise UsageError("--notification: not a notification id (a UUID)") from None
            payload: Any = msgspec.convert(
                {**body, "channels": channels or None}, NotificationReplayIn
            )
        else:
            if len(channels) != 1 or not args.start or not args.end:
                raise UsageError("name one --channel, --from and --to (or --notification ID)")
            payload = msgspec.convert(
                {
                    **body,
                    "channel": channels[0],
                    "from": _replay_time("--from", args.start),
                    "to": _replay_time("--to", args.end),
                    "recipient": args.recipient,
                    "category": args.category,
                },
                ReplayIn,
            )
    except msgspec.ValidationError as exc:
        raise UsageError(_replay_error(str(exc), None)) from None
    settings = _one_shot(_settings())

    async def run() -> int:
        async with _database(settings) as url:
            pool = await _cli_pool(url)
            try:
                if notification_id is not None:
                    accepted, created = await service.replay_notification(
                        pool,
                        settings,
                        notification_id,
                        payload,
                        idempotency_scope="cli",
                        idempotency_key=args.key,
                    )
                else:
                    accepted, created = await service.replay(
                        pool, settings, payload, idempotency_scope="cli", idempotency_key=args.key
                    )
            except PostbellError as exc:
                raise UsageError(_replay_error(exc.detail, exc.field)) from None
            finally:
                await pool.close()
        n = accepted.deliveries
        noun = f"deliver{'y' if n == 1 else 'ies'}"
        if accepted.dry_run:
            print(f"dry run: {n} {noun} would be sent again")
        elif created:
            print(f"replay {accepted.id}: {n} {noun} sent again")
        else:
            print(f"replay {accepted.id} (this --key's, already done): {n} {noun}; nothing more")
        return 0

    return _run(run())


_REPLAY_OPTIONS = {"from": "--from", "to": "--to", "statuses": "--status", "channel": "--channel"}


def _replay_error(detail: str, field: str | None) -> str:
    """A service or validation error as a CLI line naming the option."""
    if field is None and " - at `$." in detail:  # msgspec: "Invalid ... - at `$.statuses[0]`"
        detail, _, path = detail.partition(" - at `$.")
        field = path.rstrip("`")
    if field is None:
        return detail
    name = field.split("[")[0]
    option = _REPLAY_OPTIONS.get(name, "--" + name.replace("_", "-"))
    if name == "Idempotency-Key":
        option = "--key"
    return f"{option}: {detail}"


def _dead_letters_error(exc: PostbellError) -> str:
    """A service error as a CLI line: ``--older-than: ...`` where the API says
    ``older_than``; a not-found id as is (``no dead delivery 7``)."""
    field, detail = exc.field, exc.detail
    if field in ("channel", "reason", "older_than"):
        option = "--" + field.replace("_", "-")
        if detail.startswith(field + " "):
            return option + detail[len(field) :]
        return f"{option}: {detail}"
    return detail


def _age(value: Any) -> str:
    return "" if value is None else str(value)


def _due(overdue: dt.timedelta | None) -> str:
    """How long ago the earliest delivery fell due, or how soon it will (held ones)."""
    if overdue is None:
        return ""
    if overdue < dt.timedelta(0):
        return f"in {-overdue}"
    return f"{overdue} ago"


def _print_table(headers: list[str], rows: list[list[Any]]) -> None:
    # one line per row: an error text with line breaks would break the table
    cells = [headers, *[[" ".join(str(c).split()) for c in row] for row in rows]]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    for row in cells:
        print("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())


# -- templates ---------------------------------------------------------------------


def _template_files(folder: Path) -> dict[str, Any]:
    """Every ``KEY.json`` of ``folder``, decoded and validated (the key is the file's
    name). One line naming the file for the first that is not a valid template."""
    import msgspec

    from postbell.app.api.templates import service
    from postbell.app.api.templates.schemas import TemplateIn

    if not folder.is_dir():
        raise UsageError(f"{folder}: not a folder")
    found: dict[str, Any] = {}
    for path in sorted(folder.glob("*.json")):
        key = path.stem
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,99}", key):
            raise UsageError(
                f"{path}: the file name is the template's key: letters, digits, . _ : -"
            )
        try:
            payload = msgspec.json.decode(path.read_bytes(), type=TemplateIn)
            service.compile_checked(service.normalized(payload))
        except (msgspec.ValidationError, msgspec.DecodeError) as exc:
            raise UsageError(f"{path}: {exc}") from None
        except PostbellError as exc:
            raise UsageError(f"{path}: {exc.detail}") from None
        found[key] = payload
    if not found:
        raise UsageError(f"{folder}: no template files (KEY.json) in it")
    return found


def cmd_templates(args: argparse.Namespace) -> int:
    return {"push": _templates_push, "pull": _templates_pull, "preview": _templates_preview}[
        args.templates_command
    ](args)


def _templates_push(args: argparse.Namespace) -> int:
    from postbell.app.api.templates import service

    payloads = _template_files(Path(args.dir))  # all checked before any is saved
    settings = _one_shot(_settings())

    async def push() -> int:
        async with _database(settings) as url:
            pool = await _cli_pool(url)
            try:
                for key, payload in payloads.items():
                    try:
                        out, created = await service.put(pool, key, payload)
                    except PostbellError as exc:
                        raise UsageError(f"{key}: {exc.detail}") from None
                    print(f"{key} v{out.version} {'saved' if created else 'unchanged'}")
            finally:
                await pool.close()
        return 0

    return _run(push())


def _template_file_text(out: Any) -> str:
    import msgspec

    from postbell.app.core.templates import CONTENT_FIELDS

    data = msgspec.to_builtins(out)
    kept = {name: data[name] for name in CONTENT_FIELDS if data.get(name) is not None}
    return json.dumps(kept, indent=2, ensure_ascii=False) + "\n"


def _templates_pull(args: argparse.Namespace) -> int:
    from postbell.app.api.templates import service

    folder = Path(args.dir)
    settings = _one_shot(_settings())

    async def fetch() -> list[tuple[str, int, str]]:
        found: list[tuple[str, int, str]] = []
        async with _database(settings) as url:
            pool = await _cli_pool(url)
            try:
                cursor = None
                while True:
                    page = await service.list_all(pool, cursor=cursor, limit=500)
                    for item in page.items:
                        out = await service.get(pool, item.key)
                        found.append((item.key, out.version, _template_file_text(out)))
                    cursor = page.next_cursor
                    if cursor is None:
                        return found
            finally:
                await pool.close()

    for key, version, text in asyncio.run(fetch()):
        path = folder / f"{key}.json"
        if path.exists() and path.read_text() == text:
            print(f"{key} v{version} unchanged")
            continue
        folder.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        print(f"{key} v{version} written to {path}")
    return 0


def _templates_preview(args: argparse.Namespace) -> int:
    import msgspec

    from postbell.app.api.templates import service
    from postbell.app.api.templates.schemas import PreviewIn

    channel = parse_channel(args.channel)
    if channel is None:
        raise UsageError(f"--channel: {unknown_channel(args.channel)}")
    data = None
    if args.data:
        try:
            data = json.loads(Path(args.data).read_text())
        except (OSError, ValueError) as exc:
            raise UsageError(f"--data {args.data}: {exc}") from None
        if not isinstance(data, dict):
            raise UsageError(f"--data {args.data}: the file must hold a JSON object")
    try:
        payload = msgspec.convert(
            {"channel": channel, "locale": args.locale, "data": data, "recipient": args.recipient},
            PreviewIn,
        )
    except msgspec.ValidationError as exc:
        raise UsageError(str(exc)) from None

    def show(out: Any) -> int:
        print(f"template {out.key} v{out.version}, locale {out.locale}, {out.channel}")
        from postbell.app.core.templates import fields_of

        order = [f for f in fields_of(out.channel) if f in out.fields]
        fields = {name: out.fields[name] for name in order}
        if out.channel == "EMAIL" and not args.html:
            fields.pop("html", None)
        for name, value in fields.items():
            if "\n" in value:
                print(f"--- {name} ---\n{value}")
            else:
                print(f"{name}: {value}")
        return 0

    if args.from_dir:
        # A file, not the database: check a template before pushing it.
        payloads = _template_files(Path(args.from_dir))
        if args.key not in payloads:
            raise UsageError(f"{args.from_dir}: no {args.key}.json")
        if args.recipient:
            raise UsageError("--recipient needs the database: leave out --from")
        fields = service.normalized(payloads[args.key])
        row = {"key": args.key, "version": 0, **fields}
        try:
            return show(service.render_preview(row, payload, None))
        except PostbellError as exc:
            raise UsageError(exc.detail) from None

    settings = _one_shot(_settings())

    async def preview() -> int:
        async with _database(settings) as url:
            pool = await _cli_pool(url)
            try:
                out = await service.preview(pool, args.key, payload)
            except PostbellError as exc:
                raise UsageError(exc.detail) from None
            finally:
                await pool.close()
        return show(out)

    return _run(preview())


def cmd_schema(args: argparse.Namespace) -> int:
    settings = _one_shot(_settings())

    async def dump() -> str:
        async with _database(settings) as url, await db.connect(url, name="postbell-cli") as conn:
            return await schema.dump(conn)

    text = asyncio.run(dump())
    if args.output:
        try:
            Path(args.output).write_text(text)
        except OSError as exc:
            raise UsageError(f"--output: cannot write {args.output} ({exc.strerror})") from None
        print(f"wrote {args.output}", file=sys.stderr)
    else:
        print(text, end="")
    return 0


def cmd_db(args: argparse.Namespace) -> int:
    settings = Settings.from_env(dev=True)
    pgdata = _pgdata(settings)
    if args.db_command == "start":
        print(embedded.start(pgdata))
    elif args.db_command == "url":
        url = embedded.url(pgdata)
        if url is None:
            raise UsageError(
                f"the embedded database under {pgdata} is not running ('postbell db start')"
            )
        print(url)
    elif args.db_command == "stop":
        print("stopped" if embedded.stop(pgdata) else "not running")
    return 0


# -- argument parsing ---------------------------------------------------------------------


def _parser() -> argparse.ArgumentParser:
    from postbell.app.api.pagination import MAX_LIMIT

    parser = _Parser(
        prog=PROG,
        description="postbell: a notification service that needs nothing but Postgres.",
        epilog="Configuration comes from the environment; see the README.",
    )
    sub = parser.add_subparsers(title="commands", metavar="COMMAND")

    def command(
        name: str, func: Callable[[argparse.Namespace], int], help_text: str, description: str
    ) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help_text, description=description)
        p.set_defaults(func=func)
        return p

    command(
        "dev",
        cmd_dev,
        "run everything locally: embedded Postgres, migrations, API and worker",
        "Without DATABASE_URL, start an embedded Postgres under ./.data/pg; apply migrations; "
        "serve the API on PORT (8000) and run an all-in-one worker in the same process. "
        "Prints the API URL, the docs URL and a dev admin key.",
    )
    serve = command(
        "serve",
        cmd_serve,
        "serve the HTTP API",
        "Serve the HTTP API on POSTBELL_HOST:PORT (0.0.0.0:8000). Needs DATABASE_URL.",
    )
    serve.add_argument(
        "--workers",
        type=_integer(1, MAX_WEB_WORKERS),
        default=None,
        metavar="N",
        help=f"server processes, 1 to {MAX_WEB_WORKERS} (default: WEB_CONCURRENCY or 1)",
    )
    worker = command(
        "worker",
        cmd_worker,
        "run delivery workers",
        "Route notifications and send deliveries. Stops gracefully on SIGTERM; restarts its "
        "queue worker when the database connection is lost.",
    )
    worker.add_argument(
        "--queues",
        action="append",
        metavar="Q[,Q...]",
        help=f"queues to work on: {', '.join(QUEUES)} (default: all)",
    )
    worker.add_argument(
        "--concurrency",
        type=_integer(1, MAX_WORKER_CONCURRENCY),
        default=None,
        metavar="N",
        help=f"jobs run at once, 1 to {MAX_WORKER_CONCURRENCY}"
        " (default: POSTBELL_WORKER_CONCURRENCY or 16)",
    )
    worker.add_argument(
        "--metrics-port",
        type=_integer(1, 65535),
        default=None,
        metavar="N",
        help="serve this worker's own Prometheus metrics (send latency, batch sizes,"
        " claimed jobs, outcomes) at http://HOST:N/metrics (default: off)",
    )
    worker.add_argument(
        "--metrics-host",
        default="0.0.0.0",
        metavar="HOST",
        help="address the worker's metrics listen on (default: 0.0.0.0)",
    )
    command(
        "migrate",
        cmd_migrate,
        "apply pending database migrations",
        "Apply pending migrations. Idempotent and safe to run on every deploy (Procfile release:).",
    )
    send = command(
        "send",
        cmd_send,
        "enqueue a notification from the shell",
        "Enqueue a notification, as POST /api/notifications would.",
    )
    send.add_argument("message", help="the message text")
    send.add_argument(
        "--to", action="append", required=True, metavar="ID[,ID...]", help="recipient id(s)"
    )
    send.add_argument(
        "--channel",
        action="append",
        metavar="CHANNEL[,...]",
        help=f"channel(s), any case: {', '.join(CHANNELS)} (default: IN_APP)",
    )
    send.add_argument("--title", help="a title (email subject)")
    send.add_argument(
        "--priority", default="normal", type=str.lower, choices=["low", "normal", "high", "urgent"]
    )
    send.add_argument("--category", help="a category key")

    keys = command("keys", cmd_keys, "manage API keys", "Create, list and revoke API keys.")
    keys_sub = keys.add_subparsers(dest="keys_command", required=True, metavar="ACTION")
    create = keys_sub.add_parser(
        "create",
        help="create a key (printed once, stored hashed)",
        description="Create an API key. It is printed once and stored hashed.",
    )
    create.add_argument(
        "--role", choices=api_keys.ROLES, default="send", help="admin or send (default: send)"
    )
    create.add_argument(
        "--name", type=_key_name, help=f"a label for the key (up to {api_keys.MAX_NAME} characters)"
    )
    keys_sub.add_parser(
        "list", help="list keys (never the keys themselves)", description="List API keys."
    )
    revoke = keys_sub.add_parser(
        "revoke", help="revoke a key", description="Revoke an API key by id."
    )
    revoke.add_argument(
        "id", type=_id, metavar="ID", help="the key's id (see 'postbell keys list')"
    )

    queues = command(
        "queues",
        cmd_queues,
        "show queue depth, unsent deliveries, dead letters",
        "Queue depth per queue and status, unsent deliveries per channel, throughput, dead "
        "letters and stalled jobs: the same data as the SQL views in schema postbell.",
    )
    queues.add_argument("--watch", action="store_true", help="refresh until interrupted")
    queues.add_argument(
        "--interval",
        type=_number(0.5, 3600),
        default=2.0,
        metavar="SECONDS",
        help="seconds between refreshes, 0.5 to 3600 (2)",
    )
    dead = command(
        "dead-letters",
        cmd_dead_letters,
        "list and requeue dead deliveries",
        "List dead deliveries (the dead-letter queue), or requeue them: --retry ID (repeatable) "
        "or --retry-all with the same filters as the list.",
    )
    dead.add_argument("--channel", help="only this channel (EMAIL, PUSH, ...)")
    dead.add_argument("--reason", help="only this reason (retries_exhausted, invalid_address, ...)")
    dead.add_argument("--older-than", metavar="AGE", help="only those dead for longer: 30m, 2h, 7d")
    dead.add_argument(
        "--limit",
        type=_integer(1, MAX_LIMIT),
        default=50,
        metavar="N",
        help=f"rows to list, 1 to {MAX_LIMIT} (default 50)",
    )
    action = dead.add_mutually_exclusive_group()
    action.add_argument(
        "--retry",
        type=_id,
        action="append",
        metavar="ID",
        help="requeue this dead delivery (repeatable; all or none)",
    )
    action.add_argument(
        "--retry-all", action="store_true", help="requeue every dead delivery matching the filters"
    )

    rp = command(
        "replay",
        cmd_replay,
        "send past deliveries again (after a receiver's outage)",
        "Send one channel's past deliveries again, through the normal queues at low priority: "
        "those created between --from and --to with one of --status (sent, delivered, "
        "undelivered, dead; default all four), optionally of one --recipient or --category. "
        "Or every delivery of one --notification (all its channels but IN_APP, or --channel). "
        "Each keeps its delivery id; webhooks carry X-Postbell-Replay. At most "
        "100,000 deliveries and 31 days per replay. See docs/operations.md.",
    )
    rp.add_argument(
        "--channel",
        action="append",
        metavar="CHANNEL",
        help="the channel (WEBHOOK, EMAIL, ...); with --notification, repeatable",
    )
    rp.add_argument(
        "--from", dest="start", metavar="TIME", help="RFC 3339 time, or an age: 2h (ago)"
    )
    rp.add_argument("--to", dest="end", metavar="TIME", help="RFC 3339 time, an age, or now")
    rp.add_argument(
        "--status",
        action="append",
        metavar="STATUS",
        help="sent, delivered, undelivered, dead (repeatable or comma-separated)",
    )
    rp.add_argument("--recipient", metavar="ID", help="only this recipient (external id)")
    rp.add_argument("--category", metavar="KEY", help="only this category")
    rp.add_argument("--notification", metavar="ID", help="replay this notification instead")
    rp.add_argument(
        "--priority",
        choices=["low", "normal", "high", "urgent"],
        default="low",
        help="the resends' priority (default low)",
    )
    rp.add_argument("--dry-run", action="store_true", help="count only; change nothing")
    rp.add_argument(
        "--key", metavar="KEY", help="an idempotency key: running again with it sends nothing more"
    )

    templates_cmd = command(
        "templates",
        cmd_templates,
        "keep templates as files: push, pull, preview",
        "Keep message templates in your repository as files, one KEY.json per template "
        "(the body of PUT /api/templates/KEY), and preview them. See docs/templates.md.",
    )
    templates_sub = templates_cmd.add_subparsers(
        title="template commands", dest="templates_command", metavar="ACTION", required=True
    )
    push_cmd = templates_sub.add_parser(
        "push",
        help="save every DIR/KEY.json as a template",
        description="Validate every DIR/KEY.json, then save each as a new version of template "
        "KEY (made active). A file whose content equals the active version saves nothing, "
        "so pushing twice is a no-op. Templates without a file are left alone.",
    )
    push_cmd.add_argument("dir", metavar="DIR", help="the folder of KEY.json files")
    pull_cmd = templates_sub.add_parser(
        "pull",
        help="write every template to DIR/KEY.json",
        description="Write each template's active version to DIR/KEY.json (only files whose "
        "content changed are rewritten).",
    )
    pull_cmd.add_argument("dir", metavar="DIR", help="the folder to write (created if missing)")
    preview_cmd = templates_sub.add_parser(
        "preview",
        help="print a template rendered for one channel",
        description="Render template KEY for one channel and print the text (EMAIL: the "
        "subject and the plain-text part; --html adds the HTML). Nothing is sent or opened.",
    )
    preview_cmd.add_argument("key", metavar="KEY", help="the template's key")
    preview_cmd.add_argument(
        "--channel", required=True, help=f"the channel, any case: {', '.join(CHANNELS)}"
    )
    preview_cmd.add_argument(
        "--locale", help="the locale (default: the recipient's, else the template's)"
    )
    preview_cmd.add_argument(
        "--data", metavar="FILE", help="a JSON file with the data (default: the example data)"
    )
    preview_cmd.add_argument(
        "--recipient", metavar="ID", help="render for this stored recipient (default: a sample one)"
    )
    preview_cmd.add_argument(
        "--from",
        dest="from_dir",
        metavar="DIR",
        help="read DIR/KEY.json instead of the database (check a file before pushing it)",
    )
    preview_cmd.add_argument("--html", action="store_true", help="print the HTML of an email too")

    schema_cmd = command(
        "schema",
        cmd_schema,
        "print the database schema as SQL",
        "Print the schema of DATABASE_URL's postbell schema as SQL: tables with their "
        "constraints and indexes, views, functions, triggers. sql/schema.sql is this output "
        "for a freshly migrated database ('make schema' regenerates it).",
    )
    schema_sub = schema_cmd.add_subparsers(dest="schema_command", required=True, metavar="ACTION")
    dump = schema_sub.add_parser(
        "dump", help="print the schema as SQL", description="Print the schema as SQL."
    )
    dump.add_argument("--output", "-o", metavar="FILE", help="write to FILE instead of stdout")

    dbp = command(
        "db",
        cmd_db,
        "manage the embedded dev database",
        "Start, stop or locate the embedded Postgres under POSTBELL_DATA_DIR/pg (./.data/pg).",
    )
    db_sub = dbp.add_subparsers(dest="db_command", required=True, metavar="ACTION")
    db_sub.add_parser(
        "start", help="start it and print its URL", description="Start the embedded Postgres."
    )
    db_sub.add_parser("stop", help="stop it", description="Stop the embedded Postgres.")
    db_sub.add_parser("url", help="print its URL", description="Print the embedded database's URL.")
    return parser


if __name__ == "__main__":
    raise SystemExit(main())
