"""Hashing throughput on every core: matchdb in threads (the server's hash pool), matchdb in processes (``ingest -j``)
and OpenCV in a process pool, on the same files, at 1, 2 and all cores.

Run from the repository root:

    .venv/bin/python benchmarks/bench_hashing_cores.py --corpus ../shared/corpus

Each task reads one file and hashes it (bmh1 + phash); pools are started and warmed (imports, numba kernels, OpenCV
hashers) before the clock starts. Every repeat runs all configurations in a rotated order, so machine noise hits
them alike; the figure is the median repeat. OpenCV runs with ``cv2.setNumThreads(1)`` in each worker, as one
would deploy it for throughput.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Executor, ProcessPoolExecutor, ThreadPoolExecutor
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from matchdb.hashing import hash_image, warm_up

REPO_ROOT = Path(__file__).resolve().parent.parent
SETS = ("photos", "large")
IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png"})

_opencv_hashers: list[Any] = []


def matchdb_task(path: str) -> bytes:
    hashes = hash_image(Path(path).read_bytes()).hashes
    return hashes["bmh1"].data + hashes["phash"].data


def opencv_start() -> None:
    """Worker initializer: one thread inside OpenCV, hashers created once per worker."""
    cv2.setNumThreads(1)
    # The *_create factories exist at runtime but are missing from OpenCV's bundled stubs.
    _opencv_hashers[:] = [cv2.img_hash.BlockMeanHash_create(1), cv2.img_hash.PHash_create()]  # type: ignore[attr-defined]


def opencv_task(path: str) -> bytes:
    image = cv2.imdecode(np.frombuffer(Path(path).read_bytes(), np.uint8), cv2.IMREAD_COLOR)
    return b"".join(hasher.compute(image).tobytes() for hasher in _opencv_hashers)


def make_pools(cores: int) -> dict[str, tuple[Executor, Callable[[str], bytes]]]:
    """The three configurations at ``cores`` workers, started and warmed."""
    fork = get_context("fork")
    pools: dict[str, tuple[Executor, Callable[[str], bytes]]] = {
        "matchdb threads": (ThreadPoolExecutor(cores), matchdb_task),
        "matchdb processes": (ProcessPoolExecutor(cores, mp_context=fork, initializer=warm_up), matchdb_task),
        "opencv processes": (ProcessPoolExecutor(cores, mp_context=fork, initializer=opencv_start), opencv_task),
    }
    for pool, _ in pools.values():
        list(pool.map(int, range(cores * 4)))  # start every worker (initializers run)
    return pools


def run(pool: Executor, task: Callable[[str], bytes], paths: Sequence[str]) -> tuple[float, float]:
    """Wall seconds, and the CPU seconds this process used meanwhile (the thread pool's work; not the children's)."""
    start, cpu = time.perf_counter(), time.process_time()
    for _ in pool.map(task, paths, chunksize=4):
        pass
    return time.perf_counter() - start, time.process_time() - cpu


def measure(paths: Sequence[str], cores: int, repeats: int) -> dict[str, float]:
    """Median images/s of each configuration, and how many cores the hash threads kept busy ("threads busy")."""
    pools = make_pools(cores)
    try:
        names = list(pools)
        for name in names:  # warm-up pass: page cache, kernels, allocator
            run(*pools[name], paths[: 8 * cores])
        seconds: dict[str, list[float]] = {name: [] for name in names}
        busy: list[float] = []
        for rep in range(repeats):
            for name in names[rep % len(names) :] + names[: rep % len(names)]:
                wall, cpu = run(*pools[name], paths)
                seconds[name].append(wall)
                if name == "matchdb threads":
                    busy.append(cpu / wall)
        rates = {name: len(paths) / statistics.median(times) for name, times in seconds.items()}
        return {**rates, "threads busy": statistics.median(busy)}
    finally:
        for pool, _ in pools.values():
            pool.shutdown()


def main(argv: Sequence[str] | None = None) -> int:
    default_corpus = os.environ.get("MATCHDB_TEST_CORPUS") or str(REPO_ROOT.parent / "shared" / "corpus")
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--corpus", type=Path, default=Path(default_corpus))
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)
    warm_up()  # before forking: the process pools inherit the compiled kernels
    cpus = len(os.sched_getaffinity(0))
    print(f"cpus: {cpus}, load average at start: {os.getloadavg()[0]:.2f}")
    for set_name in SETS:
        folder = args.corpus.resolve() / set_name
        paths = sorted(str(p) for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        print(f"\n== {set_name}: {len(paths)} images, {args.repeats} repeats (images/s, median repeat) ==")
        header = (
            f"  {'cores':>5} {'matchdb threads':>16} {'matchdb processes':>18} {'opencv processes':>17} {'ratio':>6}"
        )
        print(header + f" {'threads busy':>13}")
        for cores in sorted({1, 2, cpus}):
            rates = measure(paths, cores, args.repeats)
            best = max(rates["matchdb threads"], rates["matchdb processes"])
            print(
                f"  {cores:>5} {rates['matchdb threads']:>16.1f} {rates['matchdb processes']:>18.1f}"
                f" {rates['opencv processes']:>17.1f} {best / rates['opencv processes']:>6.2f}"
                f" {rates['threads busy']:>13.2f}",
                flush=True,
            )
    print(f"\nload average at end: {os.getloadavg()[0]:.2f}; ratio = best matchdb / opencv at the same cores;")
    print("threads busy = CPU seconds of the hash threads / wall seconds (above 1: they ran in parallel, no GIL)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
