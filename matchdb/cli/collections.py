"""``matchdb collection``, ``matchdb ingest`` and ``matchdb query``: collections from the command line, written to
and read from the database directly (no server needed). The logic lives in :mod:`matchdb.service.ingest`."""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import sys
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

import click
from sqlalchemy.engine import make_url

from matchdb.cli.common import WORKSPACE_HELP, load_settings, open_engine, resolve_collection
from matchdb.cli.progress import progress
from matchdb.config import Settings, data_dir
from matchdb.errors import ImageError
from matchdb.geometric import Query as GeometricQuery
from matchdb.geometric import query as geometric_query
from matchdb.hashing import HASH_TYPES, VisualHash, decode_image, hash_pixels
from matchdb.hashing.dihedral import hash_dihedral
from matchdb.pool import process_pool
from matchdb.storage import collections as collection_store
from matchdb.storage.tokens import DEFAULT_WORKSPACE

if TYPE_CHECKING:
    from matchdb.service.ingest import FailureReport, Summary

# matchdb.service.ingest (httpx, starlette, tqdm) is imported inside the commands that use it, so every other
# command starts as fast as before.
_REPORT_FOLDER = "ingest-failures"


@click.group()
def collection() -> None:
    """Manage collections (persistent sets of hashed images)."""


@collection.command("create")
@click.argument("name")
@click.option("--workspace", default=DEFAULT_WORKSPACE, show_default=True)
@click.option(
    "--geometric",
    is_flag=True,
    help="Records also keep a geometric signature (304 bytes), so geometric queries find crops and small turns.",
)
def collection_create(name: str, workspace: str, geometric: bool) -> None:
    """Create collection NAME and print its id."""
    with open_engine(load_settings()).begin() as connection:
        try:
            info = collection_store.create_collection(connection, workspace, name, geometric)
        except (collection_store.CollectionExists, ValueError) as exc:
            raise click.ClickException(str(exc)) from exc
    click.echo(info.id)


@collection.command("list")
@click.option("--workspace", default=None, help="Only this workspace (default: every workspace).")
@click.option("--json", "as_json", is_flag=True, help="Print JSON lines instead of a table.")
def collection_list(workspace: str | None, as_json: bool) -> None:
    """List collections: id, name, workspace and record count."""
    with open_engine(load_settings()).connect() as connection:
        infos = collection_store.list_collections(connection, workspace)
    if as_json:
        for info in infos:
            row = {"id": info.id, "name": info.name, "workspace": info.workspace, "records": info.record_count}
            click.echo(json.dumps({**row, "created_at": info.created_at.isoformat()}))
        return
    if not infos:
        click.echo("no collections yet (create one with `matchdb collection create NAME`)", err=True)
        return
    line = "{:<36}  {:<24} {:<16} {:>9}  {}"
    click.echo(line.format("id", "name", "workspace", "records", "created"))
    for info in infos:
        created = info.created_at.isoformat(timespec="seconds")
        click.echo(line.format(info.id, info.name, info.workspace, info.record_count, created))


@collection.command("delete")
@click.argument("key", metavar="NAME|ID")
@click.option("--workspace", default=None, help=WORKSPACE_HELP)
@click.option("--yes", is_flag=True, help="Really delete the collection and all its records.")
def collection_delete(key: str, workspace: str | None, yes: bool) -> None:
    """Delete a collection and every record in it (there is no undo, hence --yes)."""
    engine = open_engine(load_settings())
    info = resolve_collection(engine, workspace, key, offer_create=False)
    if not yes:
        raise click.ClickException(
            f"not deleting collection {info.name!r} ({info.record_count} records) without --yes (there is no undo)"
        )
    with engine.begin() as connection:
        collection_store.delete_collection(connection, info.id)
    click.echo(f"deleted collection {info.name!r} ({info.id}, {info.record_count} records)")


