"""Bench-only packages stay out of postbell's dependencies."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

PYPROJECT = tomllib.loads((Path(__file__).parents[2] / "pyproject.toml").read_text())


def _names(requirements: list[str]) -> set[str]:
    return {re.split(r"[\[<>=!~; ]", r, maxsplit=1)[0].lower() for r in requirements}


def test_celery_is_a_bench_extra_only() -> None:
    """The Celery baseline's packages are in the bench extra, not in the runtime
    dependencies (nor in dev, which `make test` installs)."""
    project = PYPROJECT["project"]
    assert "celery" in _names(project["optional-dependencies"]["bench"])
    for group in (project["dependencies"], project["optional-dependencies"]["dev"]):
        assert not {"celery", "redis", "kombu"} & _names(group)
