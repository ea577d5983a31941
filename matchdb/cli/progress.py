"""Progress of the long commands (ingest, dedupe) on stderr: tqdm's bar on a terminal, and where there is no
terminal width to draw one (a log file, a pipe, ``COLUMNS=0``) a plain line every so often instead of nothing."""

from __future__ import annotations

import shutil
import sys
import time
from types import TracebackType
from typing import Protocol, TextIO

#: Seconds between two progress lines when no bar can be drawn.
LINE_INTERVAL = 10.0
MIN_BAR_COLUMNS = 20


class Progress(Protocol):
    def update(self, n: int = 1) -> object: ...

    def __enter__(self) -> Progress: ...

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> object: ...


class PeriodicLines:
    """tqdm's text without the bar, one line per ``interval`` seconds: readable in logs, where ``\\r`` is not."""

    def __init__(
        self, total: int | None, unit: str, desc: str, stream: TextIO, interval: float = LINE_INTERVAL
    ) -> None:
        self.total, self.unit, self.desc, self.stream, self.interval = total, unit, desc, stream, interval
        self.count = 0
        self.started = self.last = time.monotonic()

    def update(self, n: int = 1) -> None:
        self.count += n
        now = time.monotonic()
        if now - self.last >= self.interval:
            self.last = now
            from tqdm import tqdm

            line = tqdm.format_meter(
                self.count, self.total, now - self.started, ncols=0, prefix=self.desc, unit=self.unit
            )
            print(line, file=self.stream, flush=True)

    def __enter__(self) -> PeriodicLines:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        return None


def progress(total: int | None, unit: str, desc: str, stream: TextIO | None = None) -> Progress:
    """A bar on a terminal at least ``MIN_BAR_COLUMNS`` wide, else periodic lines; ``total`` None: a count and a
    rate without an end (a cluster ingest lists its inputs as it goes)."""
    out = sys.stderr if stream is None else stream
    columns = shutil.get_terminal_size(fallback=(0, 0)).columns
    if out.isatty() and columns >= MIN_BAR_COLUMNS:
        from tqdm import tqdm  # imported here: every command would pay for it at start otherwise

        bar: Progress = tqdm(total=total, unit=unit, desc=desc, file=out, dynamic_ncols=True)
        return bar
    return PeriodicLines(total, unit, desc, out)
