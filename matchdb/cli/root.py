"""The ``matchdb`` command group: it only registers the commands, which live one group per module beside it."""

from __future__ import annotations

import click

from matchdb import __version__
from matchdb.cli import collections, db, dedupe, evaluate, hashes, info, rebuild, serve, tokens


@click.group()
@click.version_option(__version__, prog_name="matchdb")
@click.option(
    "--database",
    metavar="URL",
    help="Database URL for this command (default: MATCHDB_DATABASE_URL, else the per-user SQLite file that "
    "`matchdb info` shows).",
)
def main(database: str | None) -> None:
    """matchdb: find duplicate and near-duplicate images by visual hash."""


for _command in (
    hashes.hash_command,
    info.info,
    serve.serve,
    db.db,
    tokens.token,
    rebuild.rebuild_index,
    collections.collection,
    collections.ingest_command,
    collections.query_command,
    dedupe.dedupe_command,
    evaluate.eval_command,
):
    main.add_command(_command)
