"""W11 in alternating pairs, the order swapped every pair, so a machine whose load
moves favours neither. Prints each run and the medians.

By default the pairs compare the adaptive in-flight limit with the fixed 64 on this
tree. With ``--against TREE`` they compare this tree's code with another checkout's
(its own ``.venv``, e.g. a ``git worktree`` of an older commit), both adaptive:

    .venv/bin/python -m bench.w11_pairs --delay 0.2 --webhooks 5000 --pairs 3
    .venv/bin/python -m bench.w11_pairs --delay 1.0 --webhooks 2000 --against ../base
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
from pathlib import Path

from bench import scale
from bench.__main__ import fresh
from bench.env import admin_url

ONE_RUN = """
import json
from bench import scale
from bench.__main__ import fresh
from bench.env import admin_url
print(json.dumps(scale.w11_slow_receiver(fresh(admin_url()[0]), {webhooks}, delay={delay})))
"""


def _in_tree(tree: Path, webhooks: int, delay: float) -> float:
    """One W11 run of another checkout's code, in its own virtualenv."""
    result = subprocess.run(
        [
            str(tree / ".venv" / "bin" / "python"),
            "-c",
            ONE_RUN.format(webhooks=webhooks, delay=delay),
        ],
        cwd=tree,
        capture_output=True,
        text=True,
        check=True,
    )
    return float(json.loads(result.stdout.strip().splitlines()[-1])["per_second"])


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.w11_pairs", description=__doc__)
    parser.add_argument("--delay", type=float, default=0.2, help="receiver answer time (s)")
    parser.add_argument("--webhooks", type=int, default=5000)
    parser.add_argument("--pairs", type=int, default=3)
    parser.add_argument("--against", type=Path, help="another checkout to compare with")
    args = parser.parse_args()
    admin, _ = admin_url()

    def here(ceiling: int | None) -> float:
        result = scale.w11_slow_receiver(
            fresh(admin), args.webhooks, delay=args.delay, max_in_flight=ceiling
        )
        return float(result["per_second"])

    if args.against:
        tree = args.against.resolve()
        order = [
            ("this tree", lambda: here(None)),
            (str(tree), lambda: _in_tree(tree, args.webhooks, args.delay)),
        ]
    else:
        order = [("adaptive", lambda: here(None)), ("fixed64", lambda: here(64))]
    runs: dict[str, list[float]] = {name: [] for name, _ in order}
    for pair in range(args.pairs):
        for name, run in order if pair % 2 == 0 else order[::-1]:
            runs[name].append(run())
            print(name, runs[name][-1], flush=True)
    medians = {name: statistics.median(values) for name, values in runs.items()}
    ratios = [a / b for a, b in zip(*runs.values(), strict=True) if b]
    print(json.dumps({"runs": runs, "medians": medians, "pair_ratios": ratios}))


if __name__ == "__main__":
    main()
