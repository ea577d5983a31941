"""``--move-to DIR``: move the images not kept into DIR, never deleting and never overwriting anything.

A moved file keeps its path relative to the deepest folder common to every local input, so two ``a.jpg`` from
different folders cannot clash and a user can put a file back where it was. Every destination is checked before
the first move (one clash refuses the whole move), and each move itself refuses to overwrite (a hard link, then
unlink; across file systems an exclusive-create copy, then unlink), so a file appearing meanwhile is not lost
either. URLs are never moved.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from matchdb.dedupe.collect import Source


@dataclass(frozen=True)
class Move:
    """Where one source goes, and after :func:`move_files`, what happened (``error`` None: it moved)."""

    row: int
    source: Path
    destination: Path
    error: str | None = None


def located(path: Path) -> Path:
    """``path`` with its folder resolved (so ``./a/x`` and ``a/x`` agree) but not the file: a symlink is moved as
    the link it is, never its target elsewhere."""
    return Path(os.path.realpath(os.path.dirname(os.path.abspath(path))), path.name)


def common_base(sources: Sequence[Source]) -> Path:
    """The deepest folder holding every local input."""
    folders = [str(located(s.path).parent) for s in sources if s.path is not None]
    return Path(os.path.commonpath(folders)) if folders else Path.cwd()


def plan_moves(sources: Sequence[Source], rows: Sequence[int], destination: Path) -> list[Move]:
    """The moves of the local files among ``rows`` (URLs are skipped), relative to :func:`common_base`."""
    base = common_base(sources)
    moves = []
    for row in rows:
        path = sources[row].path
        if path is not None:
            where = located(path)
            moves.append(Move(row, where, destination / where.relative_to(base)))
    return moves


def clashes(moves: Sequence[Move]) -> list[Path]:
    """Destinations that exist already."""
    return [move.destination for move in moves if os.path.lexists(move.destination)]


def move_files(moves: Sequence[Move]) -> list[Move]:
    """Carry out ``moves``; a failed one keeps its reason and the others go on."""
    done = []
    for move in moves:
        try:
            move_no_clobber(move.source, move.destination)
        except OSError as exc:
            done.append(Move(move.row, move.source, move.destination, exc.strerror or str(exc)))
        else:
            done.append(move)
    return done


def move_no_clobber(source: Path, destination: Path) -> None:
    """Move a file; raise ``FileExistsError`` rather than replace ``destination`` (``os.rename`` would)."""
    destination.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(source, destination, follow_symlinks=False)
    except OSError as exc:
        if exc.errno not in (errno.EXDEV, errno.EPERM, errno.ENOTSUP, errno.EMLINK):
            raise
        with source.open("rb") as reader, destination.open("xb") as writer:  # "x": never replaces a file
            try:
                shutil.copyfileobj(reader, writer)
            except OSError:
                destination.unlink()  # ours (created just now): leave no partial copy to block the next run
                raise
        with contextlib.suppress(OSError):  # times and mode are best effort (FAT, CIFS refuse chmod)
            shutil.copystat(source, destination)
    try:
        os.unlink(source)
    except OSError:
        os.unlink(destination)  # leave things as they were: the original stays, the copy goes
        raise
