"""Regenerate sql/schema.sql from a freshly migrated scratch database (``make schema``).

Uses the test suite's Postgres (the machine's on 127.0.0.1:5432, else an embedded
one), so it needs nothing the tests do not.
"""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path

from postbell.app.core import db, migrations, schema
from tests.conftest import LOCAL_ADMIN_URL, _reachable, create_database, drop_database

TARGET = Path(__file__).resolve().parents[2] / "sql" / "schema.sql"


async def fresh_dump(url: str) -> str:
    await migrations.migrate(url)
    async with await db.connect(url) as conn:
        return await schema.dump(conn)


def main() -> None:
    if not _reachable(LOCAL_ADMIN_URL):
        raise SystemExit(f"no Postgres at {LOCAL_ADMIN_URL}")
    name = f"pbschema_{uuid.uuid4().hex[:8]}"
    url = create_database(LOCAL_ADMIN_URL, name)
    try:
        TARGET.write_text(asyncio.run(fresh_dump(url)))
    finally:
        drop_database(LOCAL_ADMIN_URL, name)
    print(f"wrote {TARGET}")


if __name__ == "__main__":
    main()
