"""Prometheus metrics of a server process, and how ``GET /metrics`` reads them (docs/operations.md lists them).

Under ``matchdb serve --workers N`` every worker is its own process with its own counters: ``serve`` then sets
``PROMETHEUS_MULTIPROC_DIR`` to a folder it owns (before any worker starts, hence before prometheus_client is
imported there), each worker writes its values to files in it, and every read of ``/metrics``, whichever worker
answers, sums the counters and histograms of all workers, dead ones included. Gauges describe the state of one
worker (each has its own copy of every index), so they are read as the maximum (or minimum) over the live workers.
Without that variable (one process, the tests' in-process apps) the process's own registry is read.

Per-collection series (labelled ``collection``) name every workspace's collections and their sizes: they are
rendered only for the operator (``render(per_collection=True)``, see :mod:`matchdb.web.operations`).
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
    generate_latest,
)
from prometheus_client import multiprocess as _multiprocess
from prometheus_client.metrics_core import Metric

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
# No *_created series: multiprocess mode has none either, so both modes read alike.
disable_created_metrics()  # type: ignore[no-untyped-call]

REQUESTS = Counter("matchdb_requests", "HTTP requests answered, by API method and HTTP status", ["method", "status"])
LATENCY = Histogram(
    "matchdb_request_duration_seconds",
    "Time from a request's arrival to the end of its answer, by API method",
    ["method"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0),
)
IMAGES_HASHED = Counter(
    "matchdb_images_hashed", "Images decoded and hashed, by where the bytes came from (url, base64)", ["source"]
)
IMAGE_FAILURES = Counter(
    "matchdb_image_failures",
    "Records whose image could not be used, by stage (input: no usable _url/_base64; download; decode)",
    ["stage"],
)
DOWNLOAD_FAILURES = Counter("matchdb_download_failures", "_url downloads that failed, by cause", ["cause"])
INDEX_RECORDS = Gauge(
    "matchdb_index_records",
    "Records in a collection's in-memory index, by hash type (the largest over live workers)",
    ["collection", "hash_type"],
    multiprocess_mode="livemax",
)
INDEX_MEMORY = Gauge(
    "matchdb_index_memory_bytes",
    "Bytes held by a collection's in-memory index in one worker, by hash type (the largest over live workers)",
    ["collection", "hash_type"],
    multiprocess_mode="livemax",
)
CHANGELOG_LAG = Gauge(
    "matchdb_changelog_lag_entries",
    "Change-log entries written by any process that a worker had not applied at its last heartbeat (the largest)",
    multiprocess_mode="livemax",
)
CHANGELOG_CAUGHT_UP = Gauge(
    "matchdb_changelog_caught_up_timestamp_seconds",
    "Unix time at which a worker last applied the whole change log (the oldest over live workers)",
    multiprocess_mode="livemin",
)
INDEX_LOADS = Counter(
    "matchdb_index_loads",
    "Loads of a collection's indexes from the database, by kind (load, rebuild) and outcome (ok, failed)",
    ["kind", "outcome"],
)


def multiprocess_dir() -> str | None:
    """The folder shared by the workers, when ``serve`` runs several (None: this process alone)."""
    return os.environ.get(MULTIPROC_ENV) or None


PER_COLLECTION = frozenset({"matchdb_index_records", "matchdb_index_memory_bytes"})


class _ProcessWide:
    """A collector that yields another registry's metrics but the per-collection ones."""

    def __init__(self, source: CollectorRegistry) -> None:
        self.source = source

    def collect(self) -> Iterator[Metric]:
        return (metric for metric in self.source.collect() if metric.name not in PER_COLLECTION)


def render(per_collection: bool) -> tuple[bytes, str]:
    """The text exposition of the metrics (summed over all workers in multiprocess mode) and its content type;
    the per-collection series only if ``per_collection``."""
    source = REGISTRY
    if multiprocess_dir() is not None:
        source = CollectorRegistry()
        _multiprocess.MultiProcessCollector(source)  # type: ignore[no-untyped-call]
    if not per_collection:
        filtered = CollectorRegistry(auto_describe=False)
        filtered.register(_ProcessWide(source))
        source = filtered
    return generate_latest(source), CONTENT_TYPE_LATEST


def worker_exited(pid: int) -> None:
    """Drop the live gauges of a worker that is gone (its counters stay in the sums)."""
    if multiprocess_dir() is not None:
        _multiprocess.mark_process_dead(pid)  # type: ignore[no-untyped-call]


def caught_up() -> None:
    CHANGELOG_CAUGHT_UP.set(time.time())
