"""``matchdb eval DIR``: measure the hashes on the user's own images and say which ``range`` to use.

The work lives in :mod:`matchdb.evaluation`; its pipeline (tqdm, process pool) is imported inside the command so
other commands start as fast as before.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import click

from matchdb.cli.common import load_settings
from matchdb.evaluation.baselines import BASELINES
from matchdb.evaluation.transforms import NAMES as TRANSFORM_NAMES
from matchdb.hashing import HASH_TYPES


@click.command("eval")
@click.argument("directory", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option(
    "--groups",
    "groups_file",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="CSV of known duplicates in DIR (columns file, group_id): pairs inside a group are not counted as distinct.",
)
@click.option(
    "--hash-type",
    "hash_types",
    type=click.Choice(HASH_TYPES),
    multiple=True,
    help="Hash type to measure (repeatable). Default: bmh1 and phash.",
)
@click.option(
    "--transform",
    "transforms",
    type=click.Choice(TRANSFORM_NAMES),
    multiple=True,
    help="Transform to apply (repeatable). Default: all of them.",
)
@click.option(
    "--baseline",
    "baselines",
    type=click.Choice(tuple(BASELINES)),
    multiple=True,
    help="Also measure another library's hash (repeatable; needs pip install 'matchdb[accuracy]').",
)
@click.option("--dihedral", is_flag=True, help="Match flipped and 90-degree rotated copies (best of 8 orientations).")
@click.option(
    "--geometric",
    is_flag=True,
    help='Also measure the geometric matcher (crops and small turns, as the API flag "geometric").',
)
@click.option("-j", "--jobs", type=click.IntRange(min=1), default=None, help="Worker processes (default: all cores).")
@click.option("--limit", type=click.IntRange(min=1), default=None, help="Use only the first N images (path order).")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the random transforms (noise).")
@click.option(
    "--json",
    "json_path",
    type=click.Path(dir_okay=False, allow_dash=True, path_type=Path),
    help="Write the full results as JSON to this file ('-': standard output, instead of the table).",
)
@click.option("--html", "html_path", type=click.Path(dir_okay=False, path_type=Path), help="Write an HTML report.")
@click.option("-q", "--quiet", is_flag=True, help="No progress bar.")
def eval_command(
    directory: Path,
    groups_file: Path | None,
    hash_types: tuple[str, ...],
    transforms: tuple[str, ...],
    baselines: tuple[str, ...],
    dihedral: bool,
    geometric: bool,
    jobs: int | None,
    limit: int | None,
    seed: int,
    json_path: Path | None,
    html_path: Path | None,
    quiet: bool,
) -> None:
    """Measure how well the hashes find edited copies of the images in DIR.

    Each image is copied in memory with every transform (JPEG re-encodes, downscales, colour changes, noise, crops,
    rotations, watermarks, ...); recall is the share of copies within a threshold of their original, the
    false-match rate (FMR) the share of pairs of different images within it. The report gives, per hash type,
    the threshold at FMR 1e-3, 1e-4 and 1e-5 (where DIR has enough pairs to show it), in bits and as the API's
    range, the recall of each transform there with a 95% interval, and a recommended range: the threshold at
    FMR 1e-4, given only when DIR's images make at least 10,000 pairs of different images (142 distinct images).
    A smaller folder gets no recommendation, never a looser one: it says so and how many images it would need.
    Unreadable files are reported and skipped; the exit status is 1 if no image could be read.
    """
    from matchdb.evaluation import pipeline, report_html, report_text
    from matchdb.evaluation.baselines import BaselineUnavailable, require
    from matchdb.evaluation.groups import GroupsError
    from matchdb.evaluation.runner import Plan

    settings = load_settings()
    for option, path in (("--json", json_path), ("--html", html_path)):
        if path is not None and str(path) != "-" and not path.absolute().parent.is_dir():
            raise click.BadParameter(f"folder {path.absolute().parent} does not exist", param_hint=option)
    try:
        require(baselines)
    except BaselineUnavailable as exc:
        raise click.ClickException(str(exc)) from exc
    try:
        inputs = pipeline.prepare(directory, limit, groups_file)
    except GroupsError as exc:
        raise click.BadParameter(str(exc), param_hint="--groups") from exc
    except pipeline.NoImages as exc:
        click.echo(f"matchdb eval: {exc}", err=True)
        sys.exit(1)
    plan = Plan(
        hash_types=tuple(dict.fromkeys(hash_types or HASH_TYPES)),
        baselines=tuple(dict.fromkeys(baselines)),
        transforms=tuple(dict.fromkeys(transforms or TRANSFORM_NAMES)),
        dihedral=dihedral,
        seed=seed,
        geometric=geometric,
        max_pixels=settings.max_pixels,
    )
    try:
        report = pipeline.evaluate(inputs, plan, jobs or os.cpu_count() or 1, progress=not quiet)
    except pipeline.NoImages as exc:
        click.echo(f"matchdb eval: {exc}", err=True)
        _echo_skipped(exc.failures)
        sys.exit(1)
    _echo_skipped(report.skipped)

    if json_path is not None:
        text = json.dumps(report.to_dict(), indent=1)
        if str(json_path) == "-":
            click.echo(text)
        else:
            json_path.write_text(text + "\n", encoding="utf-8", errors="surrogateescape")
    if html_path is not None:
        html_path.write_text(
            report_html.render(report, directory, settings.max_pixels), encoding="utf-8", errors="surrogateescape"
        )
        click.echo(f"HTML report written to {html_path}", err=True)
    if json_path is None or str(json_path) != "-":
        click.echo(report_text.render(report), nl=False)


def _echo_skipped(skipped: list[dict[str, str]]) -> None:
    for failure in skipped:
        click.echo(f"matchdb eval: skipped {failure['file']}: {failure['error']}", err=True)
