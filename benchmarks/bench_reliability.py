"""Reliability under load and faults (issue 14), the long version of the fault suite, with figures.

Run from the repository root, one scenario and one database per run:

    .venv/bin/python benchmarks/bench_reliability.py --scenario load --database sqlite
    .venv/bin/python benchmarks/bench_reliability.py --scenario load --database postgres
    .venv/bin/python benchmarks/bench_reliability.py --scenario outage
    .venv/bin/python benchmarks/bench_reliability.py --scenario sigterm --database sqlite

A real ``matchdb serve --workers N`` (default 2) on 127.0.0.1 over a fresh database (a temporary SQLite file, or a
new database on the Postgres of ``MATCHDB_TEST_DATABASE_URL``), driven by tests/load.py's clients (default 50, each
its own keep-alive connection) mixing visualKNN, visual_hash, get, update, delete and inserts where several clients
upsert the same ``_id`` at once (a pool of 16 ``_id`` values).

* ``load``: ``--duration`` seconds (default 60). Prints requests, statuses, 5xx, dropped connections, p50/p99 per
  operation, then checks the database against what was acknowledged and both workers' indexes against the
  database.
* ``outage``: a private Postgres (tests/private_pg.py; the shared one is never stopped) stopped for ``--outage``
  seconds (default 10) after ``--before`` seconds of load, then started, with ``--after`` seconds of load after it.
  Prints what clients saw during the outage, how long after the database's return full service resumed, and the
  count of acknowledged writes found stored.
* ``sigterm``: SIGTERM to the server (its supervisor) after ``--duration`` seconds of load; prints its exit status,
  the time it took to drain and exit, and the count of acknowledged inserts found stored.

The client and the server share this machine's cores: latencies include the client's own queueing.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import signal
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))

from matchdb.storage.database import make_engine, upgrade  # noqa: E402
from tests.conftest import fresh_postgres_database  # noqa: E402
from tests.load import (  # noqa: E402
    ANSWER_ALL,
    Images,
    Load,
    Result,
    check_index,
    check_stored,
    make_images,
    new_collection,
    partial_batches,
    stored_rows,
    summarize,
    summarize_outage,
)
from tests.private_pg import private_postgres  # noqa: E402
from tests.servers import RunningServer, matchdb_server  # noqa: E402


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scenario", choices=("load", "outage", "sigterm"), default="load")
    parser.add_argument("--database", choices=("sqlite", "postgres"), default="sqlite")
    parser.add_argument("--clients", type=int, default=50)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--duration", type=float, default=60.0, help="seconds of load (load, sigterm)")
    parser.add_argument("--before", type=float, default=10.0, help="outage: seconds of load before the stop")
    parser.add_argument("--outage", type=float, default=10.0, help="outage: seconds Postgres stays stopped")
    parser.add_argument("--after", type=float, default=20.0, help="outage: seconds of load after the start")
    parser.add_argument("--database-timeout", type=float, default=10.0, help="MATCHDB_DATABASE_TIMEOUT")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path, default=None, help="also write the figures as JSON to this path")
    args = parser.parse_args()
    if args.scenario == "outage":
        args.database = "postgres"
    return args


@contextlib.contextmanager
def database(kind: str) -> Iterator[str]:
    """A fresh database URL: a temporary SQLite file, or a new database on MATCHDB_TEST_DATABASE_URL's server."""
    if kind == "sqlite":
        with tempfile.TemporaryDirectory(prefix="bench-reliability-") as tmp:
            yield f"sqlite:///{Path(tmp) / 'db.sqlite3'}"
        return
    server = os.environ.get("MATCHDB_TEST_DATABASE_URL")
    if not server:
        raise SystemExit("--database postgres needs MATCHDB_TEST_DATABASE_URL (a Postgres server on 127.0.0.1)")
    url, drop = fresh_postgres_database(server)
    try:
        yield url
    finally:
        drop()


