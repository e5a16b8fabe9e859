"""The first warehouse schema: touches, persons, deals, attribution, assists and ad spend.

Revision ID: 0001
Revises:
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

TS = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "touches",
        sa.Column("event_id", sa.String(128), primary_key=True),
        sa.Column("type", sa.String(32), nullable=False),
        sa.Column("occurred_at", TS, nullable=False),
        sa.Column("system", sa.String(64), nullable=False),
        sa.Column("source", sa.String(256), nullable=False),
        sa.Column("medium", sa.String(256), nullable=False),
        sa.Column("campaign", sa.String(256), nullable=False),
        sa.Column("content", sa.Text),
        sa.Column("term", sa.Text),
        sa.Column("page", sa.Text),
        sa.Column("project", sa.Text),
        sa.Column("anchor", sa.String(32)),
        sa.Column("profile_id", sa.String(64)),
    )
    op.create_index("touches_anchor", "touches", ["anchor"])
    op.create_index("touches_profile", "touches", ["profile_id"])
    op.create_index("touches_time", "touches", ["occurred_at"])

    op.create_table(
        "persons",
        sa.Column("profile_id", sa.String(64), primary_key=True),
        sa.Column("version", sa.BigInteger, nullable=False),
        sa.Column("display_name", sa.Text),
        sa.Column("created_at", TS),
        sa.Column("lead_at", TS),
        sa.Column("lead_score", sa.Integer, nullable=False),
        sa.Column("touches", sa.Integer, nullable=False),
        sa.Column("identifiers", sa.Text, nullable=False),
        sa.Column("updated_at", TS, nullable=False),
    )
    op.create_table(
        "person_identifiers",
        sa.Column("anchor", sa.String(32), primary_key=True),
        sa.Column("kind", sa.String(32), nullable=False),
        sa.Column("profile_id", sa.String(64), nullable=False),
        sa.Column("version", sa.BigInteger, nullable=False),
    )
    op.create_index("person_identifiers_profile", "person_identifiers", ["profile_id"])

    op.create_table(
        "deal_stages",
        sa.Column("event_id", sa.String(128), primary_key=True),
        sa.Column("deal_id", sa.String(128), nullable=False),
        sa.Column("stage", sa.String(128), nullable=False),
        sa.Column("previous_stage", sa.String(128)),
        sa.Column("pipeline", sa.String(128)),
        sa.Column("amount", sa.Float),
        sa.Column("occurred_at", TS, nullable=False),
        sa.Column("system", sa.String(64), nullable=False),
        sa.Column("anchor", sa.String(32)),
        sa.Column("profile_id", sa.String(64)),
    )
    op.create_index("deal_stages_deal", "deal_stages", ["deal_id"])
    op.create_index("deal_stages_anchor", "deal_stages", ["anchor"])
    op.create_index("deal_stages_profile", "deal_stages", ["profile_id"])

    op.create_table(
        "deals",
        sa.Column("deal_id", sa.String(128), primary_key=True),
        sa.Column("profile_id", sa.String(64)),
        sa.Column("pipeline", sa.String(128)),
        sa.Column("stage", sa.String(128), nullable=False),
        sa.Column("status", sa.String(8), nullable=False),
        sa.Column("amount", sa.Float),
        sa.Column("created_at", TS, nullable=False),
        sa.Column("won_at", TS),
        sa.Column("lost_at", TS),
        sa.Column("updated_at", TS, nullable=False),
    )
    op.create_index("deals_profile", "deals", ["profile_id"])

    op.create_table(
        "attribution",
        sa.Column("conversion", sa.String(8), primary_key=True),
        sa.Column("conversion_id", sa.String(128), primary_key=True),
        sa.Column("model", sa.String(16), primary_key=True),
        sa.Column("source", sa.String(256), primary_key=True),
        sa.Column("medium", sa.String(256), primary_key=True),
        sa.Column("campaign", sa.String(256), primary_key=True),
        sa.Column("credit", sa.Float, nullable=False),
        sa.Column("profile_id", sa.String(64), nullable=False),
        sa.Column("converted_at", TS, nullable=False),
    )
    op.create_index("attribution_profile", "attribution", ["profile_id"])
    op.create_index("attribution_time", "attribution", ["converted_at"])

    op.create_table(
        "assists",
        sa.Column("deal_id", sa.String(128), primary_key=True),
        sa.Column("source", sa.String(256), primary_key=True),
        sa.Column("medium", sa.String(256), primary_key=True),
        sa.Column("campaign", sa.String(256), primary_key=True),
        sa.Column("profile_id", sa.String(64), nullable=False),
    )
    op.create_index("assists_profile", "assists", ["profile_id"])

    op.create_table(
        "ad_spend",
        sa.Column("date", sa.Date, primary_key=True),
        sa.Column("source", sa.String(256), primary_key=True),
        sa.Column("medium", sa.String(256), primary_key=True),
        sa.Column("campaign", sa.String(256), primary_key=True),
        sa.Column("account", sa.String(128), primary_key=True),
        sa.Column("currency", sa.String(3), primary_key=True),
        sa.Column("cost", sa.Float, nullable=False),
        sa.Column("reported_at", TS, nullable=False),
    )


def downgrade() -> None:
    for table in ("ad_spend", "assists", "attribution", "deals", "deal_stages", "person_identifiers", "persons"):
        op.drop_table(table)
    op.drop_table("touches")
