"""Resource store: resources, encrypted versions, search index.

Revision ID: 0001
Revises:
Create Date: 2026-11-23
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

RowId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "resources",
        sa.Column("rid", RowId, primary_key=True, autoincrement=True),
        sa.Column("resource_type", sa.String(64), nullable=False),
        sa.Column("id", sa.String(64), nullable=False),
        sa.Column("version_id", sa.Integer(), nullable=False),
        sa.Column("last_updated", sa.String(32), nullable=False),
        sa.Column("deleted", sa.Boolean(), nullable=False),
        sa.UniqueConstraint("resource_type", "id", name="uq_resources_type_id"),
    )
    op.create_index("ix_resources_type_updated", "resources", ["resource_type", "last_updated"])
    op.create_table(
        "resource_versions",
        sa.Column("rid", RowId, sa.ForeignKey("resources.rid"), primary_key=True),
        sa.Column("version_id", sa.Integer(), primary_key=True),
        sa.Column("last_updated", sa.String(32), nullable=False),
        sa.Column("deleted", sa.Boolean(), nullable=False),
        sa.Column("key_id", sa.String(64), nullable=True),
        sa.Column("payload", sa.LargeBinary(), nullable=True),
    )
    op.create_index("ix_versions_key", "resource_versions", ["key_id"])
    op.create_table(
        "search_index",
        sa.Column("rid", RowId, sa.ForeignKey("resources.rid"), nullable=False),
        sa.Column("resource_type", sa.String(64), nullable=False),
        sa.Column("param", sa.String(64), nullable=False),
        sa.Column("system", sa.Text(), nullable=True),
        sa.Column("code", sa.Text(), nullable=True),
        sa.Column("text", sa.Text(), nullable=True),
        sa.Column("raw", sa.Text(), nullable=True),
        sa.Column("ref_type", sa.String(64), nullable=True),
        sa.Column("ref_id", sa.String(64), nullable=True),
        sa.Column("low", sa.String(32), nullable=True),
        sa.Column("high", sa.String(32), nullable=True),
    )
    op.create_index("ix_search_rid", "search_index", ["rid"])
    for name, columns in (
        ("ix_search_token", ["resource_type", "param", "code"]),
        ("ix_search_ref", ["resource_type", "param", "ref_id"]),
        ("ix_search_text", ["resource_type", "param", "text"]),
        ("ix_search_date", ["resource_type", "param", "low", "high"]),
    ):
        only = sa.text(f"{columns[2]} IS NOT NULL")
        op.create_index(name, "search_index", columns, sqlite_where=only, postgresql_where=only)


def downgrade() -> None:
    op.drop_table("search_index")
    op.drop_table("resource_versions")
    op.drop_table("resources")