def per_operation(results: list[Result]) -> dict[str, dict[str, Any]]:
    table: dict[str, dict[str, Any]] = {}
    for op in sorted({r.op for r in results}):
        mine = [r for r in results if r.op == op]
        answered = np.array([r.seconds for r in mine if r.http is not None] or [0.0]) * 1000
        statuses: dict[str, int] = {}
        for r in mine:
            key = "dropped" if r.http is None else str(r.http)
            statuses[key] = statuses.get(key, 0) + 1
        table[op] = {
            "requests": len(mine),
            "statuses": statuses,
            "p50_ms": round(float(np.percentile(answered, 50)), 1),
            "p99_ms": round(float(np.percentile(answered, 99)), 1),
        }
    return table


def print_table(table: dict[str, dict[str, Any]]) -> None:
    print(f"  {'operation':<12} {'requests':>8} {'p50 ms':>8} {'p99 ms':>8}  statuses")
    for op, row in table.items():
        statuses = ", ".join(f"{k}: {v}" for k, v in sorted(row["statuses"].items()))
        print(f"  {op:<12} {row['requests']:>8} {row['p50_ms']:>8.0f} {row['p99_ms']:>8.0f}  {statuses}")


def verify(url: str, server_url: str | None, collection: str, results: list[Result], images: Images) -> dict[str, Any]:
    """The database against what was acknowledged; both workers' indexes against the database (if it runs)."""
    rows = stored_rows(url, collection)
    check = check_stored(rows, results, images)
    partial = partial_batches(rows, results)
    index_problems = check_index(server_url, collection, rows, images) if server_url else []
    out = {
        "acknowledged_records": check.acknowledged_records,
        "stored_records": check.stored,
        "acknowledged_unique_records": check.acknowledged_new,
        "stored_unique_records": check.stored_new,
        "problems": check.problems[:20],
        "batches_in_part": partial[:20],
        "index_problems": index_problems[:20],
    }
    verdict = "OK" if not (check.problems or partial or index_problems) else "PROBLEMS"
    print(
        f"  database: of {check.acknowledged_new} acknowledged records with an _id of their own "
        f"{check.stored_new} are stored; {check.acknowledged_records} acknowledged records in all, "
        f"{check.stored} stored (racing upserts and deletes share _id values); "
        f"{len(check.problems)} problems, {len(partial)} batches stored in part"
        + (f"; index vs database: {len(index_problems)} differences" if server_url else "")
        + f" -> {verdict}"
    )
    for line in (check.problems + partial + index_problems)[:10]:
        print(f"    {line}")
    return out


def start_server(url: str, workers: int, timeout: float) -> contextlib.AbstractContextManager[RunningServer]:
    return matchdb_server(
        {"MATCHDB_DATABASE_URL": url, "MATCHDB_DATABASE_TIMEOUT": str(timeout), **ANSWER_ALL}, workers
    )


def run_load(args: argparse.Namespace, images: Images) -> dict[str, Any]:
    with database(args.database) as url, start_server(url, args.workers, args.database_timeout) as server:
        collection = new_collection(server.url, "bench")
        load = Load(server.url, collection, images, clients=args.clients, seed=args.seed)
        started = time.monotonic()
        results = asyncio.run(load.run(args.duration))
        summary = summarize(results, time.monotonic() - started)
        print(f"{args.database}, --workers {args.workers}, {args.clients} clients x {args.duration:g} s:")
        print(f"  {summary.line()}")
        table = per_operation(results)
        print_table(table)
        checks = verify(url, server.url, collection, results, images)
        tracebacks = server.log().count("Traceback")
        print(f"  server log: {tracebacks} tracebacks")
    return {"summary": asdict(summary), "operations": table, "checks": checks, "tracebacks": tracebacks}


