"""``make bench``: baselines and workloads W1-W10 (W6, W7: workflows), W4s, WN and the Celery baseline on a
fresh database, with progress bars; writes bench/results/<timestamp>.json and the
table in bench/README.md.

    python -m bench                 # full size
    python -m bench --only W1,W2    # some workloads
    python -m bench --scale 0.1     # everything at a tenth of its size
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import logging
import re
import sys
import time
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from bench import flows, scale, workloads
from bench.env import Database, admin_url, machine, server_settings

HERE = Path(__file__).parent
SIZES = {
    "baseline_jobs": 5000,
    "W1": 100_000,
    "W1t": 100_000,
    "W2": 10_000,
    "W3": 5_000,
    "W3t": 5_000,
    "W4_seconds": 10,
    "W5": 10_000,
    "W4S": 5_000,
    "WN": 5_000,
    "celery": 10_000,
    "W9": 1_000_000,
    "W5b": 5_000,
    "W8": 20_000,
    "W10": 20_000,
    "W10_fan_out": 100_000,
    "W11": 10_000,
    "W12": 10_000_000,
    "W6": 20_000,
    "W7": 100_000,
    "W7_recipients": 1_000,
}
GOALS = {
    "W1": "≥ 50,000 deliveries/s (≥ 100× a)",
    "W2": "≥ 3,000 deliveries/s (≥ 6× a)",
    "W3": "≥ 1,000 emails/s",
    "W1t": "≥ 70 % of W1's deliveries/s",
    "W3t": "≥ 80 % of W3's deliveries/s",
    "W4": "≥ 2,000 accepted/s; p99 in-app ≤ 50 ms, webhook ≤ 100 ms at half rate",
    "W5": "urgent p99 ≤ 250 ms behind 10,000",
    "memory": "worker ≤ 200 MB RSS through W1",
    "W4S": "p50 ≤ 1.0 ms, ≥ 1,000 accepted/s",
    "WN": "≥ 2,000 calls/s",
    "vs_celery_fanout": "≥ 10× (c)",
    "vs_celery_one_by_one": "≥ 1.5× (c)",
    "W5b": "urgent ahead of ≥ 90 % of the backlog, p99 ≤ 500 ms",
    "W8": "≥ 3,000 routed/s after ANALYZE of the empty job table",
    "W10": "inbox p99 ≤ 3 ms at 20,000 items; counts O(1) in inbox and fan-out size",
    "W11": "≥ 3,000/s from one worker to a 200 ms receiver; fast receiver not slower",
    "W12": "drop a month < 1 s; inbox and routing unchanged at 10,000,000 rows",
    "W6": "EMAILs = the unread half, exactly",
    "W7": "digests ≤ recipients × windows; every event in one digest",
}


#: Every workload; W1t and W3t are W1 and W3 with a template (their twins' ratios).
ALL = (
    "W1",
    "W1T",
    "W2",
    "W3",
    "W3T",
    "W4",
    "W5",
    "W5B",
    "W4S",
    "WN",
    "W8",
    "W9",
    "W10",
    "W11",
    "W12",
    "W6",
    "W7",
    "CELERY",
)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--only",
        default=",".join(ALL),
        help="workloads to run (comma-separated; CELERY is baseline c)",
    )
    parser.add_argument("--scale", type=float, default=1.0, help="multiply every size by this")
    parser.add_argument("--no-readme", action="store_true", help="do not rewrite bench/README.md")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    chosen = {w.strip().upper() for w in args.only.split(",") if w.strip()}
    size = {k: max(1, int(v * args.scale)) for k, v in SIZES.items()}
    console = Console()
    admin, where = admin_url()
    results: dict[str, Any] = {
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "command": "make bench"
        if args.scale == 1 and chosen == set(ALL)
        else "python -m bench " + " ".join(argv or sys.argv[1:]),
        "database": where,
        "server_settings": server_settings(admin),
        "machine": machine(),
        "sizes": size,
    }
    with Progress(
        TextColumn("{task.description}"), BarColumn(), TimeElapsedColumn(), console=console
    ) as progress:

        def step(name: str, run: Any) -> Any:
            task = progress.add_task(name, total=1.0)
            started = time.perf_counter()
            value = run(lambda fraction: progress.update(task, completed=min(fraction, 1.0)))
            progress.update(
                task, completed=1.0, description=f"{name} ({time.perf_counter() - started:.1f} s)"
            )
            return value

        results["baseline_a"] = step(
            "baseline (a) raw procrastinate",
            lambda _t: workloads.baseline_procrastinate(admin, size["baseline_jobs"]),
        )
        for name, run in (
            ("W1", lambda t: workloads.w1_inapp_fanout(fresh(admin), size["W1"], t)),
            (
                "W1T",
                lambda t: workloads.w1_inapp_fanout(fresh(admin), size["W1t"], t, templated=True),
            ),
            ("W2", lambda t: workloads.w2_webhook_fanout(fresh(admin), size["W2"], t)),
            ("W3", lambda t: workloads.w3_email_fanout(fresh(admin), size["W3"], t)),
            (
                "W3T",
                lambda t: workloads.w3_email_fanout(fresh(admin), size["W3t"], t, templated=True),
            ),
            ("W4", lambda t: workloads.w4_api_stream(fresh(admin), size["W4_seconds"], tick=t)),
            ("W5", lambda t: workloads.w5_priority(fresh(admin), size["W5"], tick=t)),
            ("W4S", lambda t: workloads.w4s_sequential(fresh(admin), size["W4S"], tick=t)),
            ("WN", lambda t: workloads.wn_notify(fresh(admin), size["WN"], tick=t)),
            ("W9", lambda t: workloads.w9_footprint(size["W9"], tick=t)),
            ("CELERY", lambda t: workloads.baseline_celery(size["celery"], tick=t)),
            ("W5B", lambda t: scale.w5b_urgent_behind_slow(fresh(admin), size["W5b"], tick=t)),
            ("W8", lambda t: scale.w8_analyzed_empty(fresh(admin), size["W8"], tick=t)),
            (
                "W10",
                lambda t: scale.w10_inbox(
                    fresh(admin), size["W10"], fan_out=size["W10_fan_out"], tick=t
                ),
            ),
            ("W11", lambda t: w11(admin, size["W11"], t)),
            (
                "W12",
                lambda t: scale.w12_partitioned(
                    fresh(admin), size["W12"], members=max(size["W12"] // 100, 100), tick=t
                ),
            ),
            ("W6", lambda t: flows.w6_unread_email(fresh(admin), size["W6"], t)),
            (
                "W7",
                lambda t: flows.w7_digest_stream(
                    fresh(admin), size["W7"], size["W7_recipients"], 10.0, t
                ),
            ),
        ):
            if name in chosen:
                results[name] = step(name, run)
        if "skipped" in results.get("CELERY", {}):
            console.print(f"[yellow]baseline (c) Celery skipped: {results['CELERY']['skipped']}")
        database = fresh(admin)
        results["baseline_b"] = step(
            "baseline (b) single-row inserts", lambda _t: workloads.baseline_inserts(database)
        )
        database.drop()
    base = results["baseline_a"]["jobs_per_s"]
    for name in ("W1", "W1T", "W2", "W3", "W3T"):
        if name in results:
            results[name]["ratio_to_a"] = round(results[name]["per_second"] / base, 1)
    celery = results.get("CELERY", {}).get("per_second")
    if celery:
        if "W2" in results:
            results["W2"]["ratio_to_celery"] = round(results["W2"]["per_second"] / celery, 1)
        if "W4S" in results:
            results["W4S"]["ratio_to_celery"] = round(results["W4S"]["delivered_per_s"] / celery, 2)
    for name, twin in (("W1T", "W1"), ("W3T", "W3")):
        if name in results and twin in results:
            results[name]["ratio_to_twin"] = round(
                results[name]["per_second"] / results[twin]["per_second"], 3
            )
    stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%SZ")
    out = HERE / "results" / f"{stamp}.json"
    out.write_text(json.dumps(results, indent=2, default=str) + "\n")
    console.print(table(results))
    console.print(f"results: {out}")
    if not args.no_readme:
        write_readme(results, out.name)
    return 0


_DATABASES: list[Database] = []


def fresh(admin: str) -> Database:
    """A new migrated database per workload, dropped at exit."""
    database = Database.create(admin)
    database.migrate()
    _DATABASES.append(database)
    return database


def rows(results: dict[str, Any]) -> list[tuple[str, str, str, str]]:
    """(workload, measured, ratio to baseline a, goal) rows for the table."""
    out = []
    a = results["baseline_a"]["jobs_per_s"]
    out.append(
        ("baseline (a) raw procrastinate, 1 no-op job per delivery", f"{a:,.0f} jobs/s", "1×", "")
    )
    if "baseline_b" in results:
        out.append(
            (
                "baseline (b) single-row INSERT tx (8 connections)",
                f"{results['baseline_b']['tx_per_s']:,.0f} tx/s",
                "",
                "",
            )
        )
    celery = results.get("CELERY")
    if celery is not None:
        out.append(
            (
                f"baseline (c) Celery + Redis, 1 task per webhook, prefork -c {celery.get('concurrency', 2)}",
                f"{celery['per_second']:,.0f} webhooks/s ({celery['seconds']} s for {celery['deliveries']:,})"
                if "per_second" in celery
                else f"skipped: {celery['skipped']}",
                "",
                "",
            )
        )
    labels = {
        "W1": "W1 topic fan-out, IN_APP",
        "W1T": "W1t the same with a template (`{{ community }}`, en + de)",
        "W2": "W2 webhook fan-out",
        "W3": "W3 email fan-out (SMTP)",
        "W3T": "W3t the same with a template (`{{ recipient.name }}`)",
    }
    for name, label in labels.items():
        if name in results:
            r = results[name]
            twin = f", {r['ratio_to_twin']:.0%} of {name[:2]}" if "ratio_to_twin" in r else ""
            out.append(
                (
                    f"{label}, {r['deliveries']:,}",
                    f"{r['per_second']:,.0f} deliveries/s ({r['seconds']} s){twin}",
                    f"{r['ratio_to_a']}×",
                    GOALS[name.replace("T", "t")],
                )
            )
    if "W4" in results:
        sat, fixed = results["W4"]["saturation"], results["W4"]["fixed_rate"]
        out.append(
            (
                "W4 API saturation (32 connections)",
                f"{sat['accepted_per_s']:,.0f} accepted/s",
                "",
                GOALS["W4"],
            )
        )
        out.append(
            (
                f"W4 at {fixed['rate']:,.0f}/s: POST → in-app p50/p95/p99",
                "/".join(f"{fixed['post_to_in_app_ms'][p]}" for p in ("p50", "p95", "p99")) + " ms",
                "",
                "",
            )
        )
        out.append(
            (
                f"W4 at {fixed['rate']:,.0f}/s: POST → webhook p50/p95/p99",
                "/".join(f"{fixed['post_to_webhook_ms'][p]}" for p in ("p50", "p95", "p99"))
                + " ms",
                "",
                "",
            )
        )
    if "W5" in results:
        r = results["W5"]
        out.append(
            (
                f"W5 urgent behind {r['backlog']:,} low: p50/p99",
                f"{r['urgent_ms']['p50']}/{r['urgent_ms']['p99']} ms",
                "",
                GOALS["W5"],
            )
        )
    if "W2" in results and "ratio_to_celery" in results["W2"]:
        out.append(
            (
                "W2 fan-out vs (c) Celery",
                f"{results['W2']['ratio_to_celery']}× (c)",
                "",
                GOALS["vs_celery_fanout"],
            )
        )
    if "W4S" in results:
        r = results["W4S"]
        out.append(
            (
                f"W4s {r['posts']:,} sequential POSTs, one keep-alive client (WEBHOOK)",
                f"{r['accepted_per_s']:,.0f} accepted/s, p50 {r['post_ms']['p50']} ms, p99 {r['post_ms']['p99']} ms",
                "",
                GOALS["W4S"],
            )
        )
        out.append(
            (
                "W4s one-by-one: first POST → last webhook received",
                f"{r['delivered_per_s']:,.0f} webhooks/s ({r['delivered_seconds']} s)"
                + (f", {r['ratio_to_celery']}× (c)" if "ratio_to_celery" in r else ""),
                "",
                GOALS["vs_celery_one_by_one"],
            )
        )
    if "WN" in results:
        r = results["WN"]
        out.append(
            (
                f"WN {r['calls']:,} postbell.notify() calls, 1 tx each, 1 connection",
                f"{r['calls_per_s']:,.0f} calls/s, p50 {r['call_ms']['p50']} ms, p99 {r['call_ms']['p99']} ms",
                "",
                GOALS["WN"],
            )
        )
    if "W9" in results:
        r = results["W9"]
        for kind, label in (("in_app", "IN_APP topic fan-out"), ("webhook", "WEBHOOK fan-out")):
            c = r[kind]
            out.append(
                (
                    f"W9 {label}, {c['deliveries']:,} (private embedded Postgres)",
                    f"{c['seconds']} s; per delivery: {c['wal_bytes_per_delivery']:,.0f} B WAL,"
                    f" {c['table_bytes_per_delivery']:,.0f} B table+index;"
                    f" {c['deliveries_per_postgres_core_s'] or 0:,.0f} deliveries per Postgres core-second",
                    "",
                    "",
                )
            )
        out.append(
            (
                "W9 connections held (web + worker, busy)",
                ", ".join(f"{k} {v}" for k, v in sorted(r["connections_busy"].items()))
                + f"; worker peak RSS {r['worker_peak_rss_mb']} MB",
                "",
                "",
            )
        )
    if "W5B" in results:
        r = results["W5B"]
        out.append(
            (
                f"W5b urgent webhook behind {r['backlog']:,} low, {r['receiver_ms']} ms receiver",
                f"ahead of {r['ahead_of_backlog_share']:.1%} of the unsent backlog"
                f" (overtaken by {r['overtaken_by']:,}); POST → arrival {r['post_to_arrival_ms']} ms",
                "",
                GOALS["W5b"],
            )
        )
    if "W8" in results:
        r = results["W8"]
        fetch = "/".join(f"{ms:,.0f}" for ms in r["fetch_ms"])
        out.append(
            (
                f"W8 {r['backlog']:,} queued after ANALYZE of the empty job table",
                f"{r['routed_per_s']:,.0f} routed/s ({r['seconds']} s); one fetch {fetch} ms",
                "",
                GOALS["W8"],
            )
        )
    if "W10" in results:
        r = results["W10"]
        inbox, detail = r["inbox_ms"], r["notification_ms"] or {}
        out.append(
            (
                f"W10 GET inbox at {r['items']:,} items; GET notification of {r['fan_out']:,}",
                f"inbox p50/p99 {inbox['p50']}/{inbox['p99']} ms;"
                f" notification p50/p99 {detail.get('p50')}/{detail.get('p99')} ms",
                "",
                GOALS["W10"],
            )
        )
    if "W12" in results:
        r = results["W12"]
        before, after = r["before"], r["after"]
        out.append(
            (
                f"W12 deliveries at {after['deliveries']:,} rows in {after['partitions']} partitions",
                f"drop a month ({r['drop']['rows']:,} rows) {r['drop']['s']} s,"
                f" {r['drop']['wal_bytes'] / 1e6:,.1f} MB WAL; row-by-row purge of the next"
                f" {r['row_purge']['s']} s, {r['row_purge']['wal_bytes'] / 1e6:,.0f} MB WAL;"
                f" inbox p50/p99 {before['inbox_ms']['p50']}/{before['inbox_ms']['p99']} →"
                f" {after['inbox_ms']['p50']}/{after['inbox_ms']['p99']} ms;"
                f" {r['members']:,}-member fan-out {before['fan_out_s']} → {after['fan_out_s']} s;"
                f" webhooks {before['webhooks_per_s']:,}/s → {after['webhooks_per_s']:,}/s;"
                f" counts agree: {r['counts_agree']}",
                "",
                GOALS["W12"],
            )
        )
    if "W11" in results:
        r = results["W11"]
        for ms in ("200", "0"):
            adaptive, fixed = r[f"{ms}ms_adaptive"], r[f"{ms}ms_fixed64"]
            out.append(
                (
                    f"W11 {adaptive['webhooks']:,} webhooks, one worker, {ms} ms receiver",
                    f"{adaptive['per_second']:,.0f}/s adaptive ({adaptive['worker_peak_rss_mb']} MB)"
                    f" vs {fixed['per_second']:,.0f}/s fixed 64 ({fixed['worker_peak_rss_mb']} MB)",
                    "",
                    GOALS["W11"],
                )
            )
    if "W6" in results:
        r = results["W6"]
        e = r["email"]
        out.append(
            (
                f"W6 workflow to {r['members']:,}: IN_APP, delay {r['delay']}, EMAIL if unread"
                " (half read)",
                f"IN_APP {r['in_app']['per_second']:,.0f} deliveries/s;"
                f" EMAIL {e['per_second'] or 0:,.0f}/s, due → sent p50/p99"
                f" {e['due_to_sent_ms']['p50'] / 1000:.2f}/{e['due_to_sent_ms']['p99'] / 1000:.2f} s;"
                f" {e['deliveries']:,} EMAILs for {r['unread']:,} unread"
                + (" (exact)" if r["exact"] else " (NOT exact)"),
                "",
                GOALS["W6"],
            )
        )
    if "W7" in results:
        r = results["W7"]
        out.append(
            (
                f"W7 {r['triggers']:,} triggers from {r['recipients']:,} recipients over"
                f" {r['stream_seconds']} s, digest {r['window_s']:g}s",
                f"{r['accepted_per_s']:,.0f} triggers/s accepted; {r['digests']:,} digests"
                f" (bound {r['digest_bound']:,} over the {r['joining_seconds']} s the engine"
                f" opened digests), {r['events_in_digests']:,} events in them;"
                f" worker CPU {r['worker_cpu_s']} s ({r['worker_cpu_ms_per_trigger']} ms/trigger),"
                f" last digest sent at {r['seconds_to_last_digest']} s",
                "",
                GOALS["W7"],
            )
        )
    for name in ("W1", "W2"):
        if name in results:
            rss = results[name]["peak_rss_mb"]
            out.append(
                (
                    f"peak RSS during {name}",
                    f"worker {rss['worker']} MB, API {rss['api']} MB",
                    "",
                    GOALS["memory"] if name == "W1" else "",
                )
            )
    return out


def w11(admin: str, webhooks: int, tick: Any) -> dict[str, Any]:
    """W11 four ways, same run: a 200 ms and an instant receiver, each with the adaptive
    limit (default ceiling) and with the fixed 64 of before (the ceiling at 64)."""
    cases = {}
    for delay in (0.2, 0.0):
        for ceiling in (None, 64):
            key = f"{round(delay * 1000)}ms_{'adaptive' if ceiling is None else 'fixed64'}"
            cases[key] = scale.w11_slow_receiver(
                fresh(admin), webhooks, delay=delay, max_in_flight=ceiling, tick=tick
            )
    return cases


def table(results: dict[str, Any]) -> Table:
    t = Table(title=f"postbell benchmarks — {results['date']}")
    for column in ("workload", "measured", "vs (a)", "goal"):
        t.add_column(column)
    for row in rows(results):
        t.add_row(*row)
    return t


def write_readme(results: dict[str, Any], filename: str) -> None:
    readme = HERE / "README.md"
    text = (
        readme.read_text() if readme.exists() else "<!-- results:start -->\n<!-- results:end -->\n"
    )
    m = results["machine"]
    lines = [
        "<!-- results:start -->",
        f"Latest run: {results['date']}, `{results['command']}`, {results['database']}, "
        f"{m['cpus']} CPUs, {m['memory_gb']} GiB, Python {m['python']} ({filename}).",
        "Server settings: "
        + ", ".join(f"`{k} = {v}`" for k, v in results.get("server_settings", {}).items())
        + ".",
        "",
        "| workload | measured | vs (a) | goal |",
        "|---|---|---|---|",
        *(f"| {a} | {b} | {c} | {d} |" for a, b, c, d in rows(results)),
        "<!-- results:end -->",
    ]
    text = re.sub(
        r"<!-- results:start -->.*<!-- results:end -->", "\n".join(lines), text, flags=re.S
    )
    readme.write_text(text)


if __name__ == "__main__":
    try:
        sys.exit(main())
    finally:
        for database in _DATABASES:
            database.drop()
