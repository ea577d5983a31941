"""Record thumbnails for the web console, in their own table (deleted with their record).

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-02
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "thumbnails",
        sa.Column("record_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("media_type", sa.String(32), nullable=False),
        sa.Column("data", sa.LargeBinary(), nullable=False),
        sa.ForeignKeyConstraint(
            ["record_id"], ["records.id"], name=op.f("fk_thumbnails_record_id_records"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("record_id", name=op.f("pk_thumbnails")),
    )


def downgrade() -> None:
    op.drop_table("thumbnails")
