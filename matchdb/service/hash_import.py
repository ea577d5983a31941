"""Import of precomputed hashes: manifest rows that carry ``bmh1`` and ``phash`` (the strings ``visual_hash``
returns) are stored as records without any download or decode, in large set-based batches
(:mod:`matchdb.storage.bulk`). How a catalogue moves from Ximilar, or from a pipeline that has its hashes already.

The inputs are read as a stream: rows with hashes are parsed (with numpy, a batch at a time), checked and written
as they come, so a manifest of any length takes bounded memory; every other item (images, rows with ``_url`` or
``_file`` only) is handed back for the image pipeline of :mod:`matchdb.service.ingest`. A malformed hash fails its
row alone. Counts and failures are reported as that pipeline reports them: rerunning the same manifest finds every
row unchanged, and a row whose hashes, attributes or ``_url`` changed updates its record in place.
"""

from __future__ import annotations

import signal
import time
from collections.abc import Callable, Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Engine

from matchdb.config import Settings
from matchdb.hashing.value import pack_strings
from matchdb.service.ingest import Failure, Summary
from matchdb.service.inputs import HashBlock, Item
from matchdb.storage.bulk import HashRows, Written, upsert_hash_rows
from matchdb.storage.transactions import Writer

BATCH = 20_000  # rows per transaction: large enough that per-statement costs vanish, small enough to hold the
# writers' turn well under a second


@dataclass
class HashImport:
    """What an import did: its summary, and the items it left for the image pipeline (in input order)."""

    summary: Summary
    images: list[Item] = field(default_factory=list)


def import_hashes(
    engine: Engine,
    collection_id: str,
    items: Iterable[Item | HashBlock],
    *,
    settings: Settings,
    batch_size: int = BATCH,
    on_progress: Callable[[int], object] = lambda _: None,
    on_failure: Callable[[Failure], object] = lambda _: None,
    stop_signals: Iterable[int] = (),
) -> HashImport:
    """Store the items that carry hashes (and the rows of the :class:`~matchdb.service.inputs.HashBlock` values
    that :func:`~matchdb.service.inputs.iter_inputs` reads), ``batch_size`` per transaction, and return the other
    items untouched.
    ``on_progress`` is told how many rows were done, a batch at a time.

    The first of ``stop_signals`` stops the run between batches: what was written is stored, and the summary says
    it was stopped (``stopped_by``); a rerun skips what is stored already."""
    writer = Writer(engine, settings.write_attempts, settings.database_timeout)
    started = time.monotonic()
    done = HashImport(Summary(planned=None))
    stopped: list[int] = []
    # The stop signals are taken over at the first write, not before: until then nothing is stored, and a Ctrl-C
    # while the inputs are read (a manifest on a pipe or a slow disk blocks there) must end the command at once.
    previous: dict[int, Any] = {}

    def take_signals() -> None:
        if not previous:
            for signum in stop_signals:
                previous[signum] = signal.signal(signum, lambda signum, _frame: stopped.append(signum))

    # One batch is written (by a thread: the database works while this one parses) as the next is read and parsed.
    writing = ThreadPoolExecutor(1, thread_name_prefix="hash-import")
    pending: tuple[Future[Written], int] | None = None
    fresh = True  # the last batch was all new: the next one likely is too (a first import), so it is tried as such

    def settle() -> None:
        nonlocal pending, fresh
        if pending is not None:
            future, count = pending
            pending = None
            written = future.result()
            fresh = written.new == count
            done.summary.new += written.new
            done.summary.updated += written.updated
            done.summary.unchanged += count - written.new - written.updated
            on_progress(count)

    def flush(batch: HashBlock) -> None:
        nonlocal pending
        rows = _parse(batch, done.summary, on_failure, on_progress)
        settle()
        if len(rows):
            take_signals()
            future = writing.submit(
                writer.run, lambda connection: upsert_hash_rows(connection, collection_id, rows, fresh=fresh)
            )
            pending = (future, len(rows))

    try:
        batch = HashBlock()
        for item in items:
            if isinstance(item, HashBlock):
                batch.extend(item)
            elif (item.hashes is None and item.error is None) or (item.error is not None and done.images):
                done.images.append(item)  # an unusable row after an image: reported in order with the images
                continue
            elif item.error is not None:
                _fail(done.summary, Failure(item.ext_id, item.source, item.error), on_failure, on_progress)
                continue
            else:
                batch.add_item(item)
            while len(batch) >= batch_size and not stopped:
                flush(batch.cut(batch_size))
            if stopped:
                break
        else:
            flush(batch)
        settle()
    finally:
        writing.shutdown(wait=True)
        for signum, handler in previous.items():
            signal.signal(signum, handler)
    done.summary.seconds = time.monotonic() - started
    done.summary.stopped_by = stopped[0] if stopped else None
    return done


def _fail(
    summary: Summary, failure: Failure, on_failure: Callable[[Failure], object], on_progress: Callable[[int], object]
) -> None:
    summary.count("failed")
    on_failure(failure)
    on_progress(1)


def _parse(
    batch: HashBlock,
    summary: Summary,
    on_failure: Callable[[Failure], object],
    on_progress: Callable[[int], object],
) -> HashRows:
    """The batch's rows with their hashes packed; a row with a malformed hash fails alone."""
    bmh1, bmh1_errors = pack_strings("bmh1", batch.bmh1)
    phash, phash_errors = pack_strings("phash", batch.phash)
    if not any(bmh1_errors) and not any(phash_errors):
        return HashRows(batch.ext_ids, batch.attributes, batch.urls, bmh1, phash)
    good: list[int] = []
    for index in range(len(batch)):
        error = bmh1_errors[index] or phash_errors[index]
        if error is None:
            good.append(index)
        else:
            _fail(summary, Failure(batch.ext_ids[index], batch.source(index), error), on_failure, on_progress)
    return HashRows(
        [batch.ext_ids[index] for index in good],
        [batch.attributes[index] for index in good],
        [batch.urls[index] for index in good],
        bmh1[good],
        phash[good],
    )
