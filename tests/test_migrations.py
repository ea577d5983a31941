"""The Alembic migrations create exactly the schema the code describes, on SQLite and Postgres, and go down again."""

from __future__ import annotations

from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import inspect

from matchdb.storage.database import alembic_config, current_revision, make_engine, upgrade
from matchdb.storage.schema import metadata


def test_migrations_match_the_schema(database_url: str) -> None:
    engine = make_engine(database_url)
    with engine.connect() as connection:
        diff = compare_metadata(MigrationContext.configure(connection), metadata)
    assert diff == []
    assert current_revision(engine) is not None


def test_downgrade_to_base_and_up_again(database_url: str) -> None:
    engine = make_engine(database_url)
    with engine.connect() as connection:
        command.downgrade(alembic_config(connection), "base")
        connection.commit()
    assert set(inspect(engine).get_table_names()) <= {"alembic_version"}
    upgrade(engine)
    assert {"workspaces", "tokens", "collections", "records", "changes"} <= set(inspect(engine).get_table_names())


def test_upgrade_is_idempotent(database_url: str) -> None:
    engine = make_engine(database_url)
    before = current_revision(engine)
    upgrade(engine)
    assert current_revision(engine) == before
