"""Numbered SQL migrations under ``sql/migrations``, recorded in ``postbell.schema_migrations``.

``migrate`` is idempotent and safe to run on every deploy, from several processes at
once: an advisory lock serialises runners, and each file runs in its own transaction
together with the row that records it.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import re
from importlib import resources

import psycopg
import structlog

from postbell.app.core import db

log = structlog.get_logger("postbell.migrate")

_FILE_RE = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")
_LOCK_KEY = 7_415_100_001  # pg_advisory_lock key owned by postbell's migrator


@dataclasses.dataclass(frozen=True, slots=True)
class Migration:
    version: int
    name: str
    sql: str

    @property
    def checksum(self) -> str:
        return hashlib.sha256(self.sql.encode()).hexdigest()


def available() -> list[Migration]:
    """Every migration file, in version order."""
    folder = resources.files("postbell.sql") / "migrations"
    found: list[Migration] = []
    for entry in folder.iterdir():
        match = _FILE_RE.match(entry.name)
        if match:
            found.append(
                Migration(int(match.group(1)), match.group(2), entry.read_text(encoding="utf-8"))
            )
    found.sort(key=lambda m: m.version)
    versions = [m.version for m in found]
    if len(set(versions)) != len(versions):
        raise RuntimeError("two migration files share a version number")
    return found


async def applied_versions(conn: db.Conn) -> dict[int, str]:
    """version -> checksum of what this database has applied (empty when never migrated)."""
    cursor = await conn.execute(
        "SELECT to_regclass('postbell.schema_migrations') IS NOT NULL AS present"
    )
    row = await cursor.fetchone()
    if not row or not row["present"]:
        return {}
    cursor = await conn.execute("SELECT version, checksum FROM postbell.schema_migrations")
    return {r["version"]: r["checksum"] for r in await cursor.fetchall()}


async def pending(conn: db.Conn) -> list[Migration]:
    done = await applied_versions(conn)
    return [m for m in available() if m.version not in done]


async def not_ready(conn: db.Conn) -> str | None:
    """Why this database cannot serve this version of postbell yet, in one line that
    says what to run; None when every migration is applied."""
    done = await applied_versions(conn)
    waiting = [m for m in available() if m.version not in done]
    if not waiting:
        return None
    name = conn.info.dbname
    if not done:
        return f"database \"{name}\" has no postbell schema; run 'postbell migrate'"
    names = ", ".join(f"{m.version:04d}_{m.name}" for m in waiting[:3])
    more = f" and {len(waiting) - 3} more" if len(waiting) > 3 else ""
    return f"database \"{name}\" lacks migrations {names}{more}; run 'postbell migrate'"


async def migrate(database_url: str, *, target: int | None = None) -> list[Migration]:
    """Apply every pending migration (up to ``target``, when given); answer the ones applied."""
    applied: list[Migration] = []
    async with await db.connect(database_url, name="postbell-migrate") as conn:
        await conn.execute("SELECT pg_advisory_lock(%s)", (_LOCK_KEY,))
        try:
            await conn.execute("CREATE SCHEMA IF NOT EXISTS postbell")
            await conn.execute(
                """
                CREATE TABLE IF NOT EXISTS postbell.schema_migrations (
                    version    integer PRIMARY KEY,
                    name       text NOT NULL,
                    checksum   text NOT NULL,
                    applied_at timestamptz NOT NULL DEFAULT now()
                )
                """
            )
            done = await applied_versions(conn)
            for migration in available():
                if target is not None and migration.version > target:
                    break
                if migration.version in done:
                    if done[migration.version] != migration.checksum:
                        log.warning(
                            "migration_changed_after_apply",
                            version=migration.version,
                            name=migration.name,
                        )
                    continue
                async with conn.transaction():
                    await conn.execute("SET LOCAL search_path TO postbell, public")
                    # No parameters: psycopg sends the file as one simple query,
                    # so it may hold many statements.
                    await conn.execute(migration.sql.encode())
                    await conn.execute(
                        "INSERT INTO postbell.schema_migrations (version, name, checksum)"
                        " VALUES (%s, %s, %s)",
                        (migration.version, migration.name, migration.checksum),
                    )
                log.info("migration_applied", version=migration.version, name=migration.name)
                applied.append(migration)
        finally:
            await conn.execute("SELECT pg_advisory_unlock(%s)", (_LOCK_KEY,))
    return applied


async def database_problem(
    database_url: str, *, need_schema: bool = True, within: float = 30.0
) -> str | None:
    """Why ``database_url`` cannot be used right now, in one line (None: it can).

    One connection, closed again: unreachable, refused (unknown database or role, bad
    password), or, with ``need_schema``, not migrated to this version. ``within``
    bounds it all, name resolution included (``connect_timeout`` does not cover that).
    The CLI refuses to run on the answer; the worker waits until there is none.
    """
    try:
        async with asyncio.timeout(within):
            conn = await db.connect(database_url, name="postbell-check")
    except (psycopg.Error, TimeoutError) as exc:
        return db.describe_error(exc, database_url)
    try:
        return await not_ready(conn) if need_schema else None
    except psycopg.Error as exc:
        return db.describe_error(exc, database_url)
    finally:
        await conn.close()
