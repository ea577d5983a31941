"""Bulk ingest of folders, image files and manifests into a collection, straight into the database (no server).

The steps are separate functions so each can be tested and reasoned about alone:

* :func:`discover` turns the command line's paths into :class:`Item` values in a deterministic order (the order
  decides insertion order, hence how ties rank in visualKNN), marking rows that cannot work (no ``_url`` nor
  ``_file``, a repeated ``_id``) as failed items instead of raising, so one bad row never stops an ingest.
* :func:`run_ingest` looks up what is stored already (by ``_id``), reads files and checksums them in worker
  processes, hashes only images whose checksum changed, downloads URLs in this process (asyncio, bounded), and
  writes in batches, each batch one transaction. A rerun therefore costs one read and one SHA-256 per file.
* :class:`Summary` and :class:`FailureReport` are what the CLI shows and writes.

Worker processes get file paths, not bytes: a folder of large photos would otherwise cross the process boundary
twice. Only downloaded bytes (which exist in this process anyway) are sent to a worker.
"""

from __future__ import annotations

import asyncio
import csv
import hashlib
import json
import os
import signal
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Executor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import IO, Any, Literal

from sqlalchemy import Engine

from matchdb.config import Settings
from matchdb.errors import MatchdbError
from matchdb.fetch import Fetcher
from matchdb.hashing import HASH_TYPES, VisualHash, hash_image
from matchdb.service.collections import COMPUTED, max_bits_within, merge_hits, public_record
from matchdb.service.indexes import IndexRegistry
from matchdb.service.records import fetcher_from_settings
from matchdb.service.stateless import shown_distance
from matchdb.storage import collections as collection_store
from matchdb.storage.records import NewRecord, StoredRecord, get_by_row_ids, get_records, upsert_records
from matchdb.storage.tokens import DEFAULT_WORKSPACE
from matchdb.storage.transactions import Writer

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".tif", ".tiff", ".webp", ".gif", ".bmp"})
_LOOKUP_CHUNK = 500  # _id values per stored-state query

Status = Literal["new", "updated", "unchanged", "failed"]


# --- discovery ----------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Item:
    """One image to ingest: where its bytes come from (``path`` or else ``url``) and what to store with it.

    ``error`` is set for rows known to be unusable before any I/O; they flow through the pipeline like the others
    so the report and the counts stay in one place. ``source`` is what a report shows to find the item again.
    """

    ext_id: str
    source: str
    path: Path | None = None
    url: str | None = None
    attributes: dict[str, Any] = field(default_factory=dict)
    error: str | None = None


def discover(paths: Sequence[Path], unique_ids: bool = True) -> list[Item]:
    """Every item behind ``paths`` (folders, image files, ``.csv``/``.jsonl`` manifests), in argument order.

    A folder's images are sorted by their path relative to it, which is also their ``_id``; a single image file is
    identified by its name; manifest rows by ``_id``, else ``_file`` (relative to the manifest), else ``_url``.
    With ``unique_ids`` (ingest: one record per ``_id``) a repeated ``_id`` is an error; ``dedupe`` has no records.
    """
    items: list[Item] = []
    for path in paths:
        suffix = path.suffix.lower()
        if path.is_dir():
            items.extend(_folder_items(path))
        elif suffix == ".csv":
            items.extend(_csv_items(path))
        elif suffix == ".jsonl":
            items.extend(_jsonl_items(path))
        else:  # named explicitly, so taken whatever its extension
            items.append(Item(path.name, str(path), path=path))
    return _mark_repeated(items) if unique_ids else items


def folder_images(root: Path) -> list[tuple[str, Path]]:
    """(path relative to ``root``, path) of the image files under it by extension, sorted by relative path, skipping
    hidden files and folders (``.git``, macOS ``._x.jpg``). ``matchdb eval`` walks folders with it too."""
    found: list[tuple[str, Path]] = []
    for folder, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]
        for name in filenames:
            if not name.startswith(".") and Path(name).suffix.lower() in IMAGE_EXTENSIONS:
                path = Path(folder, name)
                found.append((path.relative_to(root).as_posix(), path))
    return sorted(found)


def _folder_items(root: Path) -> list[Item]:
    return [Item(ext_id, str(path), path=path) for ext_id, path in folder_images(root)]


def _csv_items(manifest: Path) -> list[Item]:
    try:
        with manifest.open(newline="", encoding="utf-8-sig") as handle:
            reader = csv.DictReader(handle)
            rows = [
                (reader.line_num, {k: v for k, v in row.items() if k is not None and v is not None}) for row in reader
            ]
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        return [Item("", str(manifest), error=f"cannot read manifest: {exc}")]
    return [_manifest_item(row, manifest, line) for line, row in rows]


