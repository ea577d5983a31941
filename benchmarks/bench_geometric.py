"""The geometric matcher at scale, in-process (issue 29): storage per record, signature time, query p50/p99.

    nice .venv/bin/python benchmarks/bench_geometric.py --corpus /work/shared/corpus/photos --records 1000000

The index holds ``--records`` signatures: those of the corpus photos (their originals) at random rows, the rest
filler (random 64-bit words with 32 bits set, as a real window hash has). Queries are edited copies of corpus
photos (a one-sided crop, a corner crop, a turn with black and with cropped corners): each asks for its k=10
nearest, and the answer is checked to hold its original first. Times: the signature of an image (decoded pixels ->
38 window hashes) and a query's variants, per image; a query's search (the compiled scan over every record,
then the k nearest), p50 and p99; an insert into the index.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

from matchdb.evaluation.runner import find_images, pixels_to_image
from matchdb.evaluation.transforms import make_copy
from matchdb.geometric import SIGNATURE_BYTES, GeometricIndex, prepare, query, signature_words
from matchdb.hashing import decode_image

EDITS = ("crop-left-20", "corner-br-15", "rotate-5", "rotate-crop-5", "crop-10")


def _filler(rng: np.random.Generator, rows: int) -> np.ndarray:
    """Random words with exactly 32 of 64 bits set: the shape of a DCT-sign hash."""
    out = np.empty((rows, 38), np.uint64)
    bits = np.uint64(1) << np.arange(64, dtype=np.uint64)
    for start in range(0, rows, 65536):
        n = min(65536, rows - start)
        keys = rng.random((n * 38, 64))
        chosen = np.argsort(keys, axis=1)[:, :32]
        out[start : start + n] = np.bitwise_or.reduce(bits[chosen], axis=1).reshape(n, 38)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--corpus", type=Path, required=True)
    parser.add_argument("--records", type=int, default=1_000_000)
    parser.add_argument("--images", type=int, default=60, help="corpus photos used as originals and queries")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    sources = find_images(args.corpus)[: args.images]
    pixels = [decode_image(s.path.read_bytes(), 50_000_000) for s in sources]
    started = time.perf_counter()
    originals = np.stack([signature_words(p) for p in pixels])
    signature_ms = (time.perf_counter() - started) * 1000 / len(pixels)
    started = time.perf_counter()
    for p in pixels:
        prepare(p)
    prepare_ms = (time.perf_counter() - started) * 1000 / len(pixels)

    filler = _filler(rng, args.records - len(pixels))
    rows = rng.choice(args.records, len(pixels), replace=False)
    sigs = np.empty((args.records, 38), np.uint64)
    mask = np.ones(args.records, bool)
    mask[rows] = False
    sigs[mask] = filler
    sigs[rows] = originals
    index = GeometricIndex()
    started = time.perf_counter()
    index.add_many(np.arange(args.records, dtype=np.int64), sigs)
    load_s = time.perf_counter() - started
    inserts = []
    for i in range(200):
        t = time.perf_counter()
        index.add(args.records + i, filler[i])
        inserts.append(time.perf_counter() - t)
    for i in range(200):
        index.remove(args.records + i)

    times, found, total = [], 0, 0
    index.search(query(pixels[0]), 64, 10)  # compile / load the kernel
    for i, p in enumerate(pixels):
        image = pixels_to_image(p)
        for edit in EDITS:
            q = query(decode_image(make_copy(image, edit, 0, sources[i].key), 50_000_000))
            t = time.perf_counter()
            answer = index.search(q, 64, 10)
            times.append(time.perf_counter() - t)
            total += 1
            found += int(answer[0][0] == rows[i])
    ms = np.array(times) * 1000
    result = {
        "records": args.records,
        "bytes_per_record": SIGNATURE_BYTES,
        "signature_ms_per_image": round(signature_ms, 2),
        "signature_and_query_ms_per_image": round(prepare_ms, 2),
        "load_seconds": round(load_s, 2),
        "insert_us_p50": round(float(np.median(inserts)) * 1e6, 1),
        "queries": total,
        "original_first": int(found),
        "query_ms_p50": round(float(np.percentile(ms, 50)), 1),
        "query_ms_p99": round(float(np.percentile(ms, 99)), 1),
        "query_ms_min": round(float(ms.min()), 1),  # the least disturbed by other work on a shared machine
        "load_average": [round(x, 2) for x in os.getloadavg()],
    }
    text = json.dumps(result, indent=1)
    print(text)
    if args.json:
        args.json.write_text(text + "\n")
    sys.exit(0 if found == total else 1)


if __name__ == "__main__":
    main()
