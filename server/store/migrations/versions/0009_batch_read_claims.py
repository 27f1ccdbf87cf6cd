"""batch read claims: batch_meters.read_after

Every replica (and every worker process) reads the batches not metered yet on its own
interval. A replica now claims the batches it is about to read until its next round, in one
UPDATE, so the replicas share the reads instead of each reading every batch: one read per
batch per interval, however many replicas run. Existing rows have no claim: the next round
reads them.

Revision ID: 0009_batch_read_claims
Revises: 0008_batch_usage
Create Date: 2026-11-26
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0009_batch_read_claims"
down_revision: str | Sequence[str] | None = "0008_batch_usage"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column(
        "batch_meters", sa.Column("read_after", sa.DateTime(timezone=True), nullable=True)
    )


def downgrade() -> None:
    op.drop_column("batch_meters", "read_after")
