"""Alembic environment: runs on the connection matchdb hands over, or on MATCHDB_DATABASE_URL from the command line."""

from __future__ import annotations

from alembic import context

from matchdb.config import Settings
from matchdb.storage.database import make_engine
from matchdb.storage.schema import metadata


def _run(connection: object) -> None:
    context.configure(connection=connection, target_metadata=metadata, render_as_batch=True)  # type: ignore[arg-type]
    with context.begin_transaction():
        context.run_migrations()


connection = context.config.attributes.get("connection")
if connection is not None:
    _run(connection)
else:
    engine = make_engine(Settings.from_env().database_url)
    with engine.connect() as conn:
        _run(conn)
        conn.commit()
