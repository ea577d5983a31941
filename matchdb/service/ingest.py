"""Bulk ingest of folders, image files and manifests into a collection, straight into the database (no server).

The steps are separate functions so each can be tested and reasoned about alone:

* :func:`matchdb.service.inputs.discover` turns the command line's paths into :class:`Item` values.
* :func:`run_ingest` looks up what is stored already (by ``_id``), reads files and checksums them in worker
  processes, hashes only images whose checksum changed, downloads URLs in this process (asyncio, bounded), and
  writes in batches, each batch one transaction. A rerun therefore costs one read and one SHA-256 per file.
* :func:`file_outcome` and :func:`bytes_outcome` are the per-item work (checksum, hash if changed, compare with what
  is stored), :func:`lookup_stored` and :func:`write_records` the storage side; both the local pipeline and
  :func:`ingest_chunk` (one chunk of a cluster ingest, run by a Dask worker: :mod:`matchdb.service.cluster`) are
  built from them, so the two behave the same.
* :class:`Summary` and :class:`FailureReport` are what the CLI shows and writes.

Worker processes get file paths, not bytes: a folder of large photos would otherwise cross the process boundary
twice. Only downloaded bytes (which exist in this process anyway) are sent to a worker.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import re
import signal
import time
from collections import Counter
from collections.abc import Callable, Sequence
from concurrent.futures import Executor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import IO, Literal

from sqlalchemy import Engine

from matchdb.config import Settings
from matchdb.errors import MatchdbError
from matchdb.fetch import Fetcher
from matchdb.geometric import signature
from matchdb.hashing import HASH_TYPES, decode_image, hash_image, hash_pixels
from matchdb.hashing.thumbnail import thumbnail_bytes
from matchdb.service.inputs import Item
from matchdb.service.records import fetcher_from_settings
from matchdb.storage.collections import collection_is_geometric
from matchdb.storage.records import NewRecord, StoredRecord, get_records, upsert_records
from matchdb.storage.transactions import Writer

_LOOKUP_CHUNK = 500  # _id values per stored-state query

Status = Literal["new", "updated", "unchanged", "failed"]


# --- hashing (runs in worker processes) ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Hashes:
    """What a worker sends back for a changed image: small, whatever the image's size."""

    checksum: str
    width: int
    height: int
    bmh1: bytes
    phash: bytes
    thumbnail: bytes | None = None
    geometric: bytes | None = None  # the geometric signature (geometric collections)


def hash_bytes(data: bytes, checksum: str, max_pixels: int, thumbnail: bool = False, geometric: bool = False) -> Hashes:
    """Hash an image (and make its thumbnail and, for a geometric collection, its signature from the same pixels)."""
    if geometric:
        pixels = decode_image(data, max_pixels)
        hashes = hash_pixels(pixels, HASH_TYPES)
        picture = thumbnail_bytes(pixels) if thumbnail else None
        bmh1, phash = hashes["bmh1"].data, hashes["phash"].data
        return Hashes(checksum, pixels.width, pixels.height, bmh1, phash, picture, signature(pixels))
    image = hash_image(data, HASH_TYPES, max_pixels, thumbnail)
    bmh1, phash = image.hashes["bmh1"].data, image.hashes["phash"].data
    return Hashes(checksum, image.width, image.height, bmh1, phash, image.thumbnail)


def hash_file(
    path: str, known_checksum: str | None, max_pixels: int, thumbnail: bool = False, geometric: bool = False
) -> Hashes | str:
    """Read and checksum a file; hash it only if the checksum differs from ``known_checksum`` (else return the
    checksum alone), so rerunning an ingest over unchanged files never decodes an image."""
    data = Path(path).read_bytes()
    checksum = hashlib.sha256(data).hexdigest()
    if checksum == known_checksum:
        return checksum
    return hash_bytes(data, checksum, max_pixels, thumbnail, geometric)


