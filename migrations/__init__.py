"""Alembic migrations of matchdb's schema (installed as the ``matchdb_migrations`` package)."""
