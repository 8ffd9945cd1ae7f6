"""Migrations: idempotent, incremental == from scratch, procrastinate's schema covered."""

from __future__ import annotations

from importlib import resources
from typing import Any

import psycopg

from postbell.app.core import migrations
from tests.conftest import create_database, drop_database, unique

SNAPSHOT = """
SELECT 'column' AS kind, table_name || '.' || column_name || ' ' || data_type
       || ' ' || is_nullable || ' ' || coalesce(column_default, '') AS what
  FROM information_schema.columns WHERE table_schema = 'postbell'
UNION ALL
SELECT 'index', indexname || ' ' || indexdef FROM pg_indexes WHERE schemaname = 'postbell'
UNION ALL
SELECT 'function', p.proname || '(' || pg_get_function_identity_arguments(p.oid) || ') '
       || md5(pg_get_functiondef(p.oid))
  FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
 WHERE n.nspname = 'postbell' AND p.prokind IN ('f', 'p')
UNION ALL
SELECT 'constraint', conrelid::regclass || ' ' || conname || ' ' || pg_get_constraintdef(c.oid)
  FROM pg_constraint c JOIN pg_namespace n ON n.oid = c.connamespace WHERE n.nspname = 'postbell'
UNION ALL
SELECT 'trigger', tgrelid::regclass || ' ' || tgname FROM pg_trigger t
  JOIN pg_class c ON c.oid = t.tgrelid JOIN pg_namespace n ON n.oid = c.relnamespace
 WHERE n.nspname = 'postbell' AND NOT t.tgisinternal
ORDER BY 1, 2
"""


def snapshot(url: str) -> list[Any]:
    with psycopg.connect(url) as conn:
        return conn.execute(SNAPSHOT).fetchall()


async def test_migrate_twice_is_a_no_op(admin_url: str) -> None:
    name = unique("pbtest_mig").replace("-", "_")
    url = create_database(admin_url, name)
    try:
        first = await migrations.migrate(url)
        assert [m.version for m in first] == [m.version for m in migrations.available()]
        before = snapshot(url)
        assert await migrations.migrate(url) == []
        assert snapshot(url) == before
    finally:
        drop_database(admin_url, name)


async def test_step_by_step_equals_all_at_once(admin_url: str, template_db: str) -> None:
    """A database migrated one release at a time ends where a fresh one does."""
    name = unique("pbtest_mig").replace("-", "_")
    url = create_database(admin_url, name)
    try:
        for m in migrations.available():
            applied = await migrations.migrate(url, target=m.version)
            assert [a.version for a in applied] == [m.version]
        from tests.conftest import _url_for

        assert snapshot(url) == snapshot(_url_for(admin_url, template_db))
    finally:
        drop_database(admin_url, name)


def test_procrastinate_schema_is_covered_by_our_migrations() -> None:
    """0001 holds procrastinate's schema up to its migration 03.04.00. A newer
    procrastinate with a newer schema migration must get a numbered migration here."""
    bundled = sorted(
        entry.name
        for entry in (resources.files("procrastinate") / "sql" / "migrations").iterdir()
        if entry.name.endswith(".sql")
    )
    assert bundled[-1].startswith("03.04.00"), (
        f"procrastinate ships {bundled[-1]}: add it as a postbell migration"
    )


async def test_objects_live_in_schema_postbell(database_url: str) -> None:
    with psycopg.connect(database_url) as conn:
        rows = conn.execute(
            "SELECT table_schema FROM information_schema.tables"
            " WHERE table_name IN ('procrastinate_jobs', 'deliveries')"
        ).fetchall()
    assert rows == [("postbell",), ("postbell",)]
