"""Where the CPU goes while the API is saturated (W4's first half): each process's
share of the machine, sampled with psutil. ``python -m bench.cpu_split``.

With ``--py-spy`` it also records the API and the worker with py-spy (if installed:
``.venv/bin/pip install py-spy``) into ``bench/results/{api,worker}.pyspy.txt``, raw
collapsed stacks for flamegraph tools.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil

from bench import workloads
from bench.env import Database, admin_url, processes, start_api, start_receiver, start_worker

HERE = Path(__file__).parent


def _kind(process: psutil.Process) -> str:
    name = process.info["name"] or "?"
    command = " ".join(process.info["cmdline"] or [name])
    if name.startswith("postgres"):
        return "Postgres (all backends)"
    for marker, kind in (
        (" serve", "API (postbell serve)"),
        (" worker", "worker (postbell worker)"),
        ("bench.loadgen", "load generator"),
        ("bench.receiver", "webhook receiver"),
    ):
        if marker in command:
            return kind
    return "other"


def cpu_shares(seconds: float) -> dict[str, float]:
    """Percent of one core used by each kind of process over ``seconds``."""
    found = list(psutil.process_iter(["name", "cmdline"]))
    before = {}
    for process in found:
        try:
            times = process.cpu_times()
        except psutil.Error:
            continue
        before[process.pid] = times.user + times.system
    time.sleep(seconds)
    shares: dict[str, float] = {}
    for process in found:
        try:
            times = process.cpu_times()
        except psutil.Error:
            continue
        if process.pid in before:
            used = times.user + times.system - before[process.pid]
            kind = _kind(process)
            shares[kind] = shares.get(kind, 0.0) + used / seconds * 100
    return shares


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.cpu_split", description=__doc__)
    parser.add_argument("--seconds", type=float, default=8.0, help="saturation run length")
    parser.add_argument("--py-spy", action="store_true", help="also record py-spy profiles")
    args = parser.parse_args()
    database = Database.create(admin_url()[0])
    try:
        database.migrate()
        with processes() as started:
            receiver = start_receiver(started)
            database.execute(
                "INSERT INTO recipients (external_id, webhook_url)"
                " SELECT 'w4-' || i, %s FROM generate_series(0, 999) AS i",
                (f"{receiver}/hook",),
            )
            api = start_api(started, database.url)
            worker = start_worker(started, database.url)
            time.sleep(1.5)
            spies = []
            spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
            if args.py_spy:
                for name, process in (("api", started[1]), ("worker", worker)):
                    out = HERE / "results" / f"{name}.pyspy.txt"
                    spies.append(
                        subprocess.Popen(
                            [
                                spy,
                                "record",
                                "-p",
                                str(process.popen.pid),
                                "-d",
                                str(int(args.seconds) - 2),
                                "-r",
                                "200",
                                "-f",
                                "raw",
                                "-o",
                                str(out),
                                "--nonblocking",
                            ],
                        )
                    )
            shares: dict[str, float] = {}

            def sample() -> None:
                time.sleep(1.0)
                shares.update(cpu_shares(args.seconds - 3))

            sampler = threading.Thread(target=sample)
            sampler.start()
            records = workloads._loadgen(api, args.seconds, concurrency=32)
            sampler.join()
            for process in spies:
                process.wait()
    finally:
        database.drop()
    accepted = sum(1 for r in records if r["status"] == 202) / args.seconds
    print(f"accepted/s at saturation: {accepted:,.0f}")
    for kind, share in sorted(shares.items(), key=lambda item: -item[1]):
        print(f"  {kind:28s} {share:5.1f} % of one core")
    print(f"  {'total':28s} {sum(shares.values()):5.1f} % of {psutil.cpu_count() * 100} %")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
