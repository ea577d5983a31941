"""``matchdb db``: schema upgrades and change-log pruning."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import click

from matchdb.cli.common import load_settings, open_engine
from matchdb.storage.changes import prune_changes
from matchdb.storage.database import current_revision, upgrade


@click.group()
def db() -> None:
    """Database administration."""


@db.command("upgrade")
def db_upgrade() -> None:
    """Bring the database schema up to date (Alembic migrations)."""
    engine = open_engine(load_settings(), migrate=False)
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
    engine = open_engine(load_settings())
    with engine.begin() as connection:
        deleted, upto = prune_changes(connection, datetime.now(UTC) - timedelta(hours=keep_hours))
    click.echo(f"deleted {deleted} change-log entries (up to seq {upto})" if deleted else "nothing to delete")
