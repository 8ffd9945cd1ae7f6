"""The schema stays distributable by recipient (docs/scaling.md, "Past one machine").

With Citus, the per-recipient tables are distributed by the recipient's id and
co-located; categories, templates and topics are reference tables (a copy on every
node); notifications and the job queue stay on the coordinator. Citus enforces a
unique key or primary key on a distributed table only when it includes the
distribution column, and a foreign key between distributed tables only when it joins
their distribution columns; a foreign key from a distributed table must point at a
co-located or a reference table, and no table but a distributed one may point at a
distributed table.

This test reads those rules off pg_catalog on the migrated test database. Today's
schema breaks some of them on purpose (one Postgres is the product; these keys are
what the API relies on): they are listed, exactly, in ``EXCEPTIONS``, and
docs/scaling.md says what each would become. A new key or foreign key that breaks a
rule fails here: make it include the distribution column, or add it to the list and
to the docs with the change it would need.
"""

from __future__ import annotations

import psycopg

#: Table -> its distribution column.
DISTRIBUTED = {
    "recipients": "id",
    "deliveries": "recipient_id",
    "preferences": "recipient_id",
    "digest_preferences": "recipient_id",
    "devices": "recipient_id",
    "topic_subscribers": "recipient_id",
}
#: Small, read-mostly tables copied to every node.
REFERENCE = {"categories", "templates", "template_versions", "topics"}

#: Every rule today's schema breaks, as ``(table, constraint or index, rule)``.
EXCEPTIONS = {
    # The API addresses recipients by the host app's id: unique per database.
    ("recipients", "recipients_external_id_key", "unique without distribution column"),
    # Delivery ids are the public handle of a delivery (X-Postbell-Delivery, dead
    # letters, callbacks): an identity, unique without the recipient.
    ("deliveries", "deliveries_pkey", "unique without distribution column"),
    # A push token belongs to one device, whoever it was registered to last.
    ("devices", "devices_token_key", "unique without distribution column"),
    ("devices", "devices_pkey", "unique without distribution column"),
}


def _violations(conn: psycopg.Connection[tuple[object, ...]]) -> set[tuple[str, str, str]]:
    found: set[tuple[str, str, str]] = set()
    tables = dict(
        conn.execute(
            "SELECT c.relname, c.oid FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
            " WHERE n.nspname = 'postbell' AND c.relkind IN ('r', 'p')"
        ).fetchall()
    )
    assert set(DISTRIBUTED) <= set(tables), "a co-located table is missing"
    names = {oid: name for name, oid in tables.items()}

    def columns(table_oid: object, attnums: list[int]) -> list[str]:
        rows = conn.execute(
            "SELECT attnum, attname FROM pg_attribute WHERE attrelid = %s AND attnum = ANY(%s)",
            (table_oid, attnums),
        ).fetchall()
        by_number = dict(rows)
        return [str(by_number[a]) for a in attnums]

    # Unique keys (primary keys, unique constraints, unique indexes; partial ones too:
    # Citus refuses those the same way).
    for table, column in DISTRIBUTED.items():
        for index, attnums in conn.execute(
            "SELECT i.indexrelid::regclass::text, i.indkey::int2[]::int[] FROM pg_index i"
            " WHERE i.indrelid = %s AND i.indisunique",
            (tables[table],),
        ).fetchall():
            index_name = str(index).removeprefix("postbell.")
            if column not in columns(tables[table], [a for a in attnums if a > 0]):
                found.add((table, index_name, "unique without distribution column"))

    # Foreign keys that touch a distributed table, from either side.
    for name, source, target, source_cols, target_cols in conn.execute(
        "SELECT conname, conrelid, confrelid, conkey::int[], confkey::int[] FROM pg_constraint"
        " WHERE contype = 'f' AND connamespace = 'postbell'::regnamespace"
    ).fetchall():
        source_name, target_name = names.get(source), names.get(target)
        if source_name in DISTRIBUTED:
            if target_name in DISTRIBUTED:
                pairs = list(
                    zip(columns(source, source_cols), columns(target, target_cols), strict=True)
                )
                if (DISTRIBUTED[source_name], DISTRIBUTED[target_name]) not in pairs:
                    found.add((source_name, name, "foreign key not on the distribution columns"))
            elif target_name not in REFERENCE:
                found.add((source_name, name, "foreign key to a coordinator table"))
        elif target_name in DISTRIBUTED:
            found.add((str(source_name), name, "foreign key into a distributed table"))
    return found


def test_schema_stays_distributable_by_recipient(database_url: str) -> None:
    """Every unique key of the co-located tables includes the recipient id, every
    foreign key among them joins on it, and every foreign key out of them points at a
    reference table, except for the keys listed (and explained) in EXCEPTIONS."""
    with psycopg.connect(database_url) as conn:
        found = _violations(conn)
    assert found - EXCEPTIONS == set(), (
        "new keys that would not distribute by recipient (see docs/scaling.md): include"
        " the distribution column, or list them in EXCEPTIONS with what they would need"
    )
    assert EXCEPTIONS - found == set(), "an exception no longer applies: remove it from the list"
