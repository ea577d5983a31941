"""Hashing throughput of matchdb against OpenCV, Pillow and imagehash on the photo corpus.

Run from the repository root:

    .venv/bin/python benchmarks/bench_hashing.py --corpus ../shared/corpus

Every pipeline runs in this one process, single-threaded, on bytes already read into memory, so file I/O and
thread pools do not blur the comparison. Each repeat runs every pipeline over the whole set (in a rotated order),
so machine noise during a repeat hits all pipelines alike. Each image call is timed on its own with
``time.perf_counter`` (or, with ``--clock cpu``, the thread's CPU time, which leaves out the time other processes
on a shared machine take the core away) and the per-call times are aggregated afterwards, which gives both total
throughput and per-image medians. Before timing, every image's matchdb hashes are compared with OpenCV's: the
differing bits are printed with each set (a speed is only worth comparing at 0).
"""

from __future__ import annotations

import argparse
import gc
import io
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import cv2
import imagehash
import numpy as np
import PIL
import PIL.Image

from matchdb.hashing import decode_image, hash_image

REPO_ROOT = Path(__file__).resolve().parent.parent
SETS = ("photos", "large")
IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png"})
REFERENCE = "matchdb"

Pipeline = Callable[[bytes], object]


@dataclass(frozen=True)
class PipelineStats:
    """Figures for one pipeline on one set; throughputs are images per second."""

    name: str
    best_total_s: float
    median_total_s: float
    best_images_per_s: float
    median_images_per_s: float
    median_per_image_ms: float
    ratio_vs_matchdb_best: float
    ratio_vs_matchdb_median: float


@dataclass(frozen=True)
class SetReport:
    """Everything measured on one corpus subfolder."""

    name: str
    images: int
    total_mb: float
    repeats: int
    pipelines: list[PipelineStats]
    hashing_share_vs_pillow_decode: float
    hashing_share_vs_matchdb_decode: float
    differing_bits: int


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    """Read the command line; the corpus default follows the test suite's MATCHDB_TEST_CORPUS convention."""
    default_corpus = os.environ.get("MATCHDB_TEST_CORPUS") or str(REPO_ROOT.parent / "shared" / "corpus")
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--corpus", type=Path, default=Path(default_corpus), help="corpus directory (photos/, large/)")
    parser.add_argument("--repeats", type=int, default=3, help="passes over each set per pipeline (default 3)")
    parser.add_argument("--json", type=Path, default=None, help="also write all figures as JSON to this path")
    parser.add_argument(
        "--clock",
        choices=("wall", "cpu"),
        default="wall",
        help="time.perf_counter or time.thread_time (shared machine)",
    )
    args = parser.parse_args(argv)
    if args.repeats < 1:
        parser.error("--repeats must be at least 1")
    return args


