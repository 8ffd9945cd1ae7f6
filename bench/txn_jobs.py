"""Many ``postbell.notify()`` calls in one host transaction (issue 19, migration 0029).

``python -m bench.txn_jobs --calls 2000 --rounds 4``: per round, on fresh databases of
the bench server, one transaction of ``--calls`` calls with one worker running,
twice: ``shared`` (postbell as it is: one routing job per priority and transaction)
and ``single`` (``defer_route`` replaced by what it did before 0029: one job per
call), in alternating order. Prints, per run: the route jobs the transaction
deferred, its time and calls/s, WAL bytes per call (``pg_current_wal_lsn`` around
it), and first call -> every notification routed."""

from __future__ import annotations

import argparse
import json
import time

import psycopg

from bench.env import Database, admin_url, processes, start_worker
from bench.workloads import wait

#: defer_route as it behaves without 0029's shared jobs: a job per call
SINGLE = """
CREATE OR REPLACE FUNCTION postbell.defer_route(p_id uuid, p_priority text,
                                                p_run_at timestamptz, p_join boolean)
    RETURNS void LANGUAGE plpgsql SET search_path = pg_catalog, postbell AS $$
BEGIN
    PERFORM procrastinate_defer_jobs_v1(ARRAY[route_job(p_id, p_priority, p_run_at)]);
END $$
"""


def run(admin: str, mode: str, calls: int) -> dict[str, object]:
    database = Database.create(admin, "pbbench_txn")
    try:
        database.migrate()
        if mode == "single":
            database.execute(SINGLE)
        with processes() as started:
            start_worker(started, database.url)
            time.sleep(1.5)
            with psycopg.connect(database.url) as conn:
                row = conn.execute("SELECT pg_current_wal_lsn()").fetchone()
                assert row
                began = time.perf_counter()
                for i in range(calls):
                    conn.execute(
                        'SELECT postbell.notify(ARRAY[%s], \'{"message": "hi"}\'::jsonb)',
                        (f"m{i}",),
                    )
                # the transaction's own jobs, seen from inside it before the commit
                jobs = conn.execute(
                    "SELECT count(*) FROM postbell.procrastinate_jobs"
                    " WHERE task_name = 'postbell.route'"
                ).fetchone()
                conn.commit()
                elapsed = time.perf_counter() - began
                wal = conn.execute(
                    "SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), %s)", (row[0],)
                ).fetchone()
                conn.commit()
            wait(
                lambda: (
                    database.scalar("SELECT count(*) FROM notifications WHERE routed_at IS NULL")
                    == 0
                ),
                timeout=600,
                every=0.02,
            )
            total = time.perf_counter() - began
        assert wal and jobs
        return {
            "mode": mode,
            "calls": calls,
            "route_jobs": int(jobs[0]),
            "transaction_s": round(elapsed, 3),
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
    args = parser.parse_args()
    admin, _ = admin_url()
    for r in range(args.rounds):
        for mode in ("single", "shared") if r % 2 == 0 else ("shared", "single"):
            print(json.dumps(run(admin, mode, args.calls)), flush=True)


if __name__ == "__main__":
    main()
