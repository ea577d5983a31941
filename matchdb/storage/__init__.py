"""Storage: the only code that speaks SQL (SQLAlchemy 2 Core). The schema is managed by Alembic (``migrations/``)."""
