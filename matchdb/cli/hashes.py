"""``matchdb hash``: the visual hashes of image files, printed as JSON lines."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from matchdb.cli.common import load_settings
from matchdb.errors import ImageError
from matchdb.hashing import HASH_TYPES, hash_image


@click.command("hash")
@click.argument("files", nargs=-1, required=True, type=click.Path(dir_okay=False, path_type=Path))
@click.option(
    "--hash-type",
    "hash_types",
    type=click.Choice(HASH_TYPES),
    multiple=True,
    help="Hash type to print (repeatable). Default: both bmh1 and phash.",
)
def hash_command(files: tuple[Path, ...], hash_types: tuple[str, ...]) -> None:
    """Print the visual hashes of image FILES, one JSON object per line.

    Each line is {"file", "_width", "_height", "bmh1", "phash"}; a file that cannot be read or decoded prints
    {"file", "error"} instead and the others go on. The exit status is 1 if any file failed.
    """
    settings = load_settings()
    kinds = hash_types or HASH_TYPES
    failed = 0
    for path in files:
        line: dict[str, object] = {"file": str(path)}
        try:
            result = hash_image(path.read_bytes(), kinds, settings.max_pixels)
        except (OSError, ImageError) as exc:
            failed += 1
            line["error"] = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        else:
            line["_width"], line["_height"] = result.width, result.height
            line.update({kind: value.to_string() for kind, value in result.hashes.items()})
        click.echo(json.dumps(line))
    if failed:
        click.echo(f"matchdb hash: {failed} of {len(files)} files failed", err=True)
        sys.exit(1)
