"""Helpers shared by the command modules: settings, an up-to-date engine, and collection lookup.

This module imports no command, so every command module can import it and nothing imports the root back.
"""

from __future__ import annotations

import click
from sqlalchemy import Engine

from matchdb.config import Settings
from matchdb.errors import ConfigError
from matchdb.storage import collections as collection_store
from matchdb.storage.database import make_engine, upgrade

WORKSPACE_HELP = "Workspace of the collection (default: search every workspace)."


def load_settings() -> Settings:
    """The settings from the environment; a bad value is a usage error (exit 2), not a traceback."""
    try:
        return Settings.from_env()
    except ConfigError as exc:
        raise click.UsageError(str(exc)) from exc


def open_engine(settings: Settings) -> Engine:
    """An engine on the configured database, its schema brought up to date first."""
    engine = make_engine(settings.database_url)
    upgrade(engine)
    return engine


def resolve_collection(
    engine: Engine, workspace: str | None, key: str, create: bool = False
) -> collection_store.CollectionInfo:
    """The collection named or numbered KEY; created (and said so on stderr) if ``create`` and missing."""
    from matchdb.service import lookup

    try:
        info, created = lookup.resolve_collection(engine, workspace, key, create)
    except lookup.CollectionNotFound as exc:
        raise click.ClickException(str(exc)) from exc
    if created:
        click.echo(f"created collection {info.name!r} ({info.id}) in workspace {info.workspace!r}", err=True)
    return info
