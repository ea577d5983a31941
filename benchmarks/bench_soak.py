"""A soak: mixed reads and writes on ``matchdb serve --workers 2`` for minutes, with the server's memory over time
(issue 24).

    .venv/bin/python benchmarks/bench_soak.py --database sqlite --duration 600
    MATCHDB_TEST_DATABASE_URL=postgresql://postgres:postgres@127.0.0.1:5432/test \\
        .venv/bin/python benchmarks/bench_soak.py --database postgres --duration 600

A real server on 127.0.0.1 over a fresh database, driven by tests/load.py's clients (default 20, each its own
keep-alive connection): inserts racing on shared ``_id`` values, inserts and deletes racing on another pool,
updates, gets, visualKNN and visual_hash. Two phases:

* **grow** (the first ``--grow`` share of the time): batches of new ``_id`` values too, so the collection grows;
* **steady** (the rest): the new-``_id`` batches are replaced by batches that upsert ``_id`` values stored during
  the growth (new images for old records), so the collection keeps its size and the server's memory can be
  judged flat.

Every 15 s (``--every``) a line: requests, 5xx, dropped connections, p50/p99 of that window, the collection's size
and the server's memory (resident and proportional set size summed over the supervisor and its workers). At the
end: totals, the steady phase's memory after its warm-up (first and last windows, and the largest), and the
database and both workers' indexes checked against what was acknowledged. ``--json`` writes it all.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import platform
import random
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import psutil

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))

from benchmarks.bench_reliability import database, verify  # noqa: E402
from tests.load import ANSWER_ALL, DEFAULT_MIX, Images, Load, Result, make_images, new_collection  # noqa: E402
from tests.servers import matchdb_server  # noqa: E402

GROW_MIX = {**DEFAULT_MIX}
STEADY_MIX = {**{k: v for k, v in DEFAULT_MIX.items() if k != "insert_new"}, "insert_old": DEFAULT_MIX["insert_new"]}


class SoakLoad(Load):
    """tests/load.py's mix plus ``insert_old``: a batch of upserts to ``_id`` values acknowledged earlier."""

    known: list[str]

    def __post_init__(self) -> None:
        self.known = []

    def _request(
        self, op: str, rng: random.Random, tag: str
    ) -> tuple[str, dict[str, Any], tuple[str, ...], tuple[int, ...]]:
        if op != "insert_old" or len(self.known) < 5:
            return super()._request("insert_new" if op == "insert_old" else op, rng, tag)
        picks = tuple(rng.randrange(len(self.images.b64)) for _ in range(5))
        ids = tuple(rng.sample(self.known, 5))
        records = [{"_id": i, "_base64": self.images.b64[p]} for i, p in zip(ids, picks, strict=True)]
        return "/v2/insert", {"records": records}, ids, picks


@dataclass
class Window:
    """One report line's figures."""

    at: float
    phase: str
    requests: int
    server_errors: int
    dropped: int
    p50_ms: float
    p99_ms: float
    records: int
    rss_mb: float
    pss_mb: float
    by_status: dict[str, int] = field(default_factory=dict)


