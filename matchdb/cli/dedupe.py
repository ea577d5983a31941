"""``matchdb dedupe``: near-duplicate groups of a folder (or files, manifests, URLs) from the command line. The logic
lives in :mod:`matchdb.dedupe`; this parses options, shows progress and prints."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, cast

import click

from matchdb.cli.common import load_settings
from matchdb.cli.progress import progress
from matchdb.hashing import HASH_TYPES

if TYPE_CHECKING:
    from matchdb.dedupe import KeepPolicy

# matchdb.dedupe (numpy index, httpx, tqdm) is imported inside the command, so other commands start as fast as before.
_KEEP = ("largest", "oldest", "first")


@click.command("dedupe")
@click.argument("inputs", nargs=-1, required=True, metavar="PATH|URL...")
@click.option(
    "--range",
    "range_",
    type=click.FloatRange(0, 100),
    default=None,
    help="Largest distance, in percent of differing bits (inclusive, one decimal), at which two images are "
    "duplicates; 0 = identical hashes only. [default: 2.1 for bmh1, 14.1 for phash: docs/accuracy.md]",
)
@click.option("--hash-type", type=click.Choice(HASH_TYPES), default="bmh1", show_default=True)
@click.option("--dihedral", is_flag=True, help="Also match mirrored and 90/180/270-degree turned copies.")
@click.option(
    "--geometric",
    is_flag=True,
    help="Match crops and turns of up to about 7 degrees instead (its own score; default range 10.9).",
)
@click.option(
    "--keep",
    type=click.Choice(_KEEP),
    default="largest",
    show_default=True,
    help="Which image of a group is kept. largest: colour before greyscale, then most pixels, camera EXIF, an "
    "original format (JPEG/HEIF/TIFF before PNG/WebP/GIF/BMP), most bytes; oldest: modification time; first: as given.",
)
@click.option("-j", "--jobs", type=click.IntRange(min=1), default=None, help="Hashing processes [default: CPUs].")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON document instead of a table.")
@click.option("--csv", "as_csv", is_flag=True, help="Print CSV, one row per group member, instead of a table.")
@click.option(
    "--html",
    "html_path",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Also write an HTML page of the groups.",
)
@click.option(
    "--move-to",
    type=click.Path(file_okay=False, path_type=Path),
    help="Move the images not kept into this folder (relative paths kept; never overwrites; URLs stay).",
)
def dedupe_command(
    inputs: tuple[str, ...],
    range_: float | None,
    hash_type: str,
    dihedral: bool,
    geometric: bool,
    keep: str,
    jobs: int | None,
    as_json: bool,
    as_csv: bool,
    html_path: Path | None,
    move_to: Path | None,
) -> None:
    """Find groups of near-duplicate images among PATH|URL...: folders (searched recursively), image files, CSV or
    JSONL manifests (rows with _url or _file), .txt lists (one path or URL a line), or http(s) URLs.

    In each group the image chosen by --keep is kept and every other one is within --range of it (groups are
    formed greedily around kept images, never by chaining). A dry run by default: nothing is deleted, ever;
    --move-to DIR moves the other images there. The exit status is 1 if some inputs could not be read (the
    rest are still reported), 2 for usage errors.
    """
    from matchdb import dedupe as service

    if as_json and as_csv:
        raise click.UsageError("--json and --csv are exclusive")
    if html_path is not None and not html_path.absolute().parent.is_dir():  # before anything is moved
        raise click.BadParameter(f"folder {html_path.absolute().parent} does not exist", param_hint="--html")
    settings = load_settings()
    if geometric and dihedral:
        raise click.UsageError("--geometric and --dihedral cannot be combined")
    default = service.GEOMETRIC_RANGE if geometric else service.DEFAULT_RANGE[hash_type]
    limit = default if range_ is None else range_
    try:
        sources, repeated = service.collect_sources(inputs, exclude=move_to)
    except service.InputError as exc:
        raise click.UsageError(str(exc)) from exc
    if repeated:
        click.echo(f"matchdb dedupe: {repeated} inputs named more than once, counted once", err=True)
    workers = min(jobs or os.cpu_count() or 1, max(1, len(sources)))
    with service.hash_executor(workers) as executor:  # first: its workers must fork before any thread starts
        with progress(len(sources), "img", "hashing") as bar:
            outcome = service.dedupe(
                sources,
                kind=hash_type,
                range_=limit,
                keep=cast("KeepPolicy", keep),  # click.Choice checked it
                dihedral=dihedral,
                executor=executor,
                jobs=workers,
                settings=settings,
                on_progress=bar.update,
                repeated=repeated,
                geometric=geometric,
            )
        thumbnails = service.page.make_thumbnails(outcome, executor, settings) if html_path is not None else {}
    if move_to is not None:
        try:
            outcome = service.apply_moves(outcome, move_to)
        except service.MoveRefused as exc:
            raise click.UsageError(str(exc)) from exc
    # The report first: after --move-to it is the record of what went where. As bytes, so a file name that is not
    # valid UTF-8 comes out as the bytes it has on disk instead of stopping the output.
    if as_json:
        report = service.report.to_json(outcome) + "\n"
    elif as_csv:
        report = service.report.to_csv(outcome)
    else:
        report = service.report.to_table(outcome) + "\n"
    click.echo(report.encode("utf-8", "surrogateescape"), nl=False)
    html_failed = False
    if html_path is not None:
        try:
            html_path.write_text(service.page.to_html(outcome, thumbnails), encoding="utf-8", errors="surrogateescape")
        except OSError as exc:
            html_failed = True
            click.echo(f"matchdb dedupe: cannot write {html_path}: {exc.strerror or exc}", err=True)
    for line in service.report.failure_lines(outcome.table):
        click.echo(f"matchdb dedupe: cannot read {line}", err=True)
    failed = len(outcome.table.errors) + outcome.move_failures + html_failed
    if failed:
        click.echo(f"matchdb dedupe: {len(outcome.table.errors)} inputs failed to read", err=True)
        if outcome.move_failures:
            click.echo(f"matchdb dedupe: {outcome.move_failures} files failed to move", err=True)
        sys.exit(1)
