"""Tombstones that readers can trust without a lock: each row's death is stamped with a generation.

Why not a boolean mask flipped in place: a reader that takes a snapshot and then reads the mask sees deaths that
happened after its snapshot (a replaced record's old row already dead, its new row not yet in the reader's
delta: the record vanishes from the answer), and ``np.flatnonzero`` over a mask that changes between its count
and its fill returns uninitialised memory (issue 24: 500s, and rows that belong to no record). Copying the mask
on every delete would cost a whole mask per change at millions of records.

So each row keeps the generation at which it died (``ALIVE`` while it lives), and a snapshot is a generation: a
row is alive in it when its stamp is greater. A writer (under the index's lock) stamps dead rows with a generation
newer than every published snapshot, then publishes the snapshot of that generation. Each stamp is written once,
from ``ALIVE`` to a generation that older snapshots read as alive, so what a reader computes from a snapshot never
changes, however the writers go on (aligned 4-byte stores and loads are atomic). This is multiversion concurrency
control, as Postgres' ``xmax``. Generations restart at each rebuild (fresh arrays), so 32 bits always suffice: a
generation is spent per change that kills rows, and a rebuild comes before the rows killed reach the tree's size.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from matchdb.index.kernels import Bools, Ints

Stamps = npt.NDArray[np.uint32]
ALIVE = np.uint32(np.iinfo(np.uint32).max)
_EVERYTHING = slice(None)


def alive_stamps(rows: int) -> Stamps:
    """Stamps for ``rows`` rows that are all alive."""
    return np.full(rows, ALIVE, np.uint32)


@dataclass(frozen=True)
class Liveness:
    """Which rows of an array are alive as of one generation. Immutable to its readers (see the module docstring).

    ``stamps`` is None while no row of the array has ever died (no memory spent on a collection without deletes);
    ``dead`` counts the rows dead as of ``generation``, so a reader skips the masks entirely when it is 0.
    """

    stamps: Stamps | None = None
    generation: int = 0
    dead: int = 0

    @property
    def clean(self) -> bool:
        return self.dead == 0

    def at(self, rows: Ints) -> Bools | slice:
        """A selector of the live ones among ``rows``: a mask, or ``slice(None)`` (free) when none is dead."""
        if self.clean or self.stamps is None:
            return _EVERYTHING
        return self.stamps[rows] > self.generation

    def prefix(self, count: int) -> Bools:
        """The mask of the first ``count`` rows."""
        if self.clean or self.stamps is None:
            return np.ones(count, np.bool_)
        return self.stamps[:count] > self.generation

    def is_alive(self, row: int) -> bool:
        return self.stamps is None or int(self.stamps[row]) > self.generation

    def killed(self, stamps: Stamps, rows: Ints, generation: int) -> Liveness:
        """Writers only: stamp ``rows`` (alive until now) dead at ``generation`` (newer than every published one)
        in ``stamps`` (this array, or a fresh or grown copy of it), and the liveness that sees it."""
        stamps[rows] = generation
        return Liveness(stamps, generation, self.dead + len(rows))

    def at_generation(self, generation: int) -> Liveness:
        """The same rows seen at a newer generation (another array's rows died at it)."""
        return Liveness(self.stamps, generation, self.dead)

    @property
    def nbytes(self) -> int:
        return 0 if self.stamps is None else self.stamps.nbytes
