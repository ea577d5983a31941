"""The ``matchdb`` command line: thin wrappers that parse options, call the library and print results."""

from __future__ import annotations

import ipaddress
import json
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import click
from sqlalchemy import Engine

from matchdb import __version__
from matchdb.config import Settings
from matchdb.errors import ConfigError, ImageError
from matchdb.hashing import HASH_TYPES, hash_image
from matchdb.storage import tokens as token_store
from matchdb.storage.changes import prune_changes
from matchdb.storage.database import current_revision, make_engine, upgrade


@click.group()
@click.version_option(__version__, prog_name="matchdb")
def main() -> None:
    """matchdb: find duplicate and near-duplicate images by visual hash."""


def _settings() -> Settings:
    try:
        return Settings.from_env()
    except ConfigError as exc:
        raise click.UsageError(str(exc)) from exc


@main.command("hash")
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
    settings = _settings()
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


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


@main.command()
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to bind.")
@click.option("--port", default=8000, show_default=True, type=int, help="Port to bind.")
@click.option("--workers", default=1, show_default=True, type=click.IntRange(min=1), help="Worker processes.")
@click.option(
    "--insecure-open",
    is_flag=True,
    help="Allow serving a non-loopback address while no API token exists (anyone who can connect gets in).",
)
def serve(host: str, port: int, workers: int, insecure_open: bool) -> None:
    """Serve the Ximilar-compatible API with uvicorn.

    The database schema is brought up to date first, once, before any worker starts; MATCHDB_BOOTSTRAP_TOKEN is
    created if missing. Without any token the API is open, which is only allowed on a loopback address.
    """
    settings = _settings()
    if settings.bootstrap_token and len(settings.bootstrap_token) < token_store.MIN_TOKEN_LENGTH:
        raise click.UsageError(f"MATCHDB_BOOTSTRAP_TOKEN must have at least {token_store.MIN_TOKEN_LENGTH} characters")
    engine = make_engine(settings.database_url)
    upgrade(engine)
    with engine.begin() as connection:
        if settings.bootstrap_token:
            token_store.ensure_token(connection, settings.bootstrap_token)
        tokens_exist = token_store.any_token_ever(connection)
    engine.dispose()
    if not tokens_exist and not _is_loopback(host) and not insecure_open:
        raise click.UsageError(
            f"refusing to serve {host} with no API token: create one (matchdb token create), set "
            "MATCHDB_BOOTSTRAP_TOKEN, or pass --insecure-open"
        )
    if not tokens_exist:
        click.echo("matchdb: no API token exists, the API is open to anyone who can connect", err=True)
    from matchdb.web import server

    server.run(host, port, workers, settings.drain_timeout)


@main.group()
def db() -> None:
    """Database administration."""


@db.command("upgrade")
def db_upgrade() -> None:
    """Bring the database schema up to date (Alembic migrations)."""
    engine = make_engine(_settings().database_url)
    before = current_revision(engine)
    upgrade(engine)
    after = current_revision(engine)
    click.echo(f"schema at {after}" + (f" (was {before or 'empty'})" if before != after else " (already current)"))


@db.command("prune-changes")
@click.option(
    "--keep-hours",
    type=click.FloatRange(min=1),
    default=24,
    show_default=True,
    help="Keep the change-log entries of the last this many hours.",
)
def db_prune_changes(keep_hours: float) -> None:
    """Delete old change-log entries (run it daily, e.g. from cron).

    Every write adds one entry per record; servers only need the ones they have not applied yet, and they apply
    them every two seconds. A server frozen for longer than --keep-hours reloads its indexes when it wakes.
    """
    engine = make_engine(_settings().database_url)
    upgrade(engine)
    with engine.begin() as connection:
        deleted, upto = prune_changes(connection, datetime.now(UTC) - timedelta(hours=keep_hours))
    click.echo(f"deleted {deleted} change-log entries (up to seq {upto})" if deleted else "nothing to delete")


@main.group()
def token() -> None:
    """Manage API tokens (stored hashed; a token is shown once, when created)."""


def _engine_for_tokens() -> Engine:
    engine = make_engine(_settings().database_url)
    upgrade(engine)
    return engine


@token.command("create")
@click.option("--workspace", default=token_store.DEFAULT_WORKSPACE, show_default=True)
@click.option("--read-only", is_flag=True, help="The token may read but not write.")
@click.option("--note", default="", help="A note to recognise the token by in `matchdb token list`.")
def token_create(workspace: str, read_only: bool, note: str) -> None:
    """Create a token and print it (the only time it is shown)."""
    with _engine_for_tokens().begin() as connection:
        value, info = token_store.create_token(connection, workspace, read_only, note)
    click.echo(value)
    click.echo(f"token {info.id} for workspace {info.workspace!r}{' (read-only)' if read_only else ''}", err=True)


