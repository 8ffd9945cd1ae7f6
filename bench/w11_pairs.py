"""W11 in alternating pairs: the adaptive in-flight limit against the fixed 64, one
after the other, the order swapped every pair, so a machine whose load moves favours
neither. Prints each run and the medians.

    .venv/bin/python -m bench.w11_pairs --delay 0.2 --webhooks 5000 --pairs 3
"""

from __future__ import annotations

import argparse
import json
import statistics

from bench import scale
from bench.__main__ import fresh
from bench.env import admin_url


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.w11_pairs", description=__doc__)
    parser.add_argument("--delay", type=float, default=0.2, help="receiver answer time (s)")
    parser.add_argument("--webhooks", type=int, default=5000)
    parser.add_argument("--pairs", type=int, default=3)
    args = parser.parse_args()
    admin, _ = admin_url()
    runs: dict[str, list[float]] = {"adaptive": [], "fixed64": []}
    for pair in range(args.pairs):
        order = [(None, "adaptive"), (64, "fixed64")]
        for ceiling, name in order if pair % 2 == 0 else order[::-1]:
            result = scale.w11_slow_receiver(
                fresh(admin), args.webhooks, delay=args.delay, max_in_flight=ceiling
            )
            runs[name].append(result["per_second"])
            print(name, result["per_second"], flush=True)
    medians = {name: statistics.median(values) for name, values in runs.items()}
    print(json.dumps({"runs": runs, "medians": medians}))


if __name__ == "__main__":
    main()