def file_outcome(
    item: Item, stored: StoredRecord | None, max_pixels: int, thumbnail: bool = False, geometric: bool = False
) -> _Outcome:
    """What ingesting a file item amounts to (new, updated, unchanged, failed), with the record to write: the
    per-item work of every ingest, run in a worker process of the local pool or on a cluster worker."""
    assert item.path is not None
    try:
        known = stored.checksum if stored else None
        return _compare(item, stored, hash_file(str(item.path), known, max_pixels, thumbnail, geometric))
    except Exception as exc:
        return _failed(item, exc)


def bytes_outcome(
    item: Item,
    stored: StoredRecord | None,
    data: bytes,
    max_pixels: int,
    thumbnail: bool = False,
    geometric: bool = False,
) -> _Outcome:
    """:func:`file_outcome` for downloaded bytes: hashed only if their checksum differs from the stored one."""
    checksum = hashlib.sha256(data).hexdigest()
    try:
        unchanged = stored is not None and stored.checksum == checksum
        hashed = checksum if unchanged else hash_bytes(data, checksum, max_pixels, thumbnail, geometric)
        return _compare(item, stored, hashed)
    except Exception as exc:
        return _failed(item, exc)


def _failed(item: Item, error: BaseException | str) -> _Outcome:
    """A failed outcome; an exception is shown as its message (an unforeseen one with its type, so a decoder's
    surprise stays recognisable in the report)."""
    if isinstance(error, OSError):
        error = error.strerror or str(error)
    elif not isinstance(error, str):
        error = str(error) if isinstance(error, MatchdbError) else f"{type(error).__name__}: {error}"
    return _Outcome("failed", failure=Failure(item.ext_id, item.source, error))


# --- storage: what both the local pipeline and cluster chunks read and write ---------------------------------------


def lookup_stored(engine: Engine, collection_id: str, ext_ids: list[str]) -> dict[str, StoredRecord]:
    """The stored records for these ``_id`` values: what a rerun compares with to skip unchanged images."""
    with engine.connect() as connection:
        return get_records(connection, collection_id, ext_ids)


def write_records(writer: Writer, collection_id: str, batch: list[NewRecord]) -> None:
    """Upsert ``batch`` by ``_id`` with its change-log entries, in one transaction: written twice (a retried cluster
    chunk), it leaves the same rows, since an existing ``_id`` is replaced in place."""
    writer.run(lambda connection: upsert_records(connection, collection_id, batch))


# --- the pipeline ---------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Failure:
    """One item that could not be ingested, as a report line shows it."""

    ext_id: str
    source: str
    error: str

    def to_json(self) -> str:
        return json.dumps({"_id": self.ext_id or None, "source": self.source, "error": self.error})


def images(count: int) -> str:
    """``1 image``, ``2 images``."""
    return f"{count} image{'' if count == 1 else 's'}"


def failure_reason(error: str) -> str:
    """An error without what names one item (quoted URLs, paths and ids), so that like failures count together."""
    return _QUOTED.sub("'...'", error)


_QUOTED = re.compile(r"'[^']*'")


@dataclass
class Summary:
    new: int = 0
    updated: int = 0
    unchanged: int = 0
    failed: int = 0
    seconds: float = 0.0
    planned: int | None = 0  # items found (None: not known, a cluster ingest stopped before it listed them all)
    stopped_by: int | None = None  # the signal that interrupted the run (what was done is stored)

    @property
    def total(self) -> int:
        return self.new + self.updated + self.unchanged + self.failed

    @property
    def rate(self) -> float:
        return self.total / self.seconds if self.seconds > 0 else 0.0

    def count(self, status: Status) -> None:
        setattr(self, status, getattr(self, status) + 1)

    def then(self, later: Summary) -> Summary:
        """This run followed by ``later`` (an import of hashes, then the images the inputs also had)."""
        planned = None if self.planned is None or later.planned is None else self.planned + later.planned
        return Summary(
            self.new + later.new,
            self.updated + later.updated,
            self.unchanged + later.unchanged,
            self.failed + later.failed,
            self.seconds + later.seconds,
            planned,
            self.stopped_by if self.stopped_by is not None else later.stopped_by,
        )

    def __str__(self) -> str:
        counts = (
            f"{self.new} new, {self.updated} updated, {self.unchanged} unchanged, {self.failed} failed in "
            f"{self.seconds:.1f} s ({self.rate:.1f} images/s)"
        )
        if self.stopped_by is None:
            return f"ingested {images(self.total)}: {counts}"
        return (
            f"interrupted by {signal.Signals(self.stopped_by).name} after "
            f"{images(self.total) if self.planned is None else f'{self.total} of {images(self.planned)}'}, "
            f"all of them stored: {counts}; run the same command again to resume"
        )


