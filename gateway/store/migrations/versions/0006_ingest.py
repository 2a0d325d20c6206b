"""The ingest ledger (which gateway id each source record's resource has) and the quarantine
(input that could not land, held encrypted with its reason), and where each incremental pull
stopped (its high-water mark, encrypted).

Neither holds a source identifier or PHI in clear: the ledger keys rows by a keyed HMAC of the
source key and digests content with a keyed HMAC; the quarantine encrypts the bytes and fields
(AES-256-GCM) and keeps only PHI-free reasons and places in clear (``docs/encryption.md``).

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-09
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "ingest_ledger",
        sa.Column("key_id", sa.String(64), primary_key=True),
        sa.Column("blind_key", sa.String(64), primary_key=True),
        sa.Column("partner_id", sa.String(64), nullable=False),
        sa.Column("resource_type", sa.String(64), nullable=False),
        sa.Column("resource_id", sa.String(64), nullable=False),
        sa.Column("written", sa.Boolean(), nullable=False),
        sa.Column("content_key_id", sa.String(64), nullable=True),
        sa.Column("content_digest", sa.String(64), nullable=True),
        sa.Column("mapping_sha256", sa.String(64), nullable=False),
        sa.UniqueConstraint("resource_type", "resource_id", name="uq_ingest_ledger_resource"),
    )
    op.create_index("ix_ingest_ledger_partner", "ingest_ledger", ["partner_id", "resource_type"])

    op.create_table(
        "quarantine",
        sa.Column("id", sa.String(32), primary_key=True),
        sa.Column("received", sa.String(32), nullable=False),
        sa.Column("partner_id", sa.String(64), nullable=False),
        sa.Column("system", sa.String(64), nullable=False),
        sa.Column("record_type", sa.String(64), nullable=False),
        sa.Column("source", sa.String(200), nullable=False),
        sa.Column("locator", sa.String(200), nullable=False),
        sa.Column("reason", sa.String(500), nullable=False),
        sa.Column("places", sa.Text(), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("key_id", sa.String(64), nullable=False),
        sa.Column("payload", sa.LargeBinary(), nullable=False),
        sa.Column("fingerprint", sa.String(64), nullable=True),
    )
    op.create_index("ix_quarantine_fingerprint", "quarantine", ["fingerprint", "status"])
    op.create_index("ix_quarantine_status", "quarantine", ["status", "received", "id"])
    op.create_index(
        "ix_quarantine_partner", "quarantine", ["partner_id", "status", "received", "id"]
    )
    op.create_index("ix_quarantine_key", "quarantine", ["key_id"])

    op.create_table(
        "ingest_marks",
        sa.Column("partner_id", sa.String(64), primary_key=True),
        sa.Column("system", sa.String(64), primary_key=True),
        sa.Column("source", sa.String(200), primary_key=True),
        sa.Column("updated", sa.String(32), nullable=False),
        sa.Column("key_id", sa.String(64), nullable=False),
        sa.Column("payload", sa.LargeBinary(), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("ingest_marks")
    op.drop_table("quarantine")
    op.drop_table("ingest_ledger")
