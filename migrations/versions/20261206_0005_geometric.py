"""Geometric matching: a collection setting and one 304-byte signature per record of such a collection.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-06
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("collections") as batch:
        batch.add_column(sa.Column("geometric", sa.Boolean(), nullable=False, server_default=sa.false()))
    op.create_table(
        "geometric_signatures",
        sa.Column("record_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("data", sa.LargeBinary(), nullable=False),
        sa.ForeignKeyConstraint(
            ["record_id"], ["records.id"], name=op.f("fk_geometric_signatures_record_id_records"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("record_id", name=op.f("pk_geometric_signatures")),
    )


def downgrade() -> None:
    op.drop_table("geometric_signatures")
    with op.batch_alter_table("collections") as batch:
        batch.drop_column("geometric")
