"""Token replay: client-assertion jti values already used (SMART Backend Services).

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-23
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "token_replay",
        sa.Column("client_id", sa.String(64), primary_key=True),
        sa.Column("jti", sa.String(255), primary_key=True),
        sa.Column("expires_at", sa.String(32), nullable=False),
    )
    op.create_index("ix_token_replay_expires", "token_replay", ["expires_at"])


def downgrade() -> None:
    op.drop_table("token_replay")
