"""``matchdb ingest --dask-scheduler ADDRESS``: the ingest spread over a Dask cluster, Postgres the one store.

The client lists the inputs lazily (:func:`~matchdb.service.inputs.iter_items`) and submits them in chunks of
``chunk_size`` items, never more than ``window`` chunks at once, so a 10M-line manifest is never held whole. Each
chunk runs :func:`worker_chunk` on a worker: it reads the files or downloads the URLs itself (with the worker's own
``MATCHDB_*`` settings, the SSRF guard's allow list included), hashes what changed and writes the chunk in one
transaction with :func:`~matchdb.service.ingest.ingest_chunk`, the same code as the local ingest. The client gets
back only each item's status and failure, for the summary, the progress bar and the failure report.

Faults: a worker that dies mid-chunk has its chunk rerun elsewhere by the scheduler (up to its
``distributed.scheduler.allowed-failures``); the rerun finds what a committed first run stored and upserts the same
rows by ``_id``, so nothing is doubled (it may count them unchanged). A chunk that kills every worker it runs on is
reported as failed items. An interrupted client leaves every counted item stored, and a rerun skips what is stored.

Insertion order on a cluster is the order in which chunks commit, not the listing order: records of one chunk stay
in order, but ties in visualKNN may rank differently from a local ingest of the same inputs.
"""

from __future__ import annotations

import functools
import itertools
import secrets
import signal
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import TYPE_CHECKING, Any

from sqlalchemy import Engine
from sqlalchemy.engine import make_url

from matchdb.config import Settings
from matchdb.errors import MatchdbError
from matchdb.service.ingest import Failure, Status, Summary, ingest_chunk
from matchdb.service.inputs import Item
from matchdb.storage.database import make_engine

if TYPE_CHECKING:
    from distributed import Future

ChunkResult = list[tuple[Status, Failure | None]]


class ClusterError(MatchdbError):
    """The cluster ingest cannot start or cannot go on (no Postgres, no scheduler, a chunk failed for a reason that
    would fail every chunk). ``summary`` is what was done before, when anything was."""

    def __init__(self, text: str, summary: Summary | None = None) -> None:
        super().__init__(text)
        self.summary = summary


def require_postgres(database_url: str) -> None:
    """Workers on other machines write to the database themselves: only a database server can be shared so."""
    backend = make_url(database_url).get_backend_name()
    if backend != "postgresql":
        raise ClusterError(
            f"--dask-scheduler needs a Postgres database that every worker can reach "
            f"(MATCHDB_DATABASE_URL=postgresql://USER:PASSWORD@HOST/DB); the database here is {backend}, "
            "which the workers cannot share"
        )


# --- on the workers --------------------------------------------------------------------------------------------------


@functools.cache
def _engine(database_url: str, timeout: float) -> Engine:
    """One engine (connection pool) per worker process and database, shared by the chunks it runs."""
    return make_engine(database_url, timeout)


def worker_chunk(database_url: str, collection_id: str, items: list[Item]) -> ChunkResult:
    """The task each chunk runs on a worker: the worker's own ``MATCHDB_*`` settings (fetch limits and allow list,
    pixel limit, database timeouts) with the client's database."""
    settings = Settings.from_env(database_url=database_url)
    return ingest_chunk(_engine(database_url, settings.database_timeout), collection_id, items, settings)


# --- on the client ---------------------------------------------------------------------------------------------------


def _chunks(items: Iterable[Item], size: int) -> Iterator[list[Item]]:
    iterator = iter(items)
    while chunk := list(itertools.islice(iterator, size)):
        yield chunk


def run_cluster_ingest(
    address: str,
    database_url: str,
    collection_id: str,
    items: Iterable[Item],
    *,
    chunk_size: int = 200,
    window: int | None = None,
    on_progress: Callable[[int], object] = lambda _: None,
    on_failure: Callable[[Failure], object] = lambda _: None,
    stop_signals: Sequence[int] = (),
    connect_timeout: float = 10.0,
) -> Summary:
    """Ingest ``items`` on the cluster whose scheduler is at ``address``. At most ``window`` chunks are in flight
    (default: two per worker thread, so every worker has its next chunk ready). ``on_progress`` gets the number of
    items of each finished chunk.

    The first of ``stop_signals`` stops the run: no more chunks are submitted, those in flight are cancelled (one
    already running may still commit: a rerun finds it stored), the summary says how far it got (``stopped_by``)."""
    try:
        from distributed import Client, KilledWorker, as_completed
    except ImportError as exc:
        raise ClusterError("--dask-scheduler needs Dask: pip install 'matchdb[dask]'") from exc
    if chunk_size < 1:
        raise ValueError("chunk_size must be at least 1")
    try:
        client = Client(address, timeout=connect_timeout, set_as_default=False)
    except (OSError, TimeoutError) as exc:
        raise ClusterError(f"cannot reach the Dask scheduler at {address}: {exc}") from exc

    started = time.monotonic()
    summary = Summary(planned=0)
    stopped = threading.Event()
    previous: dict[int, Any] = {}

    def stop(signum: int, _frame: object) -> None:
        restore()  # a second signal acts as it normally does
        summary.stopped_by = summary.stopped_by or signum
        stopped.set()

    def restore() -> None:
        for each, handler in previous.items():
            signal.signal(each, signal.SIG_DFL if handler is None else handler)

    for signum in stop_signals:
        previous[signum] = signal.signal(signum, stop)
    run = secrets.token_hex(4)
    in_flight: dict[Future, list[Item]] = {}
    try:
        limit = window or max(2, 2 * sum(client.nthreads().values()))
        completed = as_completed(loop=client.loop)
        chunks = _chunks(items, chunk_size)
        listed = False
        while not stopped.is_set():
            while not listed and len(in_flight) < limit and not stopped.is_set():
                chunk = next(chunks, None)
                if chunk is None:
                    listed = True
                    break
                summary.planned = (summary.planned or 0) + len(chunk)
                key = f"matchdb-ingest-{run}-{summary.planned}"
                future = client.submit(worker_chunk, database_url, collection_id, chunk, key=key)
                in_flight[future] = chunk
                completed.add(future)
            if not in_flight:
                break
            done = completed.next_batch(block=False)
            if not done:
                stopped.wait(0.05)
            for future in done:
                chunk = in_flight.pop(future)
                try:
                    result: ChunkResult = future.result()
                except KilledWorker as exc:  # the chunk killed every worker it ran on: fail its items, go on
                    error = f"the workers running this chunk died ({exc})"
                    result = [("failed", Failure(item.ext_id, item.source, error)) for item in chunk]
                except Exception as exc:  # the database or a bug: every chunk would fail the same way
                    summary.seconds = time.monotonic() - started
                    raise ClusterError(f"a chunk failed on a worker: {type(exc).__name__}: {exc}", summary) from exc
                for status, failure in result:
                    summary.count(status)
                    if failure is not None:
                        on_failure(failure)
                on_progress(len(chunk))
        if summary.stopped_by is not None and not listed:
            summary.planned = None  # the rest of the input was never listed
    finally:
        restore()
        if in_flight:
            client.cancel(list(in_flight))
        client.close()
    summary.seconds = time.monotonic() - started
    return summary
