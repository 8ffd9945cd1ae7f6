"""sql/schema.sql is the schema the migrations make; named queries and the code agree."""

from __future__ import annotations

import re
from pathlib import Path

from postbell.app.core import db, schema
from tests.conftest import _url_for

ROOT = Path(__file__).resolve().parents[2]
SCHEMA_FILE = ROOT / "sql" / "schema.sql"
_MAJOR_RE = re.compile(r"\(PostgreSQL (\d+)\)")
_OBJECT_RE = re.compile(
    r"^(CREATE (?:UNIQUE )?(?:TABLE|VIEW|TYPE|INDEX|TRIGGER|OR REPLACE FUNCTION)"
    r" [^\s(]+|ALTER TABLE \S+ ADD CONSTRAINT \S+)",
    re.M,
)


def _objects(text: str) -> list[str]:
    return sorted(_OBJECT_RE.findall(text))


async def test_schema_sql_matches_a_freshly_migrated_database(
    admin_url: str, template_db: str
) -> None:
    """The committed sql/schema.sql is exactly what `postbell schema dump` prints for a
    freshly migrated database (on another PostgreSQL major version, whose catalog
    prints definitions differently: the same objects). Regenerate with `make schema`."""
    async with await db.connect(_url_for(admin_url, template_db)) as conn:
        fresh = await schema.dump(conn)
    committed = SCHEMA_FILE.read_text()
    if _MAJOR_RE.findall(fresh) == _MAJOR_RE.findall(committed):
        assert committed == fresh, "sql/schema.sql is out of date: run `make schema`"
    else:
        assert _objects(committed) == _objects(fresh), "sql/schema.sql is out of date"


def test_schema_sql_lists_every_table_and_function() -> None:
    """A reader finds the main objects in the file (a sanity check of the dump itself)."""
    text = SCHEMA_FILE.read_text()
    for name in ("recipients", "notifications", "deliveries", "procrastinate_jobs"):
        assert f"CREATE TABLE {name} (" in text
    for function in ("notify", "enqueue_notification", "delivery_skip_reason"):
        assert f"FUNCTION postbell.{function}(" in text


_CALL_RE = re.compile(
    r"(?:db\.(?:fetch_one|fetch_all|execute)\(\s*\w+,\s*|queries\[)\"([a-z0-9_]+)\""
)
_LITERAL_RE = re.compile(r"\"([a-z][a-z0-9_]+)\"")


def _code() -> str:
    return "\n".join(
        p.read_text()
        for folder in ("app", "workers", "postbell")
        for p in (ROOT / folder).rglob("*.py")
    )


def test_every_named_query_is_used_and_every_used_name_exists() -> None:
    """No dead SQL in sql/queries/, and no call names a query that is not there."""
    code = _code()
    defined = set(db.queries)
    called = set(_CALL_RE.findall(code))
    mentioned = set(_LITERAL_RE.findall(code)) & defined
    assert sorted(called - defined) == []
    assert sorted(defined - mentioned) == []


def test_schema_sql_is_shipped_with_the_package() -> None:
    from importlib import resources

    assert (resources.files("postbell.sql") / "schema.sql").read_text() == SCHEMA_FILE.read_text()


async def test_dump_is_deterministic(database_url: str) -> None:
    """Two dumps of one database are identical (sorted, no volatile values)."""
    async with await db.connect(database_url) as conn:
        assert await schema.dump(conn) == await schema.dump(conn)


async def test_sql_knows_exactly_the_channel_names(database_url: str) -> None:
    """postbell.notify() checks channel names in SQL against channel_names(), which is
    core.channels.CHANNELS; a name outside it is refused, each name in it accepted."""
    import psycopg

    from postbell.app.core.channels import CHANNELS

    async with await db.connect(database_url) as conn:
        cursor = await conn.execute("SELECT postbell.channel_names() AS names")
        row = await cursor.fetchone()
        assert row is not None and row["names"] == list(CHANNELS)
        for channel in [*CHANNELS, "FAX"]:
            try:
                async with conn.transaction(force_rollback=True):
                    await conn.execute(
                        "SELECT postbell.notify(ARRAY['schema-check'], '{\"message\": \"m\"}',"
                        " ARRAY[%s])",
                        (channel,),
                    )
                accepted = True
            except psycopg.errors.InvalidParameterValue:
                accepted = False
            assert accepted == (channel != "FAX"), channel
