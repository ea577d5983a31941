"""The attacks of issue 25 against a real ``matchdb serve`` (SQLite, one worker), with the server's memory growth
and ``/healthz``'s worst latency measured during each.

    .venv/bin/python -m benchmarks.bench_hostile --records 50000 --json /tmp/hostile.json

The collection is seeded directly in the database (random hashes, attribute ``shard`` = i % 16), then each attack
runs once while a thread polls ``/healthz`` every 50 ms and another samples the server's resident memory (the
whole process group's RSS, from /proc). Reported per attack: the HTTP status, the seconds it took, the response
size, the peak RSS growth over the RSS before it (MiB), the RSS left after it, and the worst ``/healthz`` latency.

- ``k``: visualKNN with 100 stored ``_id`` values as queries, ``k`` = 10^9, ``fields_to_return: ["_id"]``;
- ``records flood``: 64 MB of ``{"records": [{}, {}, ...]}`` to visual_hash (four at once with ``--parallel``);
- ``$in flood``: a filter whose ``$in`` holds ~64 MB of values;
- ``filter keys``: a filter with 2,000 keys; ``$in 50k``: ``$in`` with 50,000 values;
- ``$in lengths``: six ``$in`` filters of different lengths (the statement cache's growth);
- ``$in 900``: a 900-value ``$in`` on the seeded collection.
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

from tests.attack import MIB, flood, seed, watched  # noqa: E402
from tests.servers import matchdb_server  # noqa: E402


def attacks(collection: str) -> dict[str, Callable[[httpx.Client], list[httpx.Response]]]:
    headers = {"collection-id": collection, "content-type": "application/json"}

    def post(client: httpx.Client, path: str, body: bytes | dict[str, Any]) -> httpx.Response:
        content = body if isinstance(body, bytes) else json.dumps(body).encode()
        return client.post(path, content=content, headers=headers)

    def knn_filter(values: list[Any] | dict[str, Any]) -> dict[str, Any]:
        filter_ = values if isinstance(values, dict) else {"shard": {"$in": values}}
        return {"query_record": {"_id": "r1"}, "k": 10, "filter": filter_, "fields_to_return": ["_id"]}

    records_flood = flood(b'{"records":[', b"{}", b"]}")
    in_flood = flood(b'{"query_record":{"_id":"r1"},"filter":{"shard":{"$in":[', b"1", b"]}}}")

    def parallel(client: httpx.Client, body: bytes) -> list[httpx.Response]:
        results: list[httpx.Response] = []

        def one() -> None:
            results.append(post(client, "/v2/visual_hash", body))

        threads = [threading.Thread(target=one) for _ in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        return results

    return {
        "k 10^9": lambda c: [
            post(c, "/v2/visualKNN", {"records": [{"_id": f"r{i}"} for i in range(100)], "k": 10**9,
                                      "fields_to_return": ["_id"]})
        ],
        "k 100": lambda c: [
            post(c, "/v2/visualKNN", {"records": [{"_id": f"r{i}"} for i in range(100)], "k": 100,
                                      "fields_to_return": ["_id"]})
        ],
        "records flood (64 MB)": lambda c: [post(c, "/v2/visual_hash", records_flood)],
        "records flood x4": lambda c: parallel(c, records_flood),
        "$in flood (64 MB)": lambda c: [post(c, "/v2/visualKNN", in_flood)],
        "filter 2000 keys": lambda c: [post(c, "/v2/visualKNN", knn_filter({f"a{i}": i for i in range(2000)}))],
        "$in 50000": lambda c: [post(c, "/v2/visualKNN", knn_filter(list(range(50_000))))],
        "$in six lengths": lambda c: [
            post(c, "/v2/visualKNN", knn_filter(list(range(n)))) for n in (1000, 1001, 1002, 1003, 1004, 1005)
        ],
        "$in 900": lambda c: [post(c, "/v2/visualKNN", knn_filter(list(range(900))))],
    }  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--records", type=int, default=50_000)
    parser.add_argument("--only", nargs="*", help="names of the attacks to run (default all)")
    parser.add_argument("--json", type=Path)
    parser.add_argument("--env", nargs="*", default=[], help="server settings, NAME=VALUE (MATCHDB_MAX_K=...)")
    parser.add_argument("--timeout", type=float, default=180, help="seconds to wait for one answer")
    args = parser.parse_args()
    results: dict[str, Any] = {"records": args.records}
    env = {"MATCHDB_HASH_THREADS": "1", **dict(item.split("=", 1) for item in args.env)}
    results["env"] = env
    with matchdb_server(env) as server:
        collection = seed(f"sqlite:///{server.log_path.parent / 'db.sqlite3'}", args.records)
        pgid = server.process.pid
        with httpx.Client(base_url=server.url, timeout=args.timeout) as client:
            warm = client.post("/v2/allIDs", json={"page_size": 1}, headers={"collection-id": collection})
            warm.raise_for_status()
            for name, attack in attacks(collection).items():
                if args.only and not any(part in name for part in args.only):
                    continue
                with watched(server.url, pgid) as seen:
                    started = time.perf_counter()
                    try:
                        responses = attack(client)
                        statuses = [r.status_code for r in responses]
                        size = max(len(r.content) for r in responses)
                        texts = [r.json().get("status", {}).get("text", "")[:120] for r in responses]
                    except httpx.HTTPError as exc:
                        statuses, size, texts = [], 0, [f"{type(exc).__name__}: {exc}"]
                    seconds = time.perf_counter() - started
                row = {
                    "statuses": statuses,
                    "seconds": round(seconds, 2),
                    "response_bytes": size,
                    "rss_before_mib": round(seen["rss_before"] / MIB),
                    "rss_growth_mib": round((seen["rss_peak"] - seen["rss_before"]) / MIB),
                    "rss_after_mib": round(seen["rss_after"] / MIB),
                    "healthz_worst_s": round(seen["healthz_worst"], 3),
                    "healthz_failed": int(seen["healthz_failed"]),
                    "text": texts[0] if texts else "",
                }
                results[name] = row
                print(f"{name:24} {row}", flush=True)
        lines = server.log().splitlines()
        results["longest_log_line"] = max(map(len, lines), default=0)
        print(f"longest server log line: {results['longest_log_line']} characters")
        errors = [line for line in lines if "ERROR" in line or "Error" in line]
        print("\n".join(line[:300] for line in errors[-20:]))
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
