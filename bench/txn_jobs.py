"""Many ``postbell.notify()`` calls in one host transaction (issue 19, migration 0029).

``python -m bench.txn_jobs --calls 2000 --rounds 4``: per round, on fresh databases of
the bench server, ``--calls`` calls with one worker running, in one transaction (or
a commit every ``--per-transaction`` calls: 1 is WN's one call per transaction),
twice: ``shared`` (postbell as it is: one routing job per priority and transaction)
and ``single`` (``defer_route`` replaced by what it did before 0029: one job per
call), in alternating order. Prints, per run: the route jobs the transaction
deferred, the calls' time and calls/s, WAL bytes per call (``pg_current_wal_lsn`` around
it), and first call -> every notification routed."""

from __future__ import annotations

import argparse
import json
import time

import psycopg

from bench.env import Database, admin_url, processes, start_worker
from bench.workloads import wait

NOTIFY = 'SELECT postbell.notify(ARRAY[%s], \'{"message": "hi"}\'::jsonb)'

#: defer_route as it behaves without 0029's shared jobs: a job per call
SINGLE = """
CREATE OR REPLACE FUNCTION postbell.defer_route(p_id uuid, p_priority text,
                                                p_run_at timestamptz, p_join boolean)
    RETURNS void LANGUAGE plpgsql AS $$
BEGIN
    PERFORM procrastinate_defer_jobs_v1(ARRAY[route_job(p_id, p_priority, p_run_at)]);
END $$
"""


def run(admin: str, mode: str, calls: int, per_transaction: int) -> dict[str, object]:
    database = Database.create(admin, "pbbench_txn")
    try:
        database.migrate()
        if mode == "single":
            database.execute(SINGLE)
        with processes() as started:
            start_worker(started, database.url)
            time.sleep(1.5)
            with psycopg.connect(database.url, autocommit=True) as conn:
                lsn = conn.execute("SELECT pg_current_wal_lsn()").fetchone()
                first = conn.execute(
                    "SELECT nextval('postbell.procrastinate_jobs_id_seq')"
                ).fetchone()
                assert lsn and first
                began = time.perf_counter()
                for start in range(0, calls, per_transaction):
                    with conn.transaction():
                        for i in range(start, min(start + per_transaction, calls)):
                            conn.execute(NOTIFY, (f"m{i}",))
                elapsed = time.perf_counter() - began
                wal = conn.execute(
                    "SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), %s)", (lsn[0],)
                ).fetchone()
                # route jobs deferred: how far the job id sequence moved (the
                # notifications are IN_APP: no deliver jobs)
                last = conn.execute(
                    "SELECT nextval('postbell.procrastinate_jobs_id_seq')"
                ).fetchone()
                assert wal and last
            wait(
                lambda: (
                    database.scalar("SELECT count(*) FROM notifications WHERE routed_at IS NULL")
                    == 0
                ),
                timeout=600,
                every=0.02,
            )
            total = time.perf_counter() - began
        return {
            "mode": mode,
            "calls": calls,
            "per_transaction": per_transaction,
            "route_jobs": int(last[0]) - int(first[0]) - 1,
            "seconds": round(elapsed, 3),
            "calls_per_s": round(calls / elapsed),
            "wal_bytes_per_call": round(float(wal[0]) / calls),
            "to_all_routed_s": round(total, 3),
        }
    finally:
        database.drop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument(
        "--per-transaction", type=int, default=0, help="calls per transaction (0: all in one)"
    )
    args = parser.parse_args()
    admin, _ = admin_url()
    for r in range(args.rounds):
        for mode in ("single", "shared") if r % 2 == 0 else ("shared", "single"):
            per = args.per_transaction or args.calls
            print(json.dumps(run(admin, mode, args.calls, per)), flush=True)


if __name__ == "__main__":
    main()