@dataclass(frozen=True)
class _Outcome:
    status: Status
    record: NewRecord | None = None
    failure: Failure | None = None


class _Ingest:
    """One run of the pipeline: items are processed concurrently but emitted (counted, written) in discovery order,
    so insertion order is deterministic; at most ``window`` items are in flight, which bounds memory."""

    def __init__(
        self,
        engine: Engine,
        collection_id: str,
        pool: Executor,
        fetcher: Fetcher,
        settings: Settings,
        batch_size: int,
        window: int,
        on_progress: Callable[[Status], object],
        on_failure: Callable[[Failure], object],
    ) -> None:
        self._engine = engine
        self._writer = Writer(engine, settings.write_attempts, settings.database_timeout)
        self._collection_id = collection_id
        self._pool = pool
        self._fetcher = fetcher
        self._max_pixels = settings.max_pixels
        self._thumbnails = settings.thumbnails
        self._geometric = collection_is_geometric(engine, collection_id)
        self._downloads = asyncio.Semaphore(settings.fetch_concurrency)
        self._batch_size = batch_size
        self._window = window
        self._on_progress = on_progress
        self._on_failure = on_failure
        self._stopped_by: int | None = None
        self._arrived = asyncio.Event()

    def stop(self, signum: int) -> None:
        """Stop early (on a signal): what is done in order is written, the rest is left for a rerun."""
        if self._stopped_by is None:
            self._stopped_by = signum
        self._arrived.set()

    async def run(self, items: Sequence[Item]) -> Summary:
        started = time.monotonic()
        summary = Summary(planned=len(items))
        slots = asyncio.Semaphore(self._window)
        finished: dict[int, _Outcome] = {}
        in_flight: set[asyncio.Task[None]] = set()
        arrived = self._arrived

        async def process(index: int, item: Item, stored: StoredRecord | None) -> None:
            try:
                finished[index] = await self._process(item, stored)
            except BrokenProcessPool:
                # A SIGTERM to the whole process group kills the workers too, and may be seen here first: give
                # this process's own handler a moment to run, so the ingest stops cleanly instead of failing.
                await asyncio.sleep(0.5)
                if self._stopped_by is None:
                    raise
                return
            arrived.set()

        async def produce(group: asyncio.TaskGroup) -> None:
            for start in range(0, len(items), _LOOKUP_CHUNK):
                chunk = items[start : start + _LOOKUP_CHUNK]
                wanted = [item.ext_id for item in chunk if item.error is None]
                stored = await asyncio.to_thread(self._lookup, wanted)
                for offset, item in enumerate(chunk):
                    await slots.acquire()
                    task = group.create_task(process(start + offset, item, stored.get(item.ext_id)))
                    in_flight.add(task)
                    task.add_done_callback(in_flight.discard)

        async def consume() -> None:
            batch: list[NewRecord] = []
            for index in range(len(items)):
                while index not in finished and self._stopped_by is None:
                    arrived.clear()
                    await arrived.wait()
                if index not in finished:  # stopped: items done so far (in order) are written below
                    break
                outcome = finished.pop(index)
                slots.release()
                summary.count(outcome.status)
                if outcome.failure is not None:
                    self._on_failure(outcome.failure)
                if outcome.record is not None:
                    batch.append(outcome.record)
                    if len(batch) >= self._batch_size:
                        await asyncio.to_thread(self._write, batch)
                        batch = []
                self._on_progress(outcome.status)
            if batch:
                await asyncio.to_thread(self._write, batch)

        async with asyncio.TaskGroup() as group:
            producer = group.create_task(produce(group))
            await consume()
            if self._stopped_by is not None:  # what is still in flight is dropped (a rerun does it)
                for task in [producer, *in_flight]:
                    task.cancel()
        summary.seconds = time.monotonic() - started
        summary.stopped_by = self._stopped_by
        return summary

    async def _process(self, item: Item, stored: StoredRecord | None) -> _Outcome:
        if item.error is not None:
            return _failed(item, item.error)
        if item.path is not None:
            return await self._in_pool(file_outcome, item, stored, self._max_pixels, self._thumbnails, self._geometric)
        assert item.url is not None
        try:
            async with self._downloads:
                data = await self._fetcher.fetch(item.url)
        except Exception as exc:
            return _failed(item, exc)
        return await self._in_pool(
            bytes_outcome, item, stored, data, self._max_pixels, self._thumbnails, self._geometric
        )

    async def _in_pool(self, function: Callable[..., _Outcome], *args: object) -> _Outcome:
        """``function(*args)`` in a worker process, shielded from the item's cancellation (a stopped ingest drops what
        is in flight, and this outcome is then ignored): in Python 3.11 a cancelled pool future crashes the pool's
        manager thread if the workers then die (InvalidStateError in terminate_broken, as on SIGTERM to the group).
        A broken pool raises: every later item would fail the same way, so the run stops instead of reporting them
        all."""
        future = asyncio.get_running_loop().run_in_executor(self._pool, function, *args)
        future.add_done_callback(lambda done: done.cancelled() or done.exception())
        return await asyncio.shield(future)

    def _lookup(self, ext_ids: list[str]) -> dict[str, StoredRecord]:
        return lookup_stored(self._engine, self._collection_id, ext_ids)

    def _write(self, batch: list[NewRecord]) -> None:
        write_records(self._writer, self._collection_id, batch)