def _jsonl_items(manifest: Path) -> list[Item]:
    try:
        lines = manifest.read_text(encoding="utf-8-sig").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        return [Item("", str(manifest), error=f"cannot read manifest: {exc}")]
    items: list[Item] = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            items.append(Item("", f"{manifest}:{number}", error=f"invalid JSON: {exc}"))
            continue
        if not isinstance(row, dict):
            items.append(Item("", f"{manifest}:{number}", error="a manifest line must be a JSON object"))
            continue
        items.append(_manifest_item(row, manifest, number))
    return items


def _manifest_item(row: dict[str, Any], manifest: Path, line: int) -> Item:
    """One manifest row; with both ``_file`` and ``_url`` the local file is read and the URL kept as the source."""
    attributes = {k: v for k, v in row.items() if k not in COMPUTED}
    given_id = row.get("_id")
    ext_id = "" if given_id is None or given_id == "" else str(given_id)
    file_value, url = row.get("_file"), row.get("_url")
    if url is not None and not isinstance(url, str):
        return Item(ext_id, f"{manifest}:{line}", error="_url must be a string")
    url = url or None
    if file_value not in (None, ""):
        if not isinstance(file_value, str):
            return Item(ext_id, f"{manifest}:{line}", error="_file must be a string")
        relative = Path(file_value)
        path = relative if relative.is_absolute() else manifest.parent / relative
        return Item(ext_id or relative.as_posix(), str(path), path=path, url=url, attributes=attributes)
    if url is not None:
        return Item(ext_id or url, url, url=url, attributes=attributes)
    return Item(ext_id, f"{manifest}:{line}", error="the row has neither _url nor _file")


def _mark_repeated(items: list[Item]) -> list[Item]:
    """A second item with an ``_id`` already seen fails: storing both would silently keep only the last one."""
    first_source: dict[str, str] = {}
    out: list[Item] = []
    for item in items:
        if item.error is None and item.ext_id in first_source:
            item = Item(item.ext_id, item.source, error=f"_id repeated (first given to {first_source[item.ext_id]})")
        elif item.error is None:
            first_source[item.ext_id] = item.source
        out.append(item)
    return out


# --- hashing (runs in worker processes) ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Hashes:
    """What a worker sends back for a changed image: small, whatever the image's size."""

    checksum: str
    width: int
    height: int
    bmh1: bytes
    phash: bytes


def hash_bytes(data: bytes, checksum: str, max_pixels: int) -> Hashes:
    image = hash_image(data, HASH_TYPES, max_pixels)
    return Hashes(checksum, image.width, image.height, image.hashes["bmh1"].data, image.hashes["phash"].data)


def hash_file(path: str, known_checksum: str | None, max_pixels: int) -> Hashes | str:
    """Read and checksum a file; hash it only if the checksum differs from ``known_checksum`` (else return the
    checksum alone), so rerunning an ingest over unchanged files never decodes an image."""
    data = Path(path).read_bytes()
    checksum = hashlib.sha256(data).hexdigest()
    if checksum == known_checksum:
        return checksum
    return hash_bytes(data, checksum, max_pixels)


# --- the pipeline ---------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Failure:
    """One item that could not be ingested, as a report line shows it."""

    ext_id: str
    source: str
    error: str

    def to_json(self) -> str:
        return json.dumps({"_id": self.ext_id or None, "source": self.source, "error": self.error})


