"""Inputs of ``matchdb dedupe`` and their hashes: which images, and one row of arrays per image.

Inputs are found with :func:`matchdb.service.inputs.discover` (folders, image files, CSV/JSONL manifests), plus what
a folder dedupe also meets: URLs given as arguments and ``.txt`` lists (one path or URL a line). Each argument is
discovered on its own, because ingest's rule that an ``_id`` is unique does not apply here: two folders may both
hold ``a.jpg``. What must be unique is the file itself: the same file reached twice would match itself at distance
0 and one copy would be "removed", so later mentions of a file (or URL) already seen are dropped.

Hashing runs in worker processes that get paths, not bytes; URLs are downloaded here through the SSRF-guarded
fetcher (as ``matchdb ingest`` does) and only their bytes go to a worker. Results land in preallocated arrays, so
100k images cost a few MB (121 bytes per hash, 8 hashes with ``dihedral``), not 100k Python objects.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import os
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Executor, ThreadPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import numpy.typing as npt

from matchdb.config import Settings
from matchdb.dedupe.provenance import Provenance, describe
from matchdb.errors import MatchdbError
from matchdb.geometric import Prepared, prepare
from matchdb.hashing import decode_image, hash_pixels
from matchdb.hashing.dihedral import hash_dihedral
from matchdb.hashing.value import packed_size
from matchdb.pool import process_pool
from matchdb.service.inputs import discover
from matchdb.service.records import fetcher_from_settings

URL_SCHEMES = ("http://", "https://")
LIST_SUFFIX = ".txt"
ORIENTATIONS = 8  # hashes per image with ``dihedral`` (the dihedral group of the square)


@dataclass(frozen=True)
class Source:
    """One input image: a local ``path`` or else a ``url``; ``label`` is how every report names it."""

    label: str
    path: Path | None = None
    url: str | None = None
    error: str | None = None  # known unusable before any I/O (a bad manifest row)


class InputError(MatchdbError):
    """An argument that is neither an existing path nor an http(s) URL: a usage error, nothing is read."""


def is_url(text: str) -> bool:
    return text.lower().startswith(URL_SCHEMES)


def collect_sources(arguments: Sequence[str], exclude: Path | None = None) -> tuple[list[Source], int]:
    """The images behind ``arguments`` in argument order (a folder's sorted by relative path), each file or URL
    once, none under ``exclude`` (the ``--move-to`` folder, so a rerun does not find the files it moved). Also
    returns how many repeated mentions were dropped."""
    missing = [a for a in arguments if not is_url(a) and not os.path.lexists(a)]
    if missing:
        raise InputError(f"no such file or folder: {', '.join(missing)}")
    found: list[Source] = []
    for argument in arguments:
        if is_url(argument):
            found.append(Source(argument, url=argument))
        elif Path(argument).suffix.lower() == LIST_SUFFIX and Path(argument).is_file():
            found.extend(_list_sources(Path(argument)))
        else:
            for item in discover([Path(argument)], unique_ids=False):
                if item.error is not None:
                    found.append(Source(item.source, error=item.error))
                else:
                    found.append(Source(str(item.path) if item.path else item.source, item.path, item.url))
    fence = os.path.realpath(exclude) if exclude is not None else None
    seen: set[str] = set()
    unique: list[Source] = []
    fenced = 0
    for source in found:
        if source.path is not None:
            identity = os.path.realpath(source.path)
            if fence is not None and (identity == fence or identity.startswith(fence + os.sep)):
                fenced += 1  # moved there by an earlier run: not an input, and not a repeat either
                continue
        else:
            identity = source.url or ""
        if source.error is None and identity in seen:
            continue
        seen.add(identity)
        unique.append(source)
    return unique, len(found) - len(unique) - fenced


def _list_sources(listing: Path) -> list[Source]:
    """A ``.txt`` list: one image path (relative to the list) or URL a line; blank lines and ``#`` comments skipped."""
    try:
        lines = listing.read_text(encoding="utf-8-sig").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        return [Source(str(listing), error=f"cannot read list: {exc}")]
    out: list[Source] = []
    for line in lines:
        entry = line.strip()
        if not entry or entry.startswith("#"):
            continue
        if is_url(entry):
            out.append(Source(entry, url=entry))
        else:
            path = Path(entry) if Path(entry).is_absolute() else listing.parent / entry
            out.append(Source(str(path), path=path))
    return out


# --- hashing (runs in worker processes) ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Hashed:
    """What a worker sends back: the image's size, its file size and time, and its hash(es) packed end to end."""

    width: int
    height: int
    nbytes: int
    mtime: float | None
    packed: bytes  # one hash, or the 8 orientations' hashes (orientation 0 = the image as given)
    provenance: Provenance
    geometric: Prepared | None = None  # signature and query, with ``--geometric``


def hash_data(
    data: bytes, kind: str, dihedral: bool, max_pixels: int, mtime: float | None = None, geometric: bool = False
) -> Hashed:
    pixels = decode_image(data, max_pixels)
    if dihedral:
        packed = b"".join(variant[kind].data for variant in hash_dihedral(pixels, (kind,)))
    else:
        packed = hash_pixels(pixels, (kind,))[kind].data
    prepared = prepare(pixels) if geometric else None
    return Hashed(pixels.width, pixels.height, len(data), mtime, packed, describe(data, pixels), prepared)


def hash_path(path: str, kind: str, dihedral: bool, max_pixels: int, geometric: bool = False) -> Hashed:
    with open(path, "rb") as handle:
        mtime = os.fstat(handle.fileno()).st_mtime
        data = handle.read()
    return hash_data(data, kind, dihedral, max_pixels, mtime, geometric)


@contextlib.contextmanager
def hash_executor(jobs: int) -> Iterator[Executor]:
    """Worker processes (started before any thread, see :mod:`matchdb.pool`), or one thread for ``jobs == 1``: no
    process start-up for small runs, and tests can run the command in-process."""
    if jobs > 1:
        with process_pool(jobs) as pool:
            yield pool
    else:
        with ThreadPoolExecutor(max_workers=1) as thread:
            yield thread


# --- the hash table ---------------------------------------------------------------------------------------------------


@dataclass
class HashTable:
    """Row ``i`` describes ``sources[i]``. ``packed`` is ``(n, hashes per image, bytes per hash)``; rows whose
    image failed have ``ok`` False and their reason in ``errors``. ``mtime`` is NaN where unknown (URLs)."""

    kind: str
    sources: list[Source]
    packed: npt.NDArray[np.uint8]
    ok: npt.NDArray[np.bool_]
    width: npt.NDArray[np.int64]
    height: npt.NDArray[np.int64]
    nbytes: npt.NDArray[np.int64]
    mtime: npt.NDArray[np.float64]
    errors: dict[int, str]
    colour: npt.NDArray[np.bool_]
    camera: npt.NDArray[np.bool_]
    formats: list[str]
    geometric: dict[int, Prepared] = field(default_factory=dict)  # row -> signature and query (--geometric)

    @classmethod
    def empty(cls, kind: str, sources: list[Source], orientations: int) -> HashTable:
        n = len(sources)
        return cls(
            kind,
            sources,
            np.zeros((n, orientations, packed_size(kind)), np.uint8),
            np.zeros(n, np.bool_),
            np.zeros(n, np.int64),
            np.zeros(n, np.int64),
            np.zeros(n, np.int64),
            np.full(n, np.nan),
            {},
            np.zeros(n, np.bool_),
            np.zeros(n, np.bool_),
            [""] * n,
        )

    def store(self, row: int, result: Hashed | str) -> None:
        if isinstance(result, str):
            self.errors[row] = result
            return
        self.packed[row] = np.frombuffer(result.packed, np.uint8).reshape(self.packed.shape[1:])
        self.ok[row] = True
        self.width[row], self.height[row], self.nbytes[row] = result.width, result.height, result.nbytes
        self.mtime[row] = math.nan if result.mtime is None else result.mtime
        self.colour[row] = result.provenance.colour
        self.camera[row] = result.provenance.camera
        self.formats[row] = result.provenance.format
        if result.geometric is not None:
            self.geometric[row] = result.geometric


def hash_sources(
    sources: list[Source],
    kind: str,
    *,
    dihedral: bool,
    executor: Executor,
    jobs: int,
    settings: Settings,
    on_progress: Callable[[], object] = lambda: None,
    geometric: bool = False,
) -> HashTable:
    """Hash every source with ``executor``; a failure is recorded for its row and the others go on."""
    table = HashTable.empty(kind, sources, ORIENTATIONS if dihedral else 1)
    window = max(64, 8 * jobs, 2 * settings.fetch_concurrency)

    async def main() -> None:
        slots = asyncio.Semaphore(window)
        downloads = asyncio.Semaphore(settings.fetch_concurrency)
        loop = asyncio.get_running_loop()
        async with fetcher_from_settings(settings) as fetcher:

            async def one(row: int, source: Source) -> None:
                try:
                    result: Hashed | str
                    if source.error is not None:
                        result = source.error
                    elif source.path is not None:
                        path = str(source.path)
                        result = await loop.run_in_executor(
                            executor, hash_path, path, kind, dihedral, settings.max_pixels, geometric
                        )
                    else:
                        assert source.url is not None
                        async with downloads:
                            data = await fetcher.fetch(source.url)
                        result = await loop.run_in_executor(
                            executor, hash_data, data, kind, dihedral, settings.max_pixels, None, geometric
                        )
                except BrokenProcessPool:
                    raise  # every later image would fail the same way
                except OSError as exc:
                    result = exc.strerror or str(exc)
                except MatchdbError as exc:
                    result = str(exc)
                except Exception as exc:  # an unforeseen decoder error must not stop the other images
                    result = f"{type(exc).__name__}: {exc}"
                finally:
                    slots.release()
                table.store(row, result)
                on_progress()

            async with asyncio.TaskGroup() as group:
                for row, source in enumerate(sources):
                    await slots.acquire()
                    group.create_task(one(row, source))

    asyncio.run(main())
    return table
