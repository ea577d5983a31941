"""``matchdb info``: which database this command line uses and what is in it, so "where did my collection go?"
has an answer from any folder."""

from __future__ import annotations

from pathlib import Path

import click
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError, SQLAlchemyError

from matchdb import __version__
from matchdb.cli.common import database_choice, open_engine
from matchdb.config import Settings
from matchdb.storage import tokens as token_store
from matchdb.storage.collections import list_collections
from matchdb.storage.database import current_revision, head_revision


@click.command()
def info() -> None:
    """Show the version, the database in use (and why that one), its schema, collections and tokens.

    Opening nothing for writing: a default database that does not exist yet is reported, not created.
    """
    url, source = database_choice()
    try:
        parsed = make_url(url)
    except ArgumentError as exc:
        raise click.UsageError(f"invalid database URL {url!r}: {exc}") from exc
    shown = parsed.render_as_string(hide_password=True)
    click.echo(f"matchdb     {__version__}")
    click.echo(f"database    {shown}")
    click.echo(f"            chosen by {source}")
    if parsed.get_backend_name() == "sqlite" and parsed.database and not Path(parsed.database).exists():
        click.echo("schema      not created yet (the first command that uses the database creates it)")
        return
    engine = open_engine(Settings(database_url=url), migrate=False)
    try:
        revision = current_revision(engine)
        head = head_revision()
        state = "current" if revision == head else f"behind {head}: run `matchdb db upgrade`"
        click.echo(f"schema      {revision or 'empty'} ({state if revision else 'run `matchdb db upgrade`'})")
        if revision != head:
            return
        with engine.connect() as connection:
            collections = list_collections(connection)
            active = sum(1 for token in token_store.list_tokens(connection) if token.revoked_at is None)
            opened = token_store.any_token_ever(connection)
        records = sum(c.record_count for c in collections)
        click.echo(f"collections {len(collections)} ({records:,} records)")
        access = "the API needs one" if opened else "none yet: the API is open on loopback"
        click.echo(f"tokens      {active} active ({access})")
    except SQLAlchemyError as exc:
        raise click.ClickException(
            f"cannot read the database: {str(getattr(exc, 'orig', None) or exc).strip()}"
        ) from exc
    finally:
        engine.dispose()
