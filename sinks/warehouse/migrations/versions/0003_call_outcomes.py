"""Calls carry their outcome: status (answered, missed, busy), wait and talk seconds, tracking number, operator.

Revision ID: 0003
Revises: 0002
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("touches") as batch:  # SQLite alters by copying the table
        batch.add_column(sa.Column("call_status", sa.String(8)))
        batch.add_column(sa.Column("wait_s", sa.Float))
        batch.add_column(sa.Column("talk_s", sa.Float))
        batch.add_column(sa.Column("tracking_number", sa.String(128)))
        batch.add_column(sa.Column("operator", sa.String(128)))


def downgrade() -> None:
    with op.batch_alter_table("touches") as batch:
        for column in ("operator", "tracking_number", "talk_s", "wait_s", "call_status"):
            batch.drop_column(column)