@dataclass
class Summary:
    new: int = 0
    updated: int = 0
    unchanged: int = 0
    failed: int = 0
    seconds: float = 0.0
    planned: int = 0  # items found
    stopped_by: int | None = None  # the signal that interrupted the run (what was done is stored)

    @property
    def total(self) -> int:
        return self.new + self.updated + self.unchanged + self.failed

    @property
    def rate(self) -> float:
        return self.total / self.seconds if self.seconds > 0 else 0.0

    def count(self, status: Status) -> None:
        setattr(self, status, getattr(self, status) + 1)

    def __str__(self) -> str:
        counts = (
            f"{self.new} new, {self.updated} updated, {self.unchanged} unchanged, {self.failed} failed in "
            f"{self.seconds:.1f} s ({self.rate:.1f} images/s)"
        )
        if self.stopped_by is None:
            return f"ingested {self.total} images: {counts}"
        return (
            f"interrupted by {signal.Signals(self.stopped_by).name} after {self.total} of {self.planned} images, "
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
            return _Outcome("failed", failure=Failure(item.ext_id, item.source, item.error))
        try:
            result: Hashes | str
            if item.path is not None:
                known = stored.checksum if stored is not None else None
                result = await self._in_pool(hash_file, str(item.path), known, self._max_pixels)
            else:
                assert item.url is not None
                async with self._downloads:
                    data = await self._fetcher.fetch(item.url)
                checksum = hashlib.sha256(data).hexdigest()
                if stored is not None and stored.checksum == checksum:
                    result = checksum
                else:
                    result = await self._in_pool(hash_bytes, data, checksum, self._max_pixels)
        except BrokenProcessPool:
            raise  # every later item would fail the same way: stop instead of reporting them all
        except OSError as exc:
            return self._failed(item, exc.strerror or str(exc))
        except MatchdbError as exc:
            return self._failed(item, str(exc))
        except Exception as exc:  # an unforeseen decoder error must not stop the other items
            return self._failed(item, f"{type(exc).__name__}: {exc}")
        return _compare(item, stored, result)

    async def _in_pool(self, function: Callable[..., Hashes | str], *args: object) -> Hashes | str:
        """``function(*args)`` in a worker process, shielded from the item's cancellation (a stopped ingest drops what
        is in flight, and this outcome is then ignored): in Python 3.11 a cancelled pool future crashes the pool's
        manager thread if the workers then die (InvalidStateError in terminate_broken, as on SIGTERM to the group)."""
        future = asyncio.get_running_loop().run_in_executor(self._pool, function, *args)
        future.add_done_callback(lambda done: done.cancelled() or done.exception())
        return await asyncio.shield(future)

    @staticmethod
    def _failed(item: Item, error: str) -> _Outcome:
        return _Outcome("failed", failure=Failure(item.ext_id, item.source, error))

    def _lookup(self, ext_ids: list[str]) -> dict[str, StoredRecord]:
        with self._engine.connect() as connection:
            return get_records(connection, self._collection_id, ext_ids)

    def _write(self, batch: list[NewRecord]) -> None:
        self._writer.run(lambda connection: upsert_records(connection, self._collection_id, batch))


def _compare(item: Item, stored: StoredRecord | None, result: Hashes | str) -> _Outcome:
    """New, updated or unchanged. A bare checksum means the stored image is the same, so its hashes are reused:
    changed attributes are written without hashing again."""
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


class FailureReport:
    """Failures as JSON lines, flushed as they happen. The file is created (truncated) at the first failure only:
    a clean run leaves no report behind, and a report never mixes two runs."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.count = 0
        self._handle: IO[str] | None = None

    def __call__(self, failure: Failure) -> None:
        if self._handle is None:
            self._handle = self.path.open("w", encoding="utf-8")
        self._handle.write(failure.to_json() + "\n")
        self._handle.flush()
        self.count += 1

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


# --- collections and queries for the CLI ----------------------------------------------------------------------------


class CollectionNotFound(MatchdbError):
    """No collection (or more than one, across workspaces) answers to the name or id given."""


def resolve_collection(
    engine: Engine, workspace: str | None, key: str, create: bool = False
) -> tuple[collection_store.CollectionInfo, bool]:
    """The collection named (or with id) ``key``, searched in ``workspace`` or in every workspace if None; created
    in ``workspace`` (default workspace if None) when missing and ``create``. Also says whether it was created."""
    with engine.begin() as connection:
        found = collection_store.find_collection(connection, workspace, key)
        if found is not None:
            return found, False
        matches = [c for c in collection_store.list_collections(connection, workspace) if key in (c.id, c.name)]
        if len(matches) > 1:
            places = ", ".join(sorted(c.workspace for c in matches))
            raise CollectionNotFound(
                f"{len(matches)} collections are named {key!r} (workspaces {places}): give --workspace or the id"
            )
        if not create:
            where = f" in workspace {workspace!r}" if workspace is not None else ""
            raise CollectionNotFound(f"no collection {key!r}{where} (pass --create to create it)")
        try:
            return collection_store.create_collection(connection, workspace or DEFAULT_WORKSPACE, key), True
        except collection_store.CollectionExists:  # another ingest created it a moment ago: use that one
            created = collection_store.find_collection(connection, workspace or DEFAULT_WORKSPACE, key)
            if created is None:
                raise
            return created, False


def nearest_records(
    engine: Engine,
    registry: IndexRegistry,
    collection_id: str,
    queries: Sequence[VisualHash],
    k: int,
    radius: float | None = None,
) -> list[dict[str, Any]]:
    """The ``k`` stored records nearest to the query (within ``radius`` percent if given), nearest first, each as
    ``{"_id", "distance", "hamming", ...attributes}``. Ties are ordered by insertion order, as in visualKNN.
    ``queries`` holds one hash, or the hashes of the query's orientations (a record keeps its smallest distance)."""
    query = queries[0]
    index = registry.get(collection_id).by_kind[query.kind]
    max_bits = None if radius is None else max_bits_within(radius, query.kind)
    hits = merge_hits([index.nearest(q.as_int(), k, max_bits) for q in queries], k)
    with engine.connect() as connection:
        stored = get_by_row_ids(connection, [hit.key for hit in hits])
    answers: list[dict[str, Any]] = []
    for hit in hits:
        record = stored.get(hit.key)
        if record is not None:
            public = public_record(record)
            answers.append(
                {"_id": public.pop("_id"), "distance": _shown(hit.bits, query), "hamming": hit.bits, **public}
            )
    return answers


def _shown(bits: int, query: VisualHash) -> float:
    return shown_distance(bits, query.kind)
