"""Helpers shared by the command modules: settings, an up-to-date engine, and collection lookup.

This module imports no command, so every command module can import it and nothing imports the root back.
"""

from __future__ import annotations

import difflib
import os

import click
from sqlalchemy import Engine
from sqlalchemy.engine import make_url
from sqlalchemy.exc import OperationalError

from matchdb.config import Settings, default_database
from matchdb.errors import ConfigError
from matchdb.storage import collections as collection_store
from matchdb.storage.database import make_engine, upgrade

WORKSPACE_HELP = "Workspace of the collection (default: search every workspace)."


def database_choice() -> tuple[str, str]:
    """(database URL, where it comes from): the root's ``--database``, else ``MATCHDB_DATABASE_URL``, else the
    per-user default (or an old ``./matchdb.sqlite3``, announced on stderr so it is never a silent surprise)."""
    context = click.get_current_context(silent=True)
    option = context.find_root().params.get("database") if context is not None else None
    if option:
        return option, "--database"
    environment = os.environ.get("MATCHDB_DATABASE_URL", "").strip()
    if environment:
        return environment, "MATCHDB_DATABASE_URL"
    default = default_database()
    if not default.legacy:
        return default.url, "the per-user default"
    click.echo(
        f"matchdb: using {default.path} in this folder (the old default; the default is now one database per user: "
        "see `matchdb info`)",
        err=True,
    )
    return default.url, "./matchdb.sqlite3 in this folder (the old default, found here)"


def load_settings() -> Settings:
    """The settings from the environment, with the database of :func:`database_choice`; a bad value is a usage
    error (exit 2), not a traceback."""
    url, _source = database_choice()
    try:
        return Settings.from_env(database_url=url)
    except ConfigError as exc:
        raise click.UsageError(str(exc)) from exc


def open_engine(settings: Settings, migrate: bool = True) -> Engine:
    """An engine on the configured database, its schema brought up to date first (``migrate``). A URL that cannot
    work is a usage error and a database that cannot be reached a one-line error, never a traceback."""
    try:
        engine = make_engine(settings.database_url, settings.database_timeout)
        if migrate:
            upgrade(engine)
    except ConfigError as exc:
        raise click.UsageError(str(exc)) from exc
    except OperationalError as exc:
        shown = make_url(settings.database_url).render_as_string(hide_password=True)
        raise click.ClickException(f"cannot open the database {shown}: {str(exc.orig).strip()}") from exc
    return engine


def resolve_collection(
    engine: Engine,
    workspace: str | None,
    key: str,
    create: bool = False,
    *,
    can_create: bool = False,
    offer_create: bool = True,
) -> collection_store.CollectionInfo:
    """The collection named or numbered KEY; created (and said so on stderr) if ``create`` and missing. A missing one
    is an error that lists the collections there are, closest name first, and (``offer_create``) says how to make
    it: ``--create`` only where the command has that option (``can_create``), else ``matchdb collection create``."""
    from matchdb.service import lookup

    try:
        info, created = lookup.resolve_collection(engine, workspace, key, create)
    except lookup.CollectionNotFound as exc:
        if exc.ambiguous:
            raise click.ClickException(str(exc)) from exc
        shown = ", ".join(exc.existing[:10]) + (f" and {len(exc.existing) - 10} more" if len(exc.existing) > 10 else "")
        there = f"the collections are: {shown}" if exc.existing else "there are no collections yet"
        close = difflib.get_close_matches(key, exc.existing, n=1, cutoff=0.6)
        if close:  # a misspelling: point at the name meant, never offer to create the misspelt one
            raise click.ClickException(f"{exc}; did you mean {close[0]!r}? ({there})") from exc
        how = "pass --create to create it" if can_create else f"create it with `matchdb collection create {key}`"
        raise click.ClickException(f"{exc}; {there}" + (f" ({how})" if offer_create else "")) from exc
    if created:
        click.echo(f"created collection {info.name!r} ({info.id}) in workspace {info.workspace!r}", err=True)
    return info
