"""What a host app gets from `pip install postbell`: one top-level package, all of it."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PIP = [sys.executable, "-m", "pip"]
FOLDERS = {"app": "postbell/app", "workers": "postbell/workers", "sql": "postbell/sql"}


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run(
        [*PIP, "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(out), str(ROOT)],
        check=True,
        capture_output=True,
    )
    (built,) = out.glob("postbell-*.whl")
    return built


def _expected_files() -> set[str]:
    expected = {f"postbell/{p.name}" for p in (ROOT / "postbell").glob("*.py")}
    for folder, target in FOLDERS.items():
        for path in (ROOT / folder).rglob("*"):
            if path.suffix in (".py", ".sql") and "__pycache__" not in path.parts:
                expected.add(f"{target}/{path.relative_to(ROOT / folder).as_posix()}")
    return expected


def test_the_wheel_has_exactly_one_top_level_package(wheel: Path) -> None:
    """No `app`, `workers` or `postbell_sql` in the host's site-packages."""
    with zipfile.ZipFile(wheel) as zf:
        (top_level,) = [n for n in zf.namelist() if n.endswith(".dist-info/top_level.txt")]
        assert zf.read(top_level).decode().split() == ["postbell"]
        tops = {
            n.split("/")[0] for n in zf.namelist() if not n.split("/")[0].endswith(".dist-info")
        }
    assert tops == {"postbell"}


def test_the_wheel_carries_every_module_and_sql_file(wheel: Path) -> None:
    """A folder of code missing from pyproject's package list fails here, not in production."""
    with zipfile.ZipFile(wheel) as zf:
        shipped = {n for n in zf.namelist() if n.endswith((".py", ".sql"))}
    assert sorted(_expected_files() - shipped) == []


def test_installed_wheel_imports_as_a_host_app_would(wheel: Path, tmp_path: Path) -> None:
    """Installed alone (no source checkout on the path), `from postbell import notify`
    works, the SQL files are readable, and `app`/`workers` are not importable."""
    target = tmp_path / "site"
    subprocess.run(
        [*PIP, "install", "--no-deps", "-q", "--target", str(target), str(wheel)],
        check=True,
        capture_output=True,
    )
    code = (
        "import sys; sys.path[:0] = [sys.argv[1]]\n"
        "from postbell import notify\n"
        "from postbell.app.core import migrations, db\n"
        "assert migrations.available() and len(db.queries) > 10\n"
        "import importlib.util as u\n"
        "print(u.find_spec('app') is None, u.find_spec('workers') is None,"
        " sys.modules['postbell'].__file__.startswith(sys.argv[1]))\n"
    )
    # -S: no site processing, so the editable install's .pth finder is not loaded and the
    # checkout is not on the path; the venv's site-packages (psycopg and friends) is
    # appended as a plain directory.
    site = subprocess.run(
        [sys.executable, "-c", "import site, sys; print(site.getsitepackages()[0])"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    out = subprocess.run(
        [
            sys.executable,
            "-S",
            "-c",
            f"import sys; sys.path.append({site!r})\n" + code,
            str(target),
        ],
        capture_output=True,
        text=True,
        cwd=tmp_path,
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["True", "True", "True"]