def run_outage(args: argparse.Namespace, images: Images) -> dict[str, Any]:
    if not os.environ.get("MATCHDB_TEST_DATABASE_URL"):
        raise SystemExit("--scenario outage needs MATCHDB_TEST_DATABASE_URL set (its server is not stopped)")
    with private_postgres() as pg:
        url, _ = fresh_postgres_database(pg.server_url)
        with start_server(url, args.workers, args.database_timeout) as server:
            collection = new_collection(server.url, "bench")
            load = Load(server.url, collection, images, clients=args.clients, seed=args.seed)

            async def scenario() -> tuple[list[Result], float, float]:
                stop = asyncio.Event()
                task = asyncio.create_task(load.run(10**6, stop))
                await asyncio.sleep(args.before)
                stopped_at = time.monotonic()
                await asyncio.to_thread(pg.stop)
                await asyncio.sleep(args.outage)
                await asyncio.to_thread(pg.start)
                back_at = time.monotonic()
                await asyncio.sleep(args.after)
                stop.set()
                return await task, stopped_at, back_at

            results, stopped_at, back_at = asyncio.run(scenario())
            total = args.before + args.outage + args.after
            summary = summarize(results, total)
            outage = summarize_outage(results, stopped_at, back_at)
            print(
                f"postgres (private) stopped {args.outage:g} s after {args.before:g} s of load, "
                f"{args.after:g} s more after its start; --workers {args.workers}, {args.clients} clients:"
            )
            print(f"  {summary.line()}")
            print(f"  {outage.line()}")
            firsts = ", ".join(f"{op} {s:.2f} s" for op, s in sorted(outage.first_ok_after.items()))
            print(f"  first success of a request sent after the database's return: {firsts}")
            print(f"  503 answers without Retry-After: {outage.missing_retry_after}")
            print_table(per_operation(results))
            checks = verify(url, server.url, collection, results, images)
            tracebacks = server.log().count("Traceback")
            print(f"  server log: {tracebacks} tracebacks")
    return {"summary": asdict(summary), "outage": asdict(outage), "checks": checks, "tracebacks": tracebacks}


def run_sigterm(args: argparse.Namespace, images: Images) -> dict[str, Any]:
    with database(args.database) as url:
        engine = make_engine(url)
        upgrade(engine)
        engine.dispose()
        with start_server(url, args.workers, args.database_timeout) as server:
            collection = new_collection(server.url, "bench")
            load = Load(server.url, collection, images, clients=args.clients, seed=args.seed)

            async def scenario() -> tuple[list[Result], float, float, int]:
                stop = asyncio.Event()
                task = asyncio.create_task(load.run(10**6, stop))
                await asyncio.sleep(args.duration)
                sent_at = time.monotonic()
                os.kill(server.process.pid, signal.SIGTERM)
                status = await asyncio.to_thread(server.process.wait, 120)
                exited_at = time.monotonic()
                stop.set()
                return await task, sent_at, exited_at, status

            results, sent_at, exited_at, status = asyncio.run(scenario())
        summary = summarize(results, args.duration)
        before = [r for r in results if r.started < sent_at]
        cut = [r for r in before if r.http is None]
        cut_before = len(cut)
        in_flight = sum(1 for r in before if r.ended > sent_at and r.http is not None)
        after = Counter(r.error or str(r.http) for r in results if r.started >= sent_at)
        print(f"{args.database}, --workers {args.workers}, {args.clients} clients, SIGTERM after {args.duration:g} s:")
        print(f"  {summary.line()}")
        print(
            f"  exit status {status} after {exited_at - sent_at:.2f} s; {in_flight} requests in flight at SIGTERM "
            f"answered, {cut_before} sent before it unanswered"
            + "".join(f"\n    unanswered: {r.op} sent {sent_at - r.started:.3f} s before it: {r.error}" for r in cut)
        )
        print(f"  requests sent after SIGTERM: {dict(after)} (a refused connection stores nothing: the client retries)")
        checks = verify(url, None, collection, results, images)
    return {
        "summary": asdict(summary),
        "exit_status": status,
        "exit_seconds": exited_at - sent_at,
        "answered_in_flight": in_flight,
        "unanswered_sent_before": cut_before,
        "checks": checks,
    }


def main() -> None:
    args = parse_args()
    images = make_images()
    print(f"# {platform.node()}, {os.cpu_count()} CPUs, Python {platform.python_version()}")
    runner = {"load": run_load, "outage": run_outage, "sigterm": run_sigterm}[args.scenario]
    figures = runner(args, images)
    if args.json is not None:
        args.json.write_text(json.dumps({"args": vars(args) | {"json": str(args.json)}, **figures}, indent=2))


if __name__ == "__main__":
    main()
