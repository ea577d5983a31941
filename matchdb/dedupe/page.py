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
from html import escape
from pathlib import Path

from matchdb.config import Settings
from matchdb.dedupe.collect import HashTable
from matchdb.dedupe.report import Outcome, failures, human_bytes, iso_time, summary_line
from matchdb.errors import MatchdbError
from matchdb.service.records import fetcher_from_settings
from matchdb.service.stateless import shown_distance
from matchdb.thumbnails import DEFAULT_SIZE, thumbnail_from_bytes

STYLE = """
body { font: 14px/1.4 system-ui, sans-serif; margin: 1.5em; color: #222; background: #fafafa; }
h1 { font-size: 1.4em; } h2 { font-size: 1.1em; margin: 0 0 .5em; }
.params { color: #555; } .params code { background: #eee; padding: 0 .3em; }
section.group { background: #fff; border: 1px solid #ddd; border-radius: 6px; padding: 1em; margin: 1em 0; }
.members { display: flex; flex-wrap: wrap; gap: 1em; }
figure { margin: 0; width: 180px; padding: 6px; border: 3px solid #ccc; border-radius: 6px; }
figure.keep { border-color: #2a9d3a; background: #eefbef; }
figure.remove, figure.moved { border-color: #d9822b; }
figure.move-failed { border-color: #c0392b; }
figure img { display: block; max-width: 168px; max-height: 168px; margin: 0 auto; }
.missing { height: 100px; display: flex; align-items: center; justify-content: center; color: #999; }
.action { font-weight: bold; text-transform: uppercase; }
figcaption { font-size: 12px; overflow-wrap: anywhere; }
table.failed td { padding: 0 1em 0 0; vertical-align: top; }
"""


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
    table = outcome.table
    params = (
        f"hash type <code>{escape(outcome.kind)}</code>, range <code>{outcome.range_:g}</code> "
        f"(at most {outcome.max_bits} differing bits), keep <code>{escape(outcome.keep)}</code>, "
        f"dihedral <code>{'on' if outcome.dihedral else 'off'}</code>"
    )
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        "<title>matchdb dedupe: near-duplicate groups</title>",
        f"<style>{STYLE}</style></head><body>",
        "<h1>matchdb dedupe: near-duplicate groups</h1>",
        f'<p class="params">{params}</p>',
        f'<p class="summary">{escape(summary_line(outcome))}</p>',
    ]
    for number, group in enumerate(outcome.groups, start=1):
        parts.append(f'<section class="group" id="group-{number}">')
        parts.append(f'<h2>Group {number}: {len(group.removed) + 1} images</h2><div class="members">')
        for member, action in outcome.members(group):
            reason = outcome.kept_because(group) if action == "keep" else None
            parts.append(_figure(outcome, table, member.row, member.bits, member.transform, action, thumbnails, reason))
        parts.append("</div></section>")
    if not outcome.groups:
        parts.append("<p>No near-duplicates found.</p>")
    failed = failures(table)
    if failed:
        parts.append(f'<h2>Failed to read ({len(failed)})</h2><table class="failed">')
        for item in failed:
            parts.append(f"<tr><td>{escape(item['source'])}</td><td>{escape(item['error'])}</td></tr>")
        parts.append("</table>")
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"


def _figure(
    outcome: Outcome,
    table: HashTable,
    row: int,
    bits: int,
    transform: str,
    action: str,
    thumbnails: Mapping[int, str | None],
    reason: str | None = None,
) -> str:
    label = table.sources[row].label
    uri = thumbnails.get(row)
    image = (
        f'<img src="{escape(uri)}" alt="{escape(label)}" loading="lazy">'
        if uri
        else '<div class="missing">no preview</div>'
    )
    details = [
        f"{table.width[row]}x{table.height[row]}, {human_bytes(int(table.nbytes[row]))}",
        f"distance {shown_distance(bits, table.kind):.1f} ({bits} bits)"
        if action != "keep"
        else f"kept: {escape(reason or '')}",
    ]
    if transform != "identity":
        details.append(f"matches the kept image after {escape(transform)}")
    modified = iso_time(float(table.mtime[row]))
    if modified:
        details.append(f"modified {modified}")
    move = outcome.moves.get(row)
    if move is not None:
        details.append(f"moved to {escape(str(move.destination))}" if move.error is None else escape(move.error))
    css = action.replace(" ", "-")
    caption = "<br>".join([f'<span class="action">{escape(action)}</span>', escape(label), *details])
    return f'<figure class="{css}" title="{escape(label)}">{image}<figcaption>{caption}</figcaption></figure>'
