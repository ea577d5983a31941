"""``matchdb dedupe``: find near-duplicate images among folders, files, manifests and URLs, and optionally move
the copies aside. The steps live in small modules: :mod:`.collect` (inputs and hashes), :mod:`.grouping` (pairs
and greedy groups), :mod:`.moving` (``--move-to``), :mod:`.report` and :mod:`.page` (outputs)."""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import Executor
from dataclasses import replace
from pathlib import Path

from matchdb.config import Settings
from matchdb.dedupe import page, report
from matchdb.dedupe.collect import HashTable, InputError, Source, collect_sources, hash_executor, hash_sources
from matchdb.dedupe.grouping import (
    DEFAULT_RANGE,
    GEOMETRIC_RANGE,
    KEEP_POLICIES,
    Group,
    KeepPolicy,
    Member,
    group_duplicates,
    group_geometric,
    removed_rows,
)
from matchdb.dedupe.moving import clashes, move_files, plan_moves
from matchdb.dedupe.report import Outcome
from matchdb.service.collections import max_bits_within

__all__ = [
    "DEFAULT_RANGE",
    "GEOMETRIC_RANGE",
    "KEEP_POLICIES",
    "Group",
    "HashTable",
    "InputError",
    "KeepPolicy",
    "Member",
    "MoveRefused",
    "Outcome",
    "Source",
    "apply_moves",
    "collect_sources",
    "dedupe",
    "hash_executor",
    "page",
    "report",
]


class MoveRefused(InputError):
    """``--move-to`` would overwrite files already there: nothing is moved."""


def dedupe(
    sources: list[Source],
    *,
    kind: str,
    range_: float,
    keep: KeepPolicy,
    dihedral: bool,
    executor: Executor,
    jobs: int,
    settings: Settings,
    on_progress: Callable[[], object] = lambda: None,
    repeated: int = 0,
    geometric: bool = False,
) -> Outcome:
    """Hash ``sources`` and group the near-duplicates (a dry run: nothing is moved here); with ``geometric`` by the
    geometric score (crops and small turns; bits of 64, shown as a percentage like phash's)."""
    if geometric:
        kind = "phash"  # its table shows the geometric bits of 64 as phash's are shown
    table = hash_sources(
        sources,
        kind,
        dihedral=dihedral,
        executor=executor,
        jobs=jobs,
        settings=settings,
        on_progress=on_progress,
        geometric=geometric,
    )
    if geometric:
        max_bits = max_bits_within(range_, "phash")  # 64 bits: the same percentages
        groups = group_geometric(table, max_bits, keep)
    else:
        max_bits = max_bits_within(range_, kind)
        groups = group_duplicates(table, max_bits, keep)
    return Outcome(table, groups, range_, max_bits, keep, dihedral, repeated=repeated, geometric=geometric)


def apply_moves(outcome: Outcome, move_to: Path) -> Outcome:
    """Move every local image not kept into ``move_to``; refuses (:class:`MoveRefused`) before moving anything if
    a destination exists. A move that fails later is recorded in the outcome and the others go on."""
    moves = plan_moves(outcome.table.sources, removed_rows(outcome.groups), move_to)
    existing = clashes(moves)
    if existing:
        shown = ", ".join(str(path) for path in existing[:5]) + (" ..." if len(existing) > 5 else "")
        raise MoveRefused(f"{len(existing)} files exist already in {move_to}, not overwriting: {shown}")
    done = move_files(moves)
    return replace(outcome, move_to=move_to, moves={move.row: move for move in done})