@token.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print JSON lines instead of a table.")
def token_list(as_json: bool) -> None:
    """List tokens (id, prefix, workspace, rights, state), never the tokens themselves."""
    with _engine_for_tokens().connect() as connection:
        infos = token_store.list_tokens(connection)
    for info in infos:
        state = f"revoked {info.revoked_at:%Y-%m-%d %H:%M}" if info.revoked_at else "active"
        rights = "read-only" if info.read_only else "read-write"
        if as_json:
            row = {"id": info.id, "prefix": info.prefix, "workspace": info.workspace, "read_only": info.read_only}
            click.echo(json.dumps({**row, "state": state, "note": info.note}))
        else:
            click.echo(f"{info.id:>4}  {info.prefix}...  {info.workspace:<16} {rights:<10} {state:<24} {info.note}")


@token.command("revoke")
@click.argument("key")
def token_revoke(key: str) -> None:
    """Revoke the token with id or prefix KEY."""
    with _engine_for_tokens().begin() as connection:
        count = token_store.revoke_token(connection, key)
    if count <= 0:
        reason = "no active token matches" if count == 0 else f"{-count} active tokens match; give more of the prefix"
        raise click.ClickException(f"{reason} {key!r}")
    click.echo(f"revoked {count} token")


@main.command("rebuild-index")
@click.option("--collection", "key", help="Collection name or id (default: every collection).")
@click.option("--timeout", default=300.0, show_default=True, help="Seconds to wait for the running servers.")
@click.option("--fresh", default=10.0, show_default=True, help="Servers with a heartbeat this recent count.")
def rebuild_index(key: str | None, timeout: float, fresh: float) -> None:
    """Rebuild the in-memory indexes (admin).

    Running servers are asked through the change log to rebuild in the background and swap the new indexes in
    atomically (queries are answered throughout); this waits until every server with a fresh heartbeat reports the
    new generation. With no server running, the indexes are built here, offline, checked against a brute-force
    scan, and their size, build time and memory are printed; nothing is persisted (the database is the truth).
    """
    from matchdb.service import rebuild
    from matchdb.storage.changes import ALL_COLLECTIONS
    from matchdb.storage.collections import find_collection, list_collections

    engine = make_engine(_settings().database_url)
    upgrade(engine)
    with engine.connect() as connection:
        if key is None:
            targets = [info.id for info in list_collections(connection)]
        else:
            found = find_collection(connection, None, key)
            if found is None:
                raise click.ClickException(f"no collection {key!r} (or the name is used in several workspaces)")
            targets = [found.id]
    servers = rebuild.running_servers(engine, fresh)
    if not servers:
        click.echo("no server is running: building offline", err=True)
        failed = False
        for collection_id in targets:
            offline = rebuild.offline_rebuild(engine, collection_id)
            per_record = offline.memory_bytes / offline.records if offline.records else 0
            click.echo(
                f"{collection_id}: {offline.records} records, built in {offline.build_seconds:.2f} s, "
                f"{offline.memory_bytes / 1e6:.1f} MB ({per_record:.0f} bytes/record); check: "
                f"{offline.checked_queries} k-NN queries, {offline.mismatches} differ from brute force"
            )
            failed |= offline.mismatches > 0
        if failed:
            sys.exit(1)
        return
    seq = rebuild.request_rebuild(engine, ALL_COLLECTIONS if key is None else targets[0])

    last: list[tuple[int, int]] = []

    def progress(done: int, total: int) -> None:
        if [(done, total)] != last:
            last[:] = [(done, total)]
            click.echo(f"{done}/{total} servers rebuilt", err=True)

    result = rebuild.wait_for_servers(engine, seq, fresh, timeout, progress)
    for server in result.servers:
        state = "rebuilt" if server.generation >= seq else "NOT rebuilt"
        took = f" in {server.rebuild_seconds:.2f} s" if server.rebuild_seconds is not None else ""
        click.echo(f"{server.id} ({server.host} pid {server.pid}): {state}{took}, {server.records} records")
    if not result.done:
        raise click.ClickException(f"not every server rebuilt within {timeout:g} s")
    click.echo(f"generation {seq}: {len(result.servers)} servers rebuilt in {result.waited:.2f} s")


from matchdb import cli_collections, cli_dedupe, cli_eval  # noqa: E402,F401  (registers the commands)
