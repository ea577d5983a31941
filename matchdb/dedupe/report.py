"""What ``matchdb dedupe`` found, as a terminal table, one JSON document, or CSV (one row per group member).

Every format lists the same thing: the groups, each kept image first, with the action taken or proposed per image
(``keep``; ``remove`` in a dry run or for a URL, which is never moved; ``moved``; ``move failed``), its distance to
the kept image (API.md's percent, one decimal, and the exact bit count), size, bytes and modification time.
"""

from __future__ import annotations

import csv
import io
import json
import math
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, cast

from matchdb.dedupe.collect import HashTable
from matchdb.dedupe.grouping import Group, KeepPolicy, Member, why_kept
from matchdb.dedupe.moving import Move
from matchdb.hashing import NBITS
from matchdb.service.stateless import shown_distance

CSV_COLUMNS = (
    "group",
    "action",
    "source",
    "distance",
    "hamming",
    "transform",
    "width",
    "height",
    "bytes",
    "mtime",
    "moved_to",
    "error",
    "kept_because",
)


@dataclass(frozen=True)
class Outcome:
    """A finished run: its parameters, the hash table, the groups and (with ``--move-to``) each move's result."""

    table: HashTable
    groups: list[Group]
    range_: float
    max_bits: int
    keep: str
    dihedral: bool
    move_to: Path | None = None
    moves: Mapping[int, Move] = field(default_factory=dict)
    repeated: int = 0  # inputs named more than once, counted once
    geometric: bool = False  # grouped by the geometric score (bits of 64, shown as percentages like phash's)

    @property
    def kind(self) -> str:
        return self.table.kind

    def action(self, row: int, kept: bool) -> str:
        if kept:
            return "keep"
        move = self.moves.get(row)
        if move is None:
            return "remove"
        return "move failed" if move.error else "moved"

    def kept_because(self, group: Group) -> str:
        return why_kept(self.table, group, cast(KeepPolicy, self.keep))

    def members(self, group: Group) -> Iterator[tuple[Member, str]]:
        """The kept image (as a member at distance 0), then the others, each with its action."""
        yield Member(group.kept, 0, "identity"), "keep"
        for member in group.removed:
            yield member, self.action(member.row, False)

    def duplicate_bytes(self) -> int:
        return sum(int(self.table.nbytes[m.row]) for g in self.groups for m in g.removed)

    @property
    def duplicates(self) -> int:
        return sum(len(g.removed) for g in self.groups)

    @property
    def moved(self) -> int:
        return sum(1 for move in self.moves.values() if move.error is None)

    @property
    def move_failures(self) -> int:
        return sum(1 for move in self.moves.values() if move.error is not None)


def iso_time(timestamp: float) -> str | None:
    return None if math.isnan(timestamp) else datetime.fromtimestamp(timestamp, UTC).isoformat(timespec="seconds")


def member_record(outcome: Outcome, member: Member, action: str) -> dict[str, Any]:
    table, row = outcome.table, member.row
    move = outcome.moves.get(row)
    record: dict[str, Any] = {
        "source": table.sources[row].label,
        "action": action,
        "distance": shown_distance(member.bits, table.kind),
        "hamming": member.bits,
        "transform": member.transform,
        "width": int(table.width[row]),
        "height": int(table.height[row]),
        "bytes": int(table.nbytes[row]),
        "mtime": iso_time(float(table.mtime[row])),
        "moved_to": str(move.destination) if move is not None and move.error is None else None,
    }
    if move is not None and move.error is not None:
        record["error"] = move.error
    return record


def summary(outcome: Outcome) -> dict[str, Any]:
    table = outcome.table
    return {
        "images": len(table.sources),
        "hashed": int(table.ok.sum()),
        "failed": len(table.errors),
        "repeated_inputs": outcome.repeated,
        "groups": len(outcome.groups),
        "duplicates": outcome.duplicates,
        "duplicate_bytes": outcome.duplicate_bytes(),
        "dry_run": outcome.move_to is None,
        "moved": outcome.moved,
        "move_failures": outcome.move_failures,
    }


