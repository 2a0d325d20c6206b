"""The blind search index: keyed HMACs instead of values; consent facts sealed per resource.
Also: ``audit_index`` by seq (``audit verify`` reads it beside the events) and ``audit_noise``
(unauthenticated refusals counted per minute until folded into the chain).

The old index held names, identifiers, birth dates and codes in clear. It is dropped (it cannot
be converted without the keys, which migrations never see) and created anew, empty; ``gateway
db reindex`` then rebuilds it and the sealed facts from the encrypted bodies. Until then search
under consent releases nothing (a record without sealed facts is never released: fail closed).

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-02
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

RowId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
BLIND = sa.String(32)
PARTS = ("month", "day", "hour", "minute", "second")


def upgrade() -> None:
    with op.batch_alter_table("resources") as batch:
        batch.add_column(sa.Column("facts_key", sa.String(64), nullable=True))
        batch.add_column(sa.Column("facts", sa.LargeBinary(), nullable=True))
    op.drop_table("search_index")
    op.create_table(
        "search_index",
        sa.Column("rid", RowId, sa.ForeignKey("resources.rid"), nullable=False),
        sa.Column("resource_type", sa.String(64), nullable=False),
        sa.Column("param", sa.String(64), nullable=False),
        sa.Column("key_id", sa.String(64), nullable=True),
        sa.Column("system", BLIND, nullable=True),
        sa.Column("code", BLIND, nullable=True),
        sa.Column("text", BLIND, nullable=True),
        sa.Column("raw", BLIND, nullable=True),
        sa.Column("ref_type", sa.String(64), nullable=True),
        sa.Column("ref_id", sa.String(64), nullable=True),
        sa.Column("low_year", sa.String(4), nullable=True),
        sa.Column("high_year", sa.String(4), nullable=True),
        *(sa.Column(f"low_{part}", BLIND, nullable=True) for part in PARTS),
        *(sa.Column(f"high_{part}", BLIND, nullable=True) for part in PARTS),
    )
    op.create_index("ix_search_rid", "search_index", ["rid"])
    for name, columns in (
        ("ix_search_token", ["resource_type", "param", "code"]),
        ("ix_search_ref", ["resource_type", "param", "ref_id"]),
        ("ix_search_text", ["resource_type", "param", "text"]),
        ("ix_search_date", ["resource_type", "param", "low_year", "high_year"]),
    ):
        only = sa.text(f"{columns[2]} IS NOT NULL")
        op.create_index(name, "search_index", columns, sqlite_where=only, postgresql_where=only)

    op.create_index("ix_audit_index_seq", "audit_index", ["seq"])
    op.create_table(
        "audit_noise",
        sa.Column("minute", sa.String(16), primary_key=True),
        sa.Column("source", sa.String(64), primary_key=True),
        sa.Column("reason", sa.String(64), primary_key=True),
        sa.Column("count", sa.Integer(), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("audit_noise")
    op.drop_index("ix_audit_index_seq", "audit_index")
    # The clear index is not brought back: run ``gateway db reindex`` on the older release.
    op.drop_table("search_index")
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
    with op.batch_alter_table("resources") as batch:
        batch.drop_column("facts")
        batch.drop_column("facts_key")
