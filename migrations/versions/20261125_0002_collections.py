"""Collections, records with their hashes, and the change log.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-25
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

BIGINT = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "collections",
        sa.Column("id", sa.String(36), nullable=False),
        sa.Column("workspace_id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["workspace_id"], ["workspaces.id"], name=op.f("fk_collections_workspace_id_workspaces"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_collections")),
        sa.UniqueConstraint("workspace_id", "name", name="uq_collections_workspace_id_name"),
    )
    op.create_table(
        "records",
        sa.Column("id", BIGINT, autoincrement=True, nullable=False),
        sa.Column("collection_id", sa.String(36), nullable=False),
        sa.Column("ext_id", sa.String(500), nullable=False),
        sa.Column("attributes", sa.JSON(), nullable=False),
        sa.Column("source_url", sa.Text(), nullable=True),
        sa.Column("width", sa.Integer(), nullable=False),
        sa.Column("height", sa.Integer(), nullable=False),
        sa.Column("checksum", sa.String(64), nullable=False),
        sa.Column("bmh1", sa.LargeBinary(), nullable=False),
        sa.Column("phash", sa.LargeBinary(), nullable=False),
        sa.Column("hash_version", sa.Integer(), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["collection_id"], ["collections.id"], name=op.f("fk_records_collection_id_collections"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_records")),
        sa.UniqueConstraint("collection_id", "ext_id", name="uq_records_collection_id_ext_id"),
    )
    op.create_table(
        "changes",
        sa.Column("seq", BIGINT, autoincrement=True, nullable=False),
        sa.Column("collection_id", sa.String(36), nullable=False),
        sa.Column("op", sa.String(16), nullable=False),
        sa.Column("record_id", sa.BigInteger(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("seq", name=op.f("pk_changes")),
    )
    op.create_index("ix_changes_collection_id_seq", "changes", ["collection_id", "seq"])


def downgrade() -> None:
    op.drop_index("ix_changes_collection_id_seq", table_name="changes")
    op.drop_table("changes")
    op.drop_table("records")
    op.drop_table("collections")