def _compare(item: Item, stored: StoredRecord | None, result: Hashes | str) -> _Outcome:
    """New, updated or unchanged. A bare checksum means the stored image is the same, so its hashes are reused:
    changed attributes are written without hashing again (and the stored thumbnail is kept)."""
    reused = isinstance(result, str)
    if isinstance(result, str):
        assert stored is not None
        result = Hashes(result, stored.width, stored.height, stored.bmh1, stored.phash)
    record = NewRecord(
        ext_id=item.ext_id,
        attributes=item.attributes,
        source_url=item.url,
        width=result.width,
        height=result.height,
        checksum=result.checksum,
        bmh1=result.bmh1,
        phash=result.phash,
        thumbnail=result.thumbnail,
        keep_thumbnail=reused,
        geometric=result.geometric,
    )
    if stored is None:
        return _Outcome("new", record)
    same = (stored.checksum, stored.attributes, stored.source_url) == (
        record.checksum,
        record.attributes,
        record.source_url,
    )
    return _Outcome("unchanged") if same else _Outcome("updated", record)


def run_ingest(
    engine: Engine,
    collection_id: str,
    items: Sequence[Item],
    *,
    pool: Executor,
    jobs: int,
    settings: Settings,
    batch_size: int = 200,
    on_progress: Callable[[Status], object] = lambda _: None,
    on_failure: Callable[[Failure], object] = lambda _: None,
    stop_signals: Sequence[int] = (),
) -> Summary:
    """Ingest ``items`` into the collection with ``pool`` (``jobs`` workers); per-item failures go to ``on_failure``
    and the rest go on. The in-flight window keeps every worker and download slot busy, and no more.

    The first of ``stop_signals`` to arrive stops the run early: the items done so far (in order) are written, the
    summary says how far it got (``stopped_by``), and a rerun resumes; a second signal acts as it normally does."""
    if batch_size < 1:
        raise ValueError("batch_size must be at least 1")
    window = max(64, 8 * jobs, 2 * settings.fetch_concurrency)

    async def main() -> Summary:
        async with fetcher_from_settings(settings) as fetcher:
            ingest = _Ingest(
                engine, collection_id, pool, fetcher, settings, batch_size, window, on_progress, on_failure
            )
            loop = asyncio.get_running_loop()

            def stop(signum: int) -> None:
                for each in stop_signals:
                    loop.remove_signal_handler(each)
                ingest.stop(signum)

            for signum in stop_signals:
                loop.add_signal_handler(signum, stop, signum)
            try:
                return await ingest.run(items)
            finally:
                for signum in stop_signals:
                    loop.remove_signal_handler(signum)

    return asyncio.run(main())


