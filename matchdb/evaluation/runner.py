"""Hash every original and every transformed copy, in worker processes, with a progress bar.

One task is one source image: the worker decodes it once, makes each copy from those pixels, and sends back only
hashes (a few hundred bytes per copy), never pixels. Distances are computed afterwards, in this process, in bulk
(:mod:`matchdb.evaluation.distances`).
"""

from __future__ import annotations

import contextlib
import os
import sys
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future, as_completed
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm import tqdm

from matchdb.errors import MatchdbError
from matchdb.evaluation.baselines import baseline_hashes
from matchdb.evaluation.geometric_hashes import entries as geometric_entries
from matchdb.evaluation.transforms import make_copy
from matchdb.hashing import Pixels, decode_image, hash_pixels
from matchdb.hashing.dihedral import hash_dihedral
from matchdb.pool import process_pool
from matchdb.service.inputs import folder_images

#: What ``matchdb eval DIR`` picks up (the extensions ``matchdb ingest`` takes).


@dataclass(frozen=True)
class Source:
    """One original: ``key`` is its path relative to the folder, which names it in every report."""

    key: str
    path: Path


def find_images(root: Path) -> list[Source]:
    """Image files under ``root`` (recursively, hidden files and folders skipped), sorted by relative path so a
    run, and ``--limit``, always picks the same images. A file reached twice (a symlink to another one) counts
    once: two names for one image would be a "distinct" pair at distance 0 and drag every threshold down."""
    found = [Source(key, path) for key, path in folder_images(root)]
    seen: set[str] = set()
    unique = []
    for source in found:
        real = os.path.realpath(source.path)
        if real not in seen:
            seen.add(real)
            unique.append(source)
    return unique


@dataclass(frozen=True)
class Plan:
    """What every worker must know; small and picklable."""

    hash_types: tuple[str, ...]  # matchdb's own (bmh1, phash)
    baselines: tuple[str, ...]  # names from matchdb.evaluation.baselines
    transforms: tuple[str, ...]
    dihedral: bool
    seed: int
    max_pixels: int
    geometric: bool = False  # also measure the geometric matcher (matchdb.evaluation.geometric)

    @property
    def hash_names(self) -> tuple[str, ...]:
        return self.hash_types + self.baselines


@dataclass(frozen=True)
class SourceHashes:
    """The hashes of one original and its copies. Each value is a list of packed hashes: one, or the 8 dihedral
    orientations (element 0 the image as given) in dihedral mode."""

    key: str
    width: int
    height: int
    original: dict[str, list[bytes]]
    copies: dict[str, dict[str, list[bytes]]]  # transform -> hash name -> hashes
    copy_errors: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class SourceFailure:
    key: str
    error: str


@dataclass(frozen=True)
class RunResult:
    plan: Plan
    sources: list[SourceHashes]  # in the order of the sources given, failures left out
    failures: list[SourceFailure]
    seconds: float


def pixels_to_image(pixels: Pixels) -> Image.Image:
    """The decoded pixels as a Pillow image (RGB, or L for grey), as the viewer sees them."""
    array = pixels.array if pixels.is_grey else pixels.array[..., :3]
    return Image.fromarray(np.ascontiguousarray(array))


def load_original(path: Path, max_pixels: int) -> tuple[Pixels, Image.Image]:
    """Decode an original the way the hashes see it; raises OSError or ImageError."""
    pixels = decode_image(path.read_bytes(), max_pixels)
    return pixels, pixels_to_image(pixels)


def _hashes(pixels: Pixels, plan: Plan, original: bool = False) -> dict[str, list[bytes]]:
    out: dict[str, list[bytes]] = {}
    if plan.geometric:
        out.update(geometric_entries(pixels, original))
    if plan.hash_types:
        if plan.dihedral:
            variants = hash_dihedral(pixels, plan.hash_types)
            out.update({kind: [variant[kind].data for variant in variants] for kind in plan.hash_types})
        else:
            plain = hash_pixels(pixels, plan.hash_types)
            out.update({kind: [plain[kind].data] for kind in plan.hash_types})
    if plan.baselines:
        image = pixels_to_image(pixels)
        out.update({name: baseline_hashes(name, image, plan.dihedral) for name in plan.baselines})
    return out


def hash_source(source: Source, plan: Plan) -> SourceHashes | SourceFailure:
    """Worker task: the original's hashes and those of each copy. A bad original fails the source; a copy that
    cannot be made or decoded is recorded and the others go on."""
    try:
        pixels, image = load_original(source.path, plan.max_pixels)
    except (OSError, MatchdbError) as exc:
        return SourceFailure(source.key, exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc))
    original = _hashes(pixels, plan, original=True)
    copies: dict[str, dict[str, list[bytes]]] = {}
    errors: dict[str, str] = {}
    for name in plan.transforms:
        try:
            data = make_copy(image, name, plan.seed, source.key)
            copies[name] = _hashes(decode_image(data, plan.max_pixels), plan)
        except (OSError, ValueError, MatchdbError) as exc:
            errors[name] = f"{type(exc).__name__}: {exc}"
    return SourceHashes(source.key, pixels.width, pixels.height, original, copies, errors)


def run(
    sources: Sequence[Source],
    plan: Plan,
    jobs: int,
    progress: bool = True,
    task: Callable[[Source, Plan], SourceHashes | SourceFailure] = hash_source,
) -> RunResult:
    """Hash every source and its copies with ``jobs`` processes (1: in this process)."""
    started = time.perf_counter()
    results: dict[int, SourceHashes | SourceFailure] = {}
    with contextlib.ExitStack() as stack:
        pool = stack.enter_context(process_pool(jobs)) if jobs > 1 else None  # before the bar starts its thread
        bar = stack.enter_context(
            tqdm(total=len(sources), unit="image", file=sys.stderr, disable=not progress, desc="hashing")
        )
        if pool is None:
            for index, source in enumerate(sources):
                results[index] = task(source, plan)
                bar.update()
        else:
            futures: dict[Future[SourceHashes | SourceFailure], int] = {
                pool.submit(task, source, plan): index for index, source in enumerate(sources)
            }
            for future in as_completed(futures):
                results[futures[future]] = future.result()
                bar.update()
    ordered = [results[index] for index in range(len(sources))]
    return RunResult(
        plan,
        [item for item in ordered if isinstance(item, SourceHashes)],
        [item for item in ordered if isinstance(item, SourceFailure)],
        time.perf_counter() - started,
    )
