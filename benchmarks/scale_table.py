"""The growth table of docs/benchmarks.md from ``bench_scale.py --json`` files (one per collection size).

    .venv/bin/python benchmarks/scale_table.py /tmp/scale-1m.json /tmp/scale-3m.json /tmp/scale-10m.json

Prints Markdown: the load and memory rows, then p50 / p99 per query kind and engine, one column per file, so the
figures in the docs are copied by a program, not by hand.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

KINDS = ("(a) phash r<=4", "(b) bmh1 near-dup k=1 5%", "(c) bmh1 k=10 unrelated")
ENGINES = (
    "index (in-process)",
    "CollectionService.knn (in-process)",
    "HTTP visualKNN",
    "numpy scan",
    "FAISS IndexBinaryFlat",
)


def _millions(run: dict[str, Any]) -> str:
    return f"{run['records'] / 1e6:g}M"


def _query(run: dict[str, Any], kind: str, engine: str) -> dict[str, Any] | None:
    rows = [*run["queries"], *run.get("http", {}).get("rows", [])]
    found = [r for r in rows if r["query"] == kind and (r["engine"] == engine or r["engine"].startswith(engine))]
    return found[0] if found else None


def table(runs: list[dict[str, Any]]) -> str:
    head = "| | " + " | ".join(_millions(r) for r in runs) + " |"
    lines = [head, "|---|" + "---|" * len(runs)]

    def row(label: str, cells: list[str]) -> None:
        lines.append(f"| {label} | " + " | ".join(cells) + " |")

    row("index load from Postgres (in-process), s", [f"{r['load_seconds']:.1f}" for r in runs])
    served = [f"{r['http']['load_seconds']:.1f}" if "http" in r else "" for r in runs]
    row("`matchdb serve` start until ready, s", served)
    row("index bytes/record kept (tracemalloc)", [f"{r['index_bytes_per_record']:.0f}" for r in runs])
    row("process RSS growth, bytes/record", [f"{r['rss_growth_bytes_per_record']:.0f}" for r in runs])
    row(
        "`matchdb serve` RSS, whole process, bytes/record",
        [f"{sum(r['http']['rss_bytes'].values()) / r['records']:.0f}" if "http" in r else "" for r in runs],
    )
    row("database bytes/record", [f"{r['database_bytes_per_record']:.0f}" for r in runs])
    row("writes through `upsert_records`, rows/s", [f"{r['write_rows_per_s']:,.0f}" for r in runs])
    row("idle catch-up p50 ms", [f"{r['idle_catch_up']['p50_ms']:.2f}" for r in runs])
    for kind in KINDS:
        for engine in ENGINES:
            cells = []
            for r in runs:
                q = _query(r, kind, engine)
                cells.append("" if q is None else f"{q['p50_ms']:.2f} / {q['p99_ms']:.1f}")
            row(f"{kind}: {engine}, p50 / p99 ms", cells)
        pruning = [_query(r, kind, "FAISS IVF") or _query(r, kind, "FAISS MultiHash") for r in runs]
        row(
            f"{kind}: FAISS pruning index, p50 / p99 ms (recall)",
            ["" if q is None else f"{q['p50_ms']:.2f} / {q['p99_ms']:.1f} ({100 * q['recall']:.1f}%)" for q in pruning],
        )
    row(
        "near-duplicate recall vs brute force (fresh copies)",
        [f"{r['recall']['recalled']:,} / {r['recall']['queries']:,}" if "recall" in r else "" for r in runs],
    )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", type=Path, nargs="+")
    args = parser.parse_args(argv)
    runs = sorted((json.loads(path.read_text()) for path in args.runs), key=lambda r: int(r["records"]))
    print(table(runs))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
