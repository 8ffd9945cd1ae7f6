"""The house's rules, read from the code: dependencies point one way
(cli -> api | workers -> core), the worker never loads the web framework, and the
one list of channel names is the one every layer uses."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

from postbell.app.core.channels import CHANNELS, QUEUES, queue_of
from postbell.workers.channels.registry import REGISTRY

ROOT = Path(__file__).resolve().parents[2]

#: folder -> the dotted package it installs as
PACKAGES = {"app": "postbell.app", "workers": "postbell.workers", "postbell": "postbell"}


def _module_of(path: Path) -> str:
    rel = path.relative_to(ROOT)
    dotted = ".".join([PACKAGES[rel.parts[0]], *rel.with_suffix("").parts[1:]])
    return dotted.removesuffix(".__init__")


def _imports(path: Path) -> set[str]:
    """Every module ``path`` imports, at module level or inside functions."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
    return found


def _layer_files(folder: str) -> list[Path]:
    return sorted((ROOT / folder).rglob("*.py"))


def _offences(files: list[Path], forbidden: tuple[str, ...]) -> list[str]:
    out = []
    for path in files:
        for name in sorted(_imports(path)):
            if any(name == f or name.startswith(f + ".") for f in forbidden):
                out.append(f"{path.relative_to(ROOT)} imports {name}")
    return out


def test_core_imports_neither_the_http_layer_nor_the_workers() -> None:
    """app/core/ is the bottom floor: no Litestar, no API, no workers, no CLI."""
    core = _layer_files("app/core")
    assert core
    assert (
        _offences(core, ("litestar", "postbell.app.api", "postbell.workers", "postbell.cli")) == []
    )


def test_http_layer_never_imports_the_workers() -> None:
    assert _offences(_layer_files("app/api"), ("postbell.workers", "postbell.cli")) == []


def test_workers_never_import_the_http_layer() -> None:
    assert (
        _offences(_layer_files("workers"), ("litestar", "postbell.app.api", "postbell.cli")) == []
    )


def test_nothing_imports_the_old_top_level_names() -> None:
    """Everything is imported as postbell.*: a stray `import app` would load a second
    copy of a module (and break a host app whose own package is called app)."""
    files = [*_layer_files("app"), *_layer_files("workers"), *_layer_files("postbell")]
    files += sorted((ROOT / "tests").rglob("*.py")) + sorted((ROOT / "bench").rglob("*.py"))
    assert _offences(files, ("app", "workers", "postbell_sql")) == []


def test_module_names_match_their_folders() -> None:
    """Sanity for the helper above: a file's dotted name is where it installs."""
    assert _module_of(ROOT / "app/core/db.py") == "postbell.app.core.db"
    assert _module_of(ROOT / "workers/channels/registry.py") == "postbell.workers.channels.registry"


@pytest.mark.parametrize(
    "entry_point", ["postbell.workers.runner", "postbell.workers.tasks", "postbell"]
)
def test_worker_side_imports_load_no_web_framework(entry_point: str) -> None:
    """In a fresh interpreter, the worker (and the host-app helper ``postbell``) import
    without loading litestar."""
    code = f"import sys, {entry_point}; print('litestar' in sys.modules)"
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd="/"
    )
    assert out.stdout.strip() == "False"


def test_the_registry_has_one_plugin_per_channel_name() -> None:
    assert list(REGISTRY) == list(CHANNELS)
    for name, plugin in REGISTRY.items():
        assert plugin.name == name


def test_queues_are_route_plus_one_per_channel() -> None:
    assert ("route", *(queue_of(c) for c in CHANNELS)) == QUEUES
