"""The process pool the CLI hashes with (``ingest``, ``dedupe``, ``eval``): one place for its start-up rules.

- Workers are all started on entry: with the fork start method they must be forked before this process starts
  threads (asyncio's, tqdm's), or a child could inherit a lock held mid-operation.
- Workers ignore Ctrl-C: the parent handles it (stops submitting, keeps what is done); otherwise every worker would
  print its own KeyboardInterrupt traceback.
- Workers die with their parent: a SIGTERM or SIGKILL to the command would otherwise leave them running, blocked
  on a queue nobody feeds. On Linux the kernel sends them SIGTERM when the parent dies (PR_SET_PDEATHSIG).
- Forked workers inherit the hashing kernels: the parent loads (or compiles) them once before forking instead of
  every worker doing it at its first image (about a second of CPU each).
"""

from __future__ import annotations

import contextlib
import ctypes
import multiprocessing
import os
import signal
import sys
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor

from matchdb.hashing import warm_up

_PR_SET_PDEATHSIG = 1


def _worker_start(parent: int) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if parent:  # forked by the command itself (Linux): tie the worker's life to it
        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
        if os.getppid() != parent:  # the parent died before the line above took effect
            os._exit(1)


@contextlib.contextmanager
def process_pool(jobs: int) -> Iterator[ProcessPoolExecutor]:
    """A pool of ``jobs`` (at least 1) worker processes, all started, shut down (pending work cancelled) on exit."""
    jobs = max(1, jobs)
    # fork explicitly on Linux (Python 3.14 defaults to forkserver, whose workers are not this process's children);
    # elsewhere the platform default (spawn), without the parent-death signal.
    linux = sys.platform.startswith("linux")
    context = multiprocessing.get_context("fork") if linux else None
    if linux:
        warm_up()
    pool = ProcessPoolExecutor(
        max_workers=jobs, mp_context=context, initializer=_worker_start, initargs=(os.getpid() if linux else 0,)
    )
    try:
        for future in [pool.submit(int) for _ in range(jobs)]:
            future.result()
        yield pool
    finally:
        pool.shutdown(cancel_futures=True)