@click.command("ingest")
@click.argument("paths", nargs=-1, required=True, type=click.Path(exists=True, path_type=Path))
@click.option("--collection", "key", required=True, metavar="NAME|ID", help="The collection to ingest into.")
@click.option("--workspace", default=None, help=WORKSPACE_HELP)
@click.option("--create", is_flag=True, help="Create the collection if it does not exist.")
@click.option("-j", "--jobs", type=click.IntRange(min=1), default=None, help="Hashing processes [default: CPUs].")
@click.option("--batch-size", type=click.IntRange(min=1), default=200, show_default=True, help="Records per write.")
@click.option(
    "--report",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Where failures go, as JSON lines (only created if something failed; the terminal shows the first few and "
    f"a count per reason). [default: a new file per run, {_REPORT_FOLDER}/TIME-COLLECTION.jsonl beside the SQLite "
    "database, or in the user data folder (`matchdb info`)]",
)
@click.option(
    "--dask-scheduler",
    "scheduler",
    metavar="ADDRESS",
    default=None,
    help="Hash and store on a Dask cluster (tcp://HOST:PORT; needs matchdb[dask] and Postgres): its workers read "
    "the paths (which they must see too) or download the URLs, and write chunks of --batch-size records.",
)
def ingest_command(
    paths: tuple[Path, ...],
    key: str,
    workspace: str | None,
    create: bool,
    jobs: int | None,
    batch_size: int,
    report: Path | None,
    scheduler: str | None,
) -> None:
    """Hash and store the images behind PATHS: folders (searched recursively), image files, or manifests (.csv with
    a header row, .jsonl) whose rows have _url or _file (relative to the manifest), optionally _id, and attributes.
    A manifest row with bmh1 and phash (the strings visual_hash returns) is stored as given, without any download.

    Resumable: records whose _id and image checksum are stored already are skipped, changed ones are rehashed.
    Ctrl-C or SIGTERM stops it cleanly: what is done is stored, it says how far it got, and exits 130 or 143.
    The exit status is 1 if any item failed (see --report).
    """
    with _early_ctrl_c():  # until the run takes over SIGINT (listing, forking, opening the database)
        from matchdb.service import ingest as service
        from matchdb.service.hash_import import import_hashes
        from matchdb.service.inputs import iter_inputs

        settings = load_settings()
        report = report or _default_report(settings.database_url, key)
        if scheduler is not None:
            if jobs is not None:
                raise click.UsageError("-j does not apply with --dask-scheduler: the cluster's workers do the hashing")
            _ingest_on_cluster(scheduler, settings, paths, key, workspace, create, batch_size, report)
            return
        engine = open_engine(settings)
        info = resolve_collection(engine, workspace, key, create, can_create=True)
        stop = (signal.SIGINT, signal.SIGTERM)
        with service.FailureReport(report) as failures:
            # Rows with precomputed hashes are stored as the inputs are read; the images found are ingested next.
            with progress(None, "row", "hashes") as bar:
                imported = import_hashes(
                    engine,
                    info.id,
                    iter_inputs(paths),
                    settings=settings,
                    on_progress=bar.update,
                    on_failure=failures,
                    stop_signals=stop,
                )
            summary, items = imported.summary, imported.images
            if items and summary.stopped_by is None:
                engine.dispose()  # no connection crosses the fork of the hashing processes
                workers = min(jobs or os.cpu_count() or 1, max(1, len(items)))
                with process_pool(workers) as pool, progress(len(items), "img", "ingest") as bar:
                    images_summary = service.run_ingest(
                        engine,
                        info.id,
                        items,
                        pool=pool,
                        jobs=workers,
                        settings=settings,
                        batch_size=batch_size,
                        on_progress=lambda _status: bar.update(),
                        on_failure=failures,
                        stop_signals=stop,
                    )
                summary = summary.then(images_summary) if summary.total else images_summary
        _finish(summary, failures)


@contextlib.contextmanager
def _early_ctrl_c() -> Iterator[None]:
    """Ctrl-C before the run handles it itself: one line and exit 130, as for a Ctrl-C during the run."""
    try:
        yield
    except KeyboardInterrupt:
        click.echo("matchdb ingest: interrupted by SIGINT before any image was stored", err=True)
        sys.exit(128 + signal.SIGINT)


def _ingest_on_cluster(
    scheduler: str,
    settings: Settings,
    paths: tuple[Path, ...],
    key: str,
    workspace: str | None,
    create: bool,
    batch_size: int,
    report: Path,
) -> None:
    """``ingest --dask-scheduler``: the inputs listed lazily, chunks of ``batch_size`` hashed and written by the
    cluster's workers (:mod:`matchdb.service.cluster`); the same summary, report and exit status."""
    from matchdb.service import cluster
    from matchdb.service.ingest import FailureReport
    from matchdb.service.inputs import iter_items, without_hashes

    try:
        cluster.require_postgres(settings.database_url)
    except cluster.ClusterError as exc:
        raise click.UsageError(str(exc)) from exc
    engine = open_engine(settings)
    info = resolve_collection(engine, workspace, key, create, can_create=True)
    engine.dispose()
    with progress(None, "img", "ingest") as bar, FailureReport(report) as failures:
        try:
            summary = cluster.run_cluster_ingest(
                scheduler,
                settings.database_url,
                info.id,
                without_hashes(  # the workers run elsewhere, in another folder
                    iter_items([path.absolute() for path in paths]),
                    "rows with precomputed hashes are imported without --dask-scheduler (no hashing to share out)",
                ),
                chunk_size=batch_size,
                on_progress=bar.update,
                on_failure=failures,
                stop_signals=(signal.SIGINT, signal.SIGTERM),
            )
        except cluster.ClusterError as exc:
            if exc.summary is not None:
                click.echo(str(exc.summary))
            raise click.ClickException(str(exc)) from exc
    _finish(summary, failures)


def _finish(summary: Summary, failures: FailureReport) -> None:
    """The summary line, what failed and why, and the exit status: 128 + the signal that stopped the run, else 1
    if anything failed."""
    click.echo(str(summary))
    if failures.count:
        _show_failures(failures)
    if summary.stopped_by is not None:
        sys.exit(128 + summary.stopped_by)
    if summary.failed:
        sys.exit(1)


def _show_failures(failures: FailureReport) -> None:
    """On stderr: the count per reason (most frequent first), the first few failures, and where all of them are."""
    noun = "failure" if failures.count == 1 else "failures"
    click.echo(f"matchdb ingest: {failures.count} {noun}, by reason:", err=True)
    for reason, count in failures.reasons.most_common(10):
        click.echo(f"  {count:>6}  {reason}", err=True)
    if len(failures.reasons) > 10:
        click.echo(f"  ({len(failures.reasons) - 10} more reasons in the report)", err=True)
    click.echo(f"first {len(failures.examples)}:" if failures.count > len(failures.examples) else "each:", err=True)
    for failure in failures.examples:
        click.echo(f"  {failure.source}: {failure.error}", err=True)
    click.echo(f"all of them, as JSON lines: {failures.path}", err=True)
    if any(reason.startswith("URL not allowed") for reason in failures.reasons):
        click.echo(
            "URLs of a local or private image store are refused (SSRF guard): MATCHDB_FETCH_ALLOW=HOST:PORT opens "
            "one (docs/configuration.md)",
            err=True,
        )


@click.command("query")
@click.argument("images", nargs=-1, required=True, type=click.Path(dir_okay=False, path_type=Path))
@click.option("--collection", "key", required=True, metavar="NAME|ID", help="The collection to search.")
@click.option("--workspace", default=None, help=WORKSPACE_HELP)
@click.option("-k", type=click.IntRange(min=1), default=10, show_default=True, help="Answers per image.")
@click.option("--radius", type=click.FloatRange(min=0), default=None, help="Only answers within PERCENT distance.")
@click.option("--hash-type", type=click.Choice(HASH_TYPES), default="bmh1", show_default=True)
@click.option(
    "--dihedral", is_flag=True, help="Also match mirrored and 90/180/270-degree turned copies (8 searches per image)."
)
@click.option(
    "--geometric",
    is_flag=True,
    help="Match crops and small turns (the collection must have been created with --geometric).",
)
@click.option("--json", "as_json", is_flag=True, help='Print JSON lines {"file", "answers"} instead of a table.')
def query_command(
    images: tuple[Path, ...],
    key: str,
    workspace: str | None,
    k: int,
    radius: float | None,
    hash_type: str,
    dihedral: bool,
    geometric: bool,
    as_json: bool,
) -> None:
    """Print the K stored records nearest to each image file. The exit status is 1 if any image failed."""
    from matchdb.service.indexes import IndexRegistry
    from matchdb.service.lookup import nearest_records

    settings = load_settings()
    engine = open_engine(settings)
    info = resolve_collection(engine, workspace, key)
    if geometric and not info.geometric:
        raise click.ClickException(
            f"collection {info.name!r} was not created with --geometric: re-create it so and ingest the images again"
        )
    if geometric and dihedral:
        raise click.UsageError("--geometric and --dihedral cannot be combined")
    registry = IndexRegistry(engine)
    failed = 0
    for path in images:
        try:
            pixels = decode_image(path.read_bytes(), settings.max_pixels)
            variants = hash_dihedral(pixels, (hash_type,)) if dihedral else [hash_pixels(pixels, (hash_type,))]
            queries: list[VisualHash] | GeometricQuery = [hashes[hash_type] for hashes in variants]
            if geometric:
                queries = geometric_query(pixels)
        except (OSError, ImageError) as exc:
            failed += 1
            error = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
            click.echo(json.dumps({"file": str(path), "error": error}) if as_json else f"{path}: {error}")
            continue
        answers = nearest_records(engine, registry, info.id, queries, k, radius)
        if as_json:
            click.echo(json.dumps({"file": str(path), "answers": answers}))
            continue
        click.echo(f"{path}:")
        click.echo("  rank  distance  bits  _id" if answers else "  (no answers)")
        for rank, answer in enumerate(answers, start=1):
            click.echo(f"  {rank:>4}  {answer['distance']:>8.1f}  {answer['hamming']:>4}  {answer['_id']}")
    if failed:
        click.echo(f"matchdb query: {failed} of {len(images)} images failed", err=True)
        sys.exit(1)


def _default_report(database_url: str, collection_key: str) -> Path:
    """A new file per run (a later ingest never overwrites an earlier run's failures), named by time and
    collection, beside the SQLite file, else in the user data folder: never a stray file in whatever folder the
    command ran."""
    parsed = make_url(database_url)
    if parsed.get_backend_name() == "sqlite" and parsed.database and parsed.database != ":memory:":
        folder = Path(parsed.database).resolve().parent / _REPORT_FOLDER
    else:
        folder = data_dir() / _REPORT_FOLDER
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S.%fZ")
    return folder / f"{stamp}-{re.sub(r'[^A-Za-z0-9._-]+', '_', collection_key)[:60]}.jsonl"