def to_json(outcome: Outcome) -> str:
    """One JSON document: parameters, summary, groups (members kept first), failures."""
    table = outcome.table
    document = {
        "hash_type": table.kind,
        "range": outcome.range_,
        "max_hamming": outcome.max_bits,
        "nbits": NBITS[table.kind],
        "keep": outcome.keep,
        "dihedral": outcome.dihedral,
        **({"geometric": True} if outcome.geometric else {}),
        "move_to": str(outcome.move_to) if outcome.move_to is not None else None,
        "summary": summary(outcome),
        "groups": [
            {
                "group": number,
                "kept_because": outcome.kept_because(group),
                "members": [member_record(outcome, m, action) for m, action in outcome.members(group)],
            }
            for number, group in enumerate(outcome.groups, start=1)
        ],
        "failed": failures(table),
    }
    return json.dumps(document, indent=2, ensure_ascii=False)


def failures(table: HashTable) -> list[dict[str, str]]:
    return [{"source": table.sources[row].label, "error": error} for row, error in sorted(table.errors.items())]


def to_csv(outcome: Outcome) -> str:
    """One row per group member, kept image first in each group; failures are not rows (stderr lists them)."""
    out = io.StringIO()
    writer = csv.DictWriter(out, CSV_COLUMNS, lineterminator="\n")
    writer.writeheader()
    for number, group in enumerate(outcome.groups, start=1):
        for member, action in outcome.members(group):
            record = member_record(outcome, member, action)
            reason = outcome.kept_because(group) if action == "keep" else ""
            writer.writerow(
                {"group": number, **{k: "" if v is None else v for k, v in record.items()}, "kept_because": reason}
            )
    return out.getvalue()


def human_bytes(count: int) -> str:
    size = float(count)
    for unit in ("B", "kB", "MB", "GB"):
        if size < 1000 or unit == "GB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1000
    raise AssertionError("unreachable")


def to_table(outcome: Outcome) -> str:
    """The terminal view: each group, kept image first, then one summary line."""
    table = outcome.table
    lines: list[str] = []
    for number, group in enumerate(outcome.groups, start=1):
        lines.append(f"group {number} ({len(group.removed) + 1} images; kept: {outcome.kept_because(group)})")
        for member, action in outcome.members(group):
            row = member.row
            size = f"{table.width[row]}x{table.height[row]}"
            note = "" if member.transform == "identity" else f"  [{member.transform}]"
            move = outcome.moves.get(row)
            if move is not None:
                note += f"  -> {move.destination}" if move.error is None else f"  (not moved: {move.error})"
            distance = shown_distance(member.bits, table.kind)
            lines.append(
                f"  {action:<11} {distance:5.1f} {size:>11} {human_bytes(int(table.nbytes[row])):>9}  "
                f"{table.sources[row].label}{note}"
            )
        lines.append("")
    lines.append(summary_line(outcome))
    return "\n".join(lines)


def summary_line(outcome: Outcome) -> str:
    table = outcome.table
    label = "geometric" if outcome.geometric else outcome.kind
    head = (
        f"{int(table.ok.sum())} images hashed ({len(table.errors)} failed), {len(outcome.groups)} groups of "
        f"near-duplicates at range {outcome.range_:g} ({label}{', dihedral' if outcome.dihedral else ''}): "
        f"{outcome.duplicates} duplicates, {human_bytes(outcome.duplicate_bytes())}"
    )
    if outcome.move_to is None:
        return head + " would be removed (dry run: nothing was moved; --move-to DIR moves them)"
    urls = outcome.duplicates - len(outcome.moves)
    tail = f"; moved {outcome.moved} to {outcome.move_to}"
    if outcome.move_failures:
        tail += f", {outcome.move_failures} failed to move"
    if urls:
        tail += f", {urls} URLs left in place"
    return head + tail


def failure_lines(table: HashTable) -> Sequence[str]:
    return [f"{table.sources[row].label}: {error}" for row, error in sorted(table.errors.items())]