def server_memory(pid: int) -> tuple[float, float]:
    """(RSS, PSS) in MB of the process ``pid`` and its descendants (PSS counts shared pages once in all)."""
    rss = pss = 0
    try:
        root = psutil.Process(pid)
        processes = [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return 0.0, 0.0
    for process in processes:
        try:
            info = process.memory_full_info()
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
        rss += info.rss
        pss += getattr(info, "pss", info.rss)
    return rss / 2**20, pss / 2**20


def window(results: Sequence[Result], at: float, phase: str, records: int, memory: tuple[float, float]) -> Window:
    answered = np.array([r.seconds for r in results if r.http is not None] or [0.0]) * 1000
    by_status: dict[str, int] = {}
    for r in results:
        key = "dropped" if r.http is None else str(r.http)
        by_status[key] = by_status.get(key, 0) + 1
    return Window(
        at=round(at, 1),
        phase=phase,
        requests=len(results),
        server_errors=sum(1 for r in results if r.http is not None and r.http >= 500),
        dropped=by_status.get("dropped", 0),
        p50_ms=round(float(np.percentile(answered, 50)), 1),
        p99_ms=round(float(np.percentile(answered, 99)), 1),
        records=records,
        rss_mb=round(memory[0], 1),
        pss_mb=round(memory[1], 1),
        by_status=by_status,
    )


async def collection_size(client: httpx.AsyncClient, collection: str) -> int:
    """The collection's record count from ``GET /v2/collections`` (-1 if that fails)."""
    try:
        listing = (await client.get("/v2/collections")).json()["collections"]
    except (httpx.HTTPError, ValueError, KeyError):
        return -1
    return next((int(c["record_count"]) for c in listing if c["id"] == collection), -1)


async def soak(
    args: argparse.Namespace, url: str, pid: int, collection: str, images: Images
) -> tuple[list[Window], list[Result]]:
    load = SoakLoad(url, collection, images, clients=args.clients, seed=args.seed, mix=dict(GROW_MIX))
    stop = asyncio.Event()
    started = time.monotonic()
    task = asyncio.create_task(load.run(args.duration, stop))
    windows: list[Window] = []
    seen = 0
    async with httpx.AsyncClient(base_url=url, timeout=30) as probe:
        while not task.done():
            await asyncio.sleep(min(args.every, max(0.0, started + args.duration - time.monotonic())) or 0.1)
            at = time.monotonic() - started
            phase = "grow" if at <= args.grow * args.duration else "steady"
            if phase == "steady" and "insert_new" in load.mix:
                load.known = [i for r in load.results if r.op == "insert_new" and r.acknowledged for i in r.ext_ids]
                load.mix = dict(STEADY_MIX)
            results = load.results[seen:]
            seen += len(results)
            records = await collection_size(probe, collection)
            line = window(results, at, phase, records, server_memory(pid))
            windows.append(line)
            print(
                f"  {line.at:6.0f} s {line.phase:<6} {line.requests:>6} req {line.server_errors:>3} 5xx "
                f"{line.dropped:>3} dropped  p50 {line.p50_ms:6.1f} ms p99 {line.p99_ms:7.1f} ms  "
                f"{line.records:>7} records  RSS {line.rss_mb:7.1f} MB  PSS {line.pss_mb:7.1f} MB",
                flush=True,
            )
            if time.monotonic() - started >= args.duration:
                stop.set()
    return windows, await task


def steady_verdict(windows: Sequence[Window], warmup: float) -> dict[str, Any]:
    """The steady phase's memory after ``warmup`` seconds of it: first, last and largest PSS, and the growth."""
    steady = [w for w in windows if w.phase == "steady"]
    if not steady:
        return {}
    begin = steady[0].at
    after = [w for w in steady if w.at >= begin + warmup] or steady[-1:]
    first, last = after[0].pss_mb, after[-1].pss_mb
    largest = max(w.pss_mb for w in after)
    return {
        "windows": len(after),
        "first_pss_mb": first,
        "last_pss_mb": last,
        "max_pss_mb": largest,
        "growth_percent": round(100 * (largest - first) / first, 1) if first else None,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--database", choices=("sqlite", "postgres"), default="sqlite")
    parser.add_argument("--duration", type=float, default=600.0, help="seconds of load in all")
    parser.add_argument("--grow", type=float, default=0.4, help="share of the time the collection grows")
    parser.add_argument("--warmup", type=float, default=60.0, help="steady seconds before memory is judged")
    parser.add_argument("--clients", type=int, default=20)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--every", type=float, default=15.0, help="seconds per report line")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path, help="write the figures here")
    args = parser.parse_args()
    images = make_images(48)
    print(
        f"soak: {args.database}, --workers {args.workers}, {args.clients} clients, {args.duration:g} s "
        f"({args.grow:.0%} growing), {platform.python_version()}, {psutil.cpu_count()} cores"
    )
    with (
        database(args.database) as url,
        matchdb_server({"MATCHDB_DATABASE_URL": url, **ANSWER_ALL}, args.workers) as server,
    ):
        collection = new_collection(server.url, "soak")
        windows, results = asyncio.run(soak(args, server.url, server.process.pid, collection, images))
        results_total = sum(w.requests for w in windows)
        errors = sum(w.server_errors for w in windows)
        dropped = sum(w.dropped for w in windows)
        verdict = steady_verdict(windows, args.warmup)
        print(f"total: {results_total} requests, {errors} 5xx, {dropped} dropped")
        if verdict:
            print(
                f"steady phase after {args.warmup:g} s of warm-up: PSS {verdict['first_pss_mb']} MB -> "
                f"{verdict['last_pss_mb']} MB (largest {verdict['max_pss_mb']} MB, "
                f"{verdict['growth_percent']}% over the first)"
            )
        checks = verify(url, server.url, collection, results, images)
        tracebacks = server.log().count("Traceback")
        print(f"server log: {tracebacks} tracebacks")
    if args.json:
        out = {
            "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
            "windows": [w.__dict__ for w in windows],
            "steady": verdict,
            "totals": {"requests": results_total, "server_errors": errors, "dropped": dropped},
            "tracebacks": tracebacks,
            "checks": checks,
        }
        args.json.write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