def load_set(directory: Path) -> list[bytes]:
    """Read every image of a set up front so the timings measure decoding and hashing, not disk I/O."""
    paths = sorted(p for p in directory.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    if not paths:
        raise SystemExit(f"no images in {directory}")
    return [p.read_bytes() for p in paths]


def opencv_pipeline() -> Pipeline:
    """Build the OpenCV decode + BlockMeanHash(mode 1) + PHash pipeline; hashers are created once, untimed."""
    # The *_create factories exist at runtime but are missing from OpenCV's bundled stubs.
    block_mean: cv2.img_hash.ImgHashBase = cv2.img_hash.BlockMeanHash_create(1)  # type: ignore[attr-defined]
    phash: cv2.img_hash.ImgHashBase = cv2.img_hash.PHash_create()  # type: ignore[attr-defined]

    def run(data: bytes) -> object:
        img = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
        if img is None:
            raise ValueError("cv2.imdecode failed")
        return block_mean.compute(img), phash.compute(img)

    return run


def pillow_decode(data: bytes) -> object:
    """Pillow's decode alone: the floor under matchdb, which decodes with Pillow too."""
    im = PIL.Image.open(io.BytesIO(data))
    im.load()
    return im


def imagehash_phash(data: bytes) -> object:
    """imagehash's pHash including its own Pillow decode, the usual pure-Python alternative."""
    return imagehash.phash(PIL.Image.open(io.BytesIO(data)))


def differing_bits(images: Sequence[bytes]) -> int:
    """Bits in which matchdb's bmh1 and phash differ from OpenCV's over the whole set (the speed is only worth
    comparing while this is 0)."""
    block_mean: cv2.img_hash.ImgHashBase = cv2.img_hash.BlockMeanHash_create(1)  # type: ignore[attr-defined]
    phash: cv2.img_hash.ImgHashBase = cv2.img_hash.PHash_create()  # type: ignore[attr-defined]
    total = 0
    for data in images:
        ours = hash_image(data).hashes
        image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
        if image is None:
            raise ValueError("cv2.imdecode failed")
        for kind, hasher in (("bmh1", block_mean), ("phash", phash)):
            theirs = int.from_bytes(hasher.compute(image).tobytes(), "little")
            total += (ours[kind].as_int() ^ theirs).bit_count()
    return total


def build_pipelines() -> dict[str, Pipeline]:
    """All timed pipelines by name; matchdb first since every ratio is taken against it."""
    return {
        REFERENCE: hash_image,
        "opencv": opencv_pipeline(),
        "pillow_decode": pillow_decode,
        "imagehash_phash": imagehash_phash,
        "matchdb_decode": decode_image,
    }


def time_pass(fn: Pipeline, images: Sequence[bytes], clock: Callable[[], float]) -> list[float]:
    """Time each image call individually (seconds), so per-image medians exist alongside totals."""
    gc.collect()
    times: list[float] = []
    for data in images:
        start = clock()
        fn(data)
        times.append(clock() - start)
    return times


def run_set(
    pipelines: dict[str, Pipeline], images: Sequence[bytes], repeats: int, clock: Callable[[], float]
) -> dict[str, list[list[float]]]:
    """Run all pipelines per repeat, rotating their order so none always runs first or last."""
    names = list(pipelines)
    for name in names:  # warm-up: first-call imports, lazy plugin loading, allocator growth
        pipelines[name](images[0])
    timings: dict[str, list[list[float]]] = {name: [] for name in names}
    for rep in range(repeats):
        order = names[rep % len(names) :] + names[: rep % len(names)]
        for name in order:
            timings[name].append(time_pass(pipelines[name], images, clock))
        print(f"  repeat {rep + 1}/{repeats} done", file=sys.stderr, flush=True)
    return timings


def median_total(passes: list[list[float]]) -> float:
    """Median over repeats of a pass's total time."""
    return statistics.median(sum(p) for p in passes)


def median_per_image(passes: list[list[float]]) -> float:
    """Median over images of each image's median across repeats: robust to a few slow outliers."""
    per_image: list[float] = [statistics.median(calls) for calls in zip(*passes, strict=True)]
    return statistics.median(per_image)


def pipeline_stats(name: str, passes: list[list[float]], ref: list[list[float]]) -> PipelineStats:
    """Aggregate one pipeline's per-call timings; ratio > 1 means it is faster than matchdb."""
    n = len(passes[0])
    best, median = min(sum(p) for p in passes), median_total(passes)
    ref_best, ref_median = min(sum(p) for p in ref), median_total(ref)
    return PipelineStats(
        name=name,
        best_total_s=best,
        median_total_s=median,
        best_images_per_s=n / best,
        median_images_per_s=n / median,
        median_per_image_ms=median_per_image(passes) * 1000.0,
        ratio_vs_matchdb_best=ref_best / best,
        ratio_vs_matchdb_median=ref_median / median,
    )


def summarise(name: str, images: Sequence[bytes], timings: dict[str, list[list[float]]], bits: int) -> SetReport:
    """Turn raw timings into the per-set report, including matchdb's hashing share over decode."""
    ref = timings[REFERENCE]
    matchdb_total = median_total(ref)
    pillow_total = median_total(timings["pillow_decode"])
    own_decode_total = median_total(timings["matchdb_decode"])
    return SetReport(
        name=name,
        images=len(images),
        total_mb=sum(len(d) for d in images) / 1e6,
        repeats=len(ref),
        pipelines=[pipeline_stats(p, passes, ref) for p, passes in timings.items()],
        hashing_share_vs_pillow_decode=(matchdb_total - pillow_total) / pillow_total,
        hashing_share_vs_matchdb_decode=(matchdb_total - own_decode_total) / own_decode_total,
        differing_bits=bits,
    )


def cpu_model() -> str:
    """CPU model name from /proc/cpuinfo, falling back to platform when it is unavailable."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def machine_facts() -> dict[str, Any]:
    """Facts needed to compare runs across machines and library versions."""
    return {
        "cpu": cpu_model(),
        "nproc": len(os.sched_getaffinity(0)),
        "python": platform.python_version(),
        "numpy": np.__version__,
        "pillow": PIL.__version__,
        "opencv": cv2.__version__,
        "imagehash": str(imagehash.__version__),
        "opencv_threads": cv2.getNumThreads(),
        "load_average": os.getloadavg()[0],
    }


def print_facts(facts: dict[str, Any]) -> None:
    """Print the machine facts block."""
    print("machine:")
    for key, value in facts.items():
        print(f"  {key:<15} {value}")


def print_report(report: SetReport) -> None:
    """Print one set's table, ratios against matchdb, and the hashing share."""
    print(f"\n== {report.name}: {report.images} images, {report.total_mb:.1f} MB, {report.repeats} repeats ==")
    print(f"  {'pipeline':<16} {'img/s best':>11} {'img/s median':>13} {'ms/img median':>14}")
    for s in report.pipelines:
        print(
            f"  {s.name:<16} {s.best_images_per_s:>11.1f} {s.median_images_per_s:>13.1f} {s.median_per_image_ms:>14.2f}"
        )
    print("  throughput relative to matchdb (median repeat; best repeat in brackets):")
    for s in report.pipelines:
        if s.name == REFERENCE:
            continue
        inverse = 1.0 / s.ratio_vs_matchdb_median
        print(
            f"    {s.name} / matchdb = {s.ratio_vs_matchdb_median:.2f} ({s.ratio_vs_matchdb_best:.2f})"
            f"    matchdb speed vs {s.name}: x{inverse:.2f}"
        )
    print(f"  matchdb hashing share on top of Pillow decode:   {report.hashing_share_vs_pillow_decode:+.1%}")
    print(f"  matchdb hashing share on top of matchdb decode:  {report.hashing_share_vs_matchdb_decode:+.1%}")
    print(f"  bits differing from OpenCV (bmh1 + phash, all images): {report.differing_bits}")


def write_json(path: Path, facts: dict[str, Any], corpus: Path, reports: list[SetReport]) -> None:
    """Write every printed figure as JSON for later comparison between runs."""
    payload = {"machine": facts, "corpus": str(corpus), "sets": [asdict(r) for r in reports]}
    path.write_text(json.dumps(payload, indent=2) + "\n")


def main(argv: Sequence[str] | None = None) -> int:
    """Load the corpus, time every pipeline on each set, print the comparison and optionally save JSON."""
    args = parse_args(argv)
    cv2.setNumThreads(1)
    corpus: Path = args.corpus.resolve()
    facts = machine_facts()
    print_facts(facts)
    print(f"corpus: {corpus}")
    pipelines = build_pipelines()
    reports: list[SetReport] = []
    for set_name in SETS:
        images = load_set(corpus / set_name)
        print(f"timing {set_name} ({len(images)} images)...", file=sys.stderr, flush=True)
        bits = differing_bits(images)
        clock = time.thread_time if args.clock == "cpu" else time.perf_counter
        reports.append(summarise(set_name, images, run_set(pipelines, images, args.repeats, clock), bits))
        print_report(reports[-1])
    if args.json is not None:
        write_json(args.json, facts, corpus, reports)
        print(f"\nwrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
