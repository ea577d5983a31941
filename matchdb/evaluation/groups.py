"""Known duplicate groups (``--groups CSV``): pairs inside one group are real duplicates in the folder itself, so
counting them as distinct would charge the hash with false matches it did not make.

The CSV needs a ``file`` column (a path relative to the CSV's folder, or to DIR, or absolute) and a ``group_id``
(or ``group``) column; the photo corpus's ``manifest.csv`` has this shape. Images not listed are each their own
group.
"""

from __future__ import annotations

import csv
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from matchdb.evaluation.runner import Source


class GroupsError(ValueError):
    """The groups file cannot be used."""


@dataclass(frozen=True)
class Groups:
    """``ids[i]`` is the group of source ``i``; sources in no listed group get ids of their own."""

    ids: np.ndarray
    matched_rows: int

    def sizes(self) -> np.ndarray:
        """For each source, how many sources share its group (itself included)."""
        _, inverse, counts = np.unique(self.ids, return_inverse=True, return_counts=True)
        return np.asarray(counts[inverse], dtype=np.int64)


def singletons(count: int) -> Groups:
    return Groups(np.arange(count, dtype=np.int64), 0)


def read_groups(csv_path: Path, root: Path, sources: Sequence[Source]) -> Groups:
    """Group ids for ``sources`` from the CSV; raises :class:`GroupsError` if unreadable or naming no source."""
    try:
        with csv_path.open(newline="", encoding="utf-8-sig") as handle:
            reader = csv.DictReader(handle)
            columns = reader.fieldnames or []
            group_column = next((c for c in ("group_id", "group") if c in columns), None)
            if "file" not in columns or group_column is None:
                raise GroupsError(f"{csv_path}: needs a 'file' column and a 'group_id' (or 'group') column")
            rows = [(row["file"], row[group_column]) for row in reader if row.get("file") and row.get(group_column)]
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise GroupsError(f"cannot read {csv_path}: {exc}") from exc

    by_path = {source.path.resolve(): i for i, source in enumerate(sources)}
    by_key = {source.key: i for i, source in enumerate(sources)}
    labels: dict[int, str] = {}
    for file, group in rows:
        index = by_key.get(Path(file).as_posix())
        if index is None:
            candidate = Path(file) if Path(file).is_absolute() else csv_path.parent / file
            index = by_path.get(candidate.resolve())
        if index is None:
            candidate = root / file
            index = by_path.get(candidate.resolve())
        if index is not None:
            labels[index] = group
    if rows and not labels:
        raise GroupsError(f"{csv_path}: no row names an image of {root}")
    names = {name: number for number, name in enumerate(sorted(set(labels.values())))}
    ids = np.array(
        [names[labels[i]] if i in labels else len(names) + i for i in range(len(sources))],
        dtype=np.int64,
    )
    return Groups(ids, len(labels))
