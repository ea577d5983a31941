"""Cold start: the time from a fresh Python process to its first hash, matchdb against OpenCV.

Run from the repository root:

    .venv/bin/python benchmarks/bench_cold_start.py --corpus ../shared/corpus

Each measurement is a new process that imports the library, then hashes one corpus photo (bmh1 + phash) and
reports its own clock: the import, the first hash (for matchdb: loading or compiling the numba kernels), the CPU
time of both (what a busy shared machine does not inflate) and a second hash. matchdb is measured with an empty
numba cache (the first run on a machine: compile) and with the cache that run filled (every later process: load);
both use a temporary ``NUMBA_CACHE_DIR``, so the project's own cache is neither used nor touched. Medians over
``--repeats`` processes of each kind.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent

_MATCHDB = """
import json, sys, time
start, cpu_start = time.perf_counter(), time.process_time()
from matchdb.hashing import hash_image
imported = time.perf_counter()
data = open(sys.argv[1], "rb").read()
hash_image(data)
first, cpu = time.perf_counter(), time.process_time() - cpu_start
hash_image(data)
second = time.perf_counter() - first
print(json.dumps({"import": imported - start, "first": first - imported, "cpu": cpu, "second": second}))
"""

_OPENCV = """
import json, sys, time
start, cpu_start = time.perf_counter(), time.process_time()
import cv2, numpy as np
cv2.setNumThreads(1)
imported = time.perf_counter()
def run(data):
    image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    return cv2.img_hash.BlockMeanHash_create(1).compute(image), cv2.img_hash.PHash_create().compute(image)
data = open(sys.argv[1], "rb").read()
run(data)
first, cpu = time.perf_counter(), time.process_time() - cpu_start
run(data)
second = time.perf_counter() - first
print(json.dumps({"import": imported - start, "first": first - imported, "cpu": cpu, "second": second}))
"""


def measure(code: str, image: Path, env: dict[str, str]) -> dict[str, float]:
    result = subprocess.run(
        [sys.executable, "-c", code, str(image)], env={**os.environ, **env}, capture_output=True, text=True, check=True
    )
    figures: dict[str, float] = json.loads(result.stdout.splitlines()[-1])
    return figures


def main(argv: Sequence[str] | None = None) -> int:
    default_corpus = os.environ.get("MATCHDB_TEST_CORPUS") or str(REPO_ROOT.parent / "shared" / "corpus")
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--corpus", type=Path, default=Path(default_corpus))
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)
    image = sorted((args.corpus / "photos").glob("*.jpg"))[0]
    runs: dict[str, list[dict[str, float]]] = {"matchdb, empty cache": [], "matchdb, cache filled": [], "opencv": []}
    print(f"image: {image.name}; load average at start: {os.getloadavg()[0]:.2f}")
    for _ in range(args.repeats):
        with tempfile.TemporaryDirectory() as cache:
            env = {"NUMBA_CACHE_DIR": cache}
            runs["matchdb, empty cache"].append(measure(_MATCHDB, image, env))
            runs["matchdb, cache filled"].append(measure(_MATCHDB, image, env))
        runs["opencv"].append(measure(_OPENCV, image, {}))
    print(f"{'process':<24} {'import s':>9} {'first hash s':>13} {'import + first s':>17} {'same, CPU s':>12}")
    for name, figures in runs.items():
        imported = statistics.median(f["import"] for f in figures)
        first = statistics.median(f["first"] for f in figures)
        both = statistics.median(f["import"] + f["first"] for f in figures)
        cpu = statistics.median(f["cpu"] for f in figures)
        print(f"{name:<24} {imported:>9.2f} {first:>13.2f} {both:>17.2f} {cpu:>12.2f}")
    second = {name: statistics.median(f["second"] for f in figures) * 1000 for name, figures in runs.items()}
    print("second hash, ms: " + ", ".join(f"{name} {ms:.1f}" for name, ms in second.items()))
    print(f"medians of {args.repeats} processes each; load average at end: {os.getloadavg()[0]:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
