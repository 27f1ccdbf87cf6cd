"""owners of tuned models and batches (resource_owners)

The project that created each tuned model and batch through the gateway, keyed by the
resource name (server/store/tenancy_tables.py). Resources made before this revision have no
row: docs/security.md says who may use them.

Revision ID: 0004_tuned_model_owners
Revises: 0003_request_logs
Create Date: 2026-11-25
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004_tuned_model_owners"
down_revision: str | Sequence[str] | None = "0003_request_logs"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "resource_owners",
        sa.Column("name", sa.String(length=255), nullable=False),
        sa.Column("project", sa.String(), nullable=False),
        sa.Column("caller", sa.String(), nullable=False),
        sa.Column("create_time", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("name", name=op.f("pk_resource_owners")),
    )


def downgrade() -> None:
    op.drop_table("resource_owners")
