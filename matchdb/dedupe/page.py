"""``--html PATH``: one self-contained page of the groups, with thumbnails, the kept image of each group marked.

Self-contained (thumbnails inlined as ``data:`` URIs, no script, no external file) so it can be mailed or attached
to a ticket, and opened offline. Thumbnails are made only for group members, after grouping: files are read again
in the worker processes and URLs downloaded again through the guarded fetcher, rather than keeping every image's
bytes or thumbnail in memory while a large folder is hashed.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from concurrent.futures import Executor
from pathlib import Path
from typing import Any

from matchdb.config import Settings
from matchdb.dedupe.grouping import Group, Member
from matchdb.dedupe.report import Outcome, failures, human_bytes, iso_time, summary_line
from matchdb.errors import MatchdbError
from matchdb.pages import render
from matchdb.service.records import fetcher_from_settings
from matchdb.service.stateless import shown_distance
from matchdb.thumbnails import DEFAULT_SIZE, thumbnail_from_bytes


def thumbnail_of_path(path: str, size: int) -> str | None:
    """Runs in a worker: the file's thumbnail as a data URI (None if unreadable now)."""
    try:
        data = Path(path).read_bytes()
    except OSError:
        return None
    return thumbnail_from_bytes(data, size)


def make_thumbnails(
    outcome: Outcome, executor: Executor, settings: Settings, size: int = DEFAULT_SIZE
) -> dict[int, str | None]:
    """Thumbnails of every group member (row -> data URI, None where the image cannot be read again)."""
    table = outcome.table
    rows = [member.row for group in outcome.groups for member, _ in outcome.members(group)]
    limit = asyncio.Semaphore(max(4, settings.fetch_concurrency))

    async def main() -> dict[int, str | None]:
        loop = asyncio.get_running_loop()
        async with fetcher_from_settings(settings) as fetcher:

            async def one(row: int) -> str | None:
                source = table.sources[row]
                async with limit:
                    if source.path is not None:
                        return await loop.run_in_executor(executor, thumbnail_of_path, str(source.path), size)
                    assert source.url is not None
                    try:
                        data = await fetcher.fetch(source.url)
                    except MatchdbError:
                        return None
                    return await loop.run_in_executor(executor, thumbnail_from_bytes, data, size)

            found = await asyncio.gather(*(one(row) for row in rows))
        return dict(zip(rows, found, strict=True))

    return asyncio.run(main())


def to_html(outcome: Outcome, thumbnails: Mapping[int, str | None]) -> str:
    """The page (``matchdb/templates/dedupe.html``): groups, kept image first, then what failed to read."""
    groups = [
        [_member(outcome, member, action, thumbnails, group) for member, action in outcome.members(group)]
        for group in outcome.groups
    ]
    return render(
        "dedupe.html",
        kind=outcome.kind,
        range=f"{outcome.range_:g}",
        max_bits=outcome.max_bits,
        keep=outcome.keep,
        dihedral=outcome.dihedral,
        summary=summary_line(outcome),
        groups=groups,
        failed=failures(outcome.table),
    )


def _member(
    outcome: Outcome, member: Member, action: str, thumbnails: Mapping[int, str | None], group: Group
) -> dict[str, Any]:
    """What the page shows of one image: plain values, escaped by the template."""
    table, row, bits, transform = outcome.table, member.row, member.bits, member.transform
    details = [
        f"{table.width[row]}x{table.height[row]}, {human_bytes(int(table.nbytes[row]))}",
        f"kept: {outcome.kept_because(group)}"
        if action == "keep"
        else f"distance {shown_distance(bits, table.kind):.1f} ({bits} bit{'' if bits == 1 else 's'})",
    ]
    if transform != "identity":
        details.append(f"matches the kept image after {transform}")
    modified = iso_time(float(table.mtime[row]))
    if modified:
        details.append(f"modified {modified}")
    move = outcome.moves.get(row)
    if move is not None:
        details.append(f"moved to {move.destination}" if move.error is None else move.error)
    label = table.sources[row].label
    return {
        "css": action.replace(" ", "-"),
        "label": label,
        "action": action,
        "thumbnail": thumbnails.get(row),
        "details": details,
    }
