"""The named-query loader."""

from __future__ import annotations

import pytest

from postbell.app.core.db import Queries, conninfo, queries


def test_splits_named_queries() -> None:
    loaded = Queries({"a.sql": "-- name: one\nSELECT 1;\n\n-- name: two\n-- a comment\nSELECT 2\n"})
    assert dict(loaded) == {"one": b"SELECT 1", "two": b"-- a comment\nSELECT 2"}


def test_duplicate_names_are_refused() -> None:
    with pytest.raises(ValueError, match="twice"):
        Queries({"a.sql": "-- name: one\nSELECT 1", "b.sql": "-- name: one\nSELECT 2"})


def test_every_shipped_query_binds_parameters_by_name() -> None:
    """No query text carries a positional %s that could invite string formatting."""
    for name, text in queries.items():
        assert b"%s" not in text.replace(b")s", b""), name


def test_conninfo_sets_search_path_and_keeps_user_options() -> None:
    info = conninfo("postgresql://u@h/d?options=-c%20statement_timeout%3D5s")
    assert "search_path=postbell,public" in info
    assert "statement_timeout=5s" in info
