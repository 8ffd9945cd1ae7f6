"""W4's saturation half on its own, for before/after pairs: a fresh migrated database,
`postbell serve` and `postbell worker`, then `bench.loadgen` with 32 connections for
``--seconds`` (IN_APP notifications); prints accepted/s as one JSON line.

    .venv/bin/python -m bench.w4_burst --seconds 8

Run it alternately in two checkouts (each with its own virtualenv) on a noisy machine:
only pairs taken minutes apart compare.
"""

from __future__ import annotations

import argparse
import json
import time

from bench import workloads
from bench.env import Database, admin_url, processes, start_api, start_worker


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.w4_burst")
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--concurrency", type=int, default=32)
    args = parser.parse_args()
    admin, _ = admin_url()
    database = Database.create(admin)
    database.migrate()
    try:
        with processes() as started:
            api = start_api(started, database.url)
            start_worker(started, database.url)
            time.sleep(1.0)
            rows = workloads._loadgen(api, args.seconds, concurrency=args.concurrency)
            accepted = [r for r in rows if r["status"] == 202]
            print(
                json.dumps(
                    {
                        "accepted_per_s": round(len(accepted) / args.seconds, 1),
                        "refused": len(rows) - len(accepted),
                    }
                )
            )
    finally:
        database.drop()


if __name__ == "__main__":
    main()