def ingest_chunk(
    engine: Engine, collection_id: str, items: Sequence[Item], settings: Settings
) -> list[tuple[Status, Failure | None]]:
    """Ingest one chunk of items start to end where this runs (a cluster worker): look up what is stored, read the
    files or download the URLs (through the SSRF-guarded fetcher of ``settings``), hash what changed, and write the
    chunk's records in one transaction. The same per-item and storage functions as the local pipeline, so the
    semantics are the same; running a chunk again (a retry after its worker died) stores the same rows.

    Returns each item's status and failure, in order: small, whatever the images' size."""
    wanted = [item.ext_id for item in items if item.error is None]
    stored = lookup_stored(engine, collection_id, wanted)
    geometric = collection_is_geometric(engine, collection_id)
    outcomes: dict[int, _Outcome] = {}
    downloads: list[tuple[int, Item]] = []
    for index, item in enumerate(items):
        if item.error is not None:
            outcomes[index] = _failed(item, item.error)
        elif item.path is not None:
            found = stored.get(item.ext_id)
            outcomes[index] = file_outcome(item, found, settings.max_pixels, settings.thumbnails, geometric)
        else:
            downloads.append((index, item))
    if downloads:
        outcomes.update(asyncio.run(_download_outcomes(downloads, stored, settings, geometric)))
    ordered = [outcomes[index] for index in range(len(items))]
    records = [outcome.record for outcome in ordered if outcome.record is not None]
    if records:
        write_records(Writer(engine, settings.write_attempts, settings.database_timeout), collection_id, records)
    return [(outcome.status, outcome.failure) for outcome in ordered]


async def _download_outcomes(
    downloads: list[tuple[int, Item]], stored: dict[str, StoredRecord], settings: Settings, geometric: bool
) -> dict[int, _Outcome]:
    """Download and hash URL items, ``fetch_concurrency`` at a time (which also bounds the bytes held)."""
    slots = asyncio.Semaphore(settings.fetch_concurrency)
    async with fetcher_from_settings(settings) as fetcher:

        async def one(index: int, item: Item) -> tuple[int, _Outcome]:
            assert item.url is not None
            async with slots:
                try:
                    data = await fetcher.fetch(item.url)
                except Exception as exc:
                    return index, _failed(item, exc)
                found = stored.get(item.ext_id)
                outcome = await asyncio.to_thread(
                    bytes_outcome, item, found, data, settings.max_pixels, settings.thumbnails, geometric
                )
                return index, outcome

        return dict(await asyncio.gather(*(one(index, item) for index, item in downloads)))


class FailureReport:
    """Failures as JSON lines, flushed as they happen, plus what the terminal shows of them: the first few and a
    count per reason. The file is created at the first failure only: a clean run leaves no report behind."""

    EXAMPLES = 5

    def __init__(self, path: Path) -> None:
        self.path = path
        self.count = 0
        self.examples: list[Failure] = []
        self.reasons: Counter[str] = Counter()
        self._handle: IO[str] | None = None

    def __call__(self, failure: Failure) -> None:
        if self._handle is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._handle = self.path.open("w", encoding="utf-8")
        self._handle.write(failure.to_json() + "\n")
        self._handle.flush()
        self.count += 1
        self.reasons[failure_reason(failure.error)] += 1
        if len(self.examples) < self.EXAMPLES:
            self.examples.append(failure)

    def close(self) -> None:
        if self._handle is not None:
            self._handle.close()
            self._handle = None

    def __enter__(self) -> FailureReport:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()
