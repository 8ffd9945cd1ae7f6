"""Mutation testing of the modules that hold postbell's guarantees (``make mutate``).

mutmut (2.x, which mutates files in place) runs in a throwaway git worktree of HEAD
with a virtualenv of its own, so a run never touches your checkout: each target
module is mutated one change at a time and the tests that cover it run against each
mutant; a mutant the tests do not notice "survives". The report lists survivors per
module (docs/testing.md says why each one kept is acceptable).

    make mutate                      # every target, a time budget per target
    make mutate ARGS="--only tokens" # one target
    make mutate ARGS="--tests-rev 60e60d7 --output before.json"  # today's mutants, older tests
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
MUTMUT = "mutmut>=2.5,<3"


@dataclasses.dataclass(frozen=True)
class Target:
    name: str
    path: str
    tests: tuple[str, ...]


TARGETS = (
    Target("tokens", "app/core/tokens.py", ("tests/unit/test_auth.py",)),
    Target(
        "keys",
        "app/core/keys.py",
        ("tests/unit/test_auth.py", "tests/integration/test_api_basics.py"),
    ),
    Target(
        "auth",
        "app/api/auth.py",
        (
            "tests/unit/test_auth.py",
            "tests/integration/test_auth_rules.py",
            "tests/integration/test_controls.py::test_idempotency_under_concurrent_repeats",
            "tests/integration/test_api_basics.py",
            "tests/integration/test_rate_limits.py",
            "tests/integration/test_inbox_live.py",
        ),
    ),
    Target("address_guard", "app/core/addresses.py", ("tests/integration/test_address_guard.py",)),
    Target(
        "enqueue",
        "app/api/notifications/service.py",
        (
            "tests/unit/test_notification_rules.py",
            "tests/integration/test_controls.py::test_idempotency_under_concurrent_repeats",
            "tests/integration/test_notifications_api.py",
            "tests/integration/test_group_commit.py",
            "tests/integration/test_templated_sending.py",
            "tests/integration/test_experiment_templates.py",
            "tests/integration/test_hostile_input.py",
            "tests/integration/test_races.py",
        ),
    ),
    Target(
        "routing",
        "workers/router.py",
        ("tests/integration/test_routing.py", "tests/integration/test_delivery_flow.py"),
    ),
    Target(
        "recording",
        "workers/delivery.py",
        (
            "tests/unit/test_retry_plan.py",
            "tests/integration/test_channels.py",
            "tests/integration/test_races.py",
            "tests/integration/test_run_failures.py",
        ),
    ),
    Target(
        "claims",
        "workers/claims.py",
        # test_routing's batch is the one that claims queued jobs (claim_more with
        # rows, only(), finish and fail of claimed jobs); the others claim none
        (
            "tests/integration/test_routing.py",
            "tests/integration/test_run_failures.py",
            "tests/integration/test_maintenance.py",
            "tests/integration/test_delivery_flow.py",
        ),
    ),
    Target(
        "callback_verify",
        "app/api/callbacks/verify.py",
        (
            "tests/unit/test_callback_verify.py",
            "tests/integration/test_callbacks.py",
            "tests/integration/test_callback_replays.py",
        ),
    ),
)


def _run(
    cmd: list[str], cwd: Path, timeout: float | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        cmd, cwd=cwd, capture_output=True, text=True, timeout=timeout, check=False
    )


def _prepare(workdir: Path, rev: str, tests_rev: str | None) -> Path:
    """A worktree of ``rev`` with its own virtualenv (editable, so it imports itself);
    with ``tests_rev``, its tests/ folder as it was at that commit."""
    _run(["git", "worktree", "add", "--detach", str(workdir), rev], ROOT).check_returncode()
    if tests_rev:
        _run(["git", "rm", "-r", "-q", "tests"], workdir).check_returncode()
        _run(["git", "checkout", tests_rev, "--", "tests"], workdir).check_returncode()
    venv = workdir / ".venv"
    _run([sys.executable, "-m", "venv", str(venv)], workdir).check_returncode()
    pip = [str(venv / "bin" / "python"), "-m", "pip", "install", "-q"]
    _run([*pip, "-e", ".[dev]", MUTMUT], workdir).check_returncode()
    return venv


def _ids(venv: Path, workdir: Path, kind: str) -> list[str]:
    out = _run([str(venv / "bin" / "mutmut"), "result-ids", kind], workdir).stdout
    return out.split()


def _diff(venv: Path, workdir: Path, mutant: str) -> str:
    result = _run([str(venv / "bin" / "mutmut"), "show", mutant], workdir)
    changed = [
        line.strip()
        for line in result.stdout.splitlines()
        if line.startswith(("+", "-")) and not line.startswith(("+++", "---"))
    ]
    if not changed:  # say what mutmut said rather than print an empty diff
        changed = (result.stdout + result.stderr).strip().splitlines()[-2:]
    return " | ".join(changed)


def run_target(target: Target, venv: Path, workdir: Path, budget: float) -> dict[str, object]:
    cache = workdir / ".mutmut-cache"
    if cache.exists():
        cache.unlink()
    # No bytecode: a mutant of the same length written within the same second as the
    # original would otherwise run from the original's cached .pyc and "survive".
    # mutmut 2.5 counts only exit status 1 as "tests failed": a mutant that stops the
    # import (pytest's collection error, status 2) was reported as surviving, so every
    # failure is mapped to 1.
    runner = (
        f"sh -c 'env PYTHONDONTWRITEBYTECODE=1 {venv / 'bin' / 'python'} -m pytest -x -q"
        f" -p no:cacheprovider {' '.join(target.tests)} || exit 1'"
    )
    started = time.monotonic()
    try:
        result = _run(
            [
                str(venv / "bin" / "mutmut"),
                "run",
                "--paths-to-mutate",
                target.path,
                "--runner",
                runner,
                "--no-progress",
                "--simple-output",
            ],
            workdir,
            timeout=budget,
        )
        finished = True
        note = result.stdout.strip().splitlines()[-1:] if result.stdout else []
    except subprocess.TimeoutExpired:
        finished, note = False, ["time budget spent"]
        _run(["git", "checkout", "--", target.path], workdir)  # a mutant may be applied
    kinds = {k: _ids(venv, workdir, k) for k in ("killed", "survived", "timeout", "suspicious")}
    return {
        "target": target.name,
        "path": target.path,
        "tests": list(target.tests),
        "finished": finished,
        "seconds": round(time.monotonic() - started),
        **{kind: len(ids) for kind, ids in kinds.items()},
        "mutants": sum(len(ids) for ids in kinds.values()),
        "killed_ids": kinds["killed"],
        "survivors": [{"id": i, "diff": _diff(venv, workdir, i)} for i in kinds["survived"]],
        "note": note,
    }


def main() -> None:
    parser = argparse.ArgumentParser(prog="make mutate", description=__doc__)
    parser.add_argument("--only", help="comma-separated target names")
    parser.add_argument("--budget", type=float, default=900, help="seconds per target (900)")
    parser.add_argument("--output", default=str(ROOT / "bench" / "results" / "mutation.json"))
    parser.add_argument(
        "--rev",
        default="HEAD",
        help="the commit whose code and tests are mutated (HEAD); an older one gives 'before'",
    )
    parser.add_argument(
        "--tests-rev",
        help="run the mutants of --rev's code against the tests of this older commit: the"
        " same mutants, so the two runs say what the newer tests added",
    )
    args = parser.parse_args()
    chosen = [t for t in TARGETS if not args.only or t.name in args.only.split(",")]
    workdir = Path(tempfile.mkdtemp(prefix="postbell-mutate-")) / "tree"
    try:
        venv = _prepare(workdir, args.rev, args.tests_rev)
        report = []
        for target in chosen:
            entry = run_target(target, venv, workdir, args.budget)
            report.append(entry)
            # mutmut's "suspicious" and "timeout" mutants were caught too (the tests
            # failed, or never finished), only slowly
            slow = int(entry["suspicious"]) + int(entry["timeout"])  # type: ignore[call-overload]
            print(
                f"{target.name:16} {entry['killed']:>4} killed"
                + (f" (+{slow} slowly)" if slow else "")
                + f" {entry['survived']:>4} survived"
                f" of {entry['mutants']:>4} in {entry['seconds']} s"
                + ("" if entry["finished"] else " (budget spent)"),
                flush=True,
            )
            for survivor in entry["survivors"]:  # type: ignore[attr-defined]
                print(f"    survived {survivor['id']}: {survivor['diff']}")
        revision = _run(["git", "rev-parse", args.rev], ROOT).stdout.strip()
        Path(args.output).write_text(
            json.dumps(
                {
                    "rev": revision,
                    "tests_rev": args.tests_rev,
                    "budget": args.budget,
                    "targets": report,
                },
                indent=2,
            )
            + "\n"
        )
        print(f"wrote {args.output}")
    finally:
        _run(["git", "worktree", "remove", "--force", str(workdir)], ROOT)
        shutil.rmtree(workdir.parent, ignore_errors=True)


if __name__ == "__main__":
    main()
