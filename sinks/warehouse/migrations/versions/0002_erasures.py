"""Erasures the warehouse honours: keyed hashes of erased identifiers and profile ids, and each person's newest touch.

Revision ID: 0002
Revises: 0001
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

TS = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "erasures",
        sa.Column("digest", sa.String(32), primary_key=True),
        sa.Column("subject", sa.String(16), nullable=False),
        sa.Column("through_at", TS, nullable=False),
        sa.Column("through_event_id", sa.String(128), nullable=False),
    )
    with op.batch_alter_table("persons") as batch:
        batch.add_column(sa.Column("last_touch_at", TS))
        batch.add_column(sa.Column("last_event_id", sa.String(128)))


def downgrade() -> None:
    with op.batch_alter_table("persons") as batch:
        batch.drop_column("last_event_id")
        batch.drop_column("last_touch_at")
    op.drop_table("erasures")
