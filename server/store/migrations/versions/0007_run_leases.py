"""run leases: dataset_runs.lease_until

A run is executed by the gateway process that created it. That process now keeps extending
the run's lease while the run goes on, so an unfinished run whose lease has run out is known
to have been left by a process that died, and is failed, instead of staying RUNNING for
ever. Runs from before this revision have no lease: an unfinished one is failed the same
way when a gateway of this revision starts.

Revision ID: 0007_run_leases
Revises: 0006_log_counts
Create Date: 2026-11-25
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0007_run_leases"
down_revision: str | Sequence[str] | None = "0006_log_counts"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column(
        "dataset_runs", sa.Column("lease_until", sa.DateTime(timezone=True), nullable=True)
    )


def downgrade() -> None:
    op.drop_column("dataset_runs", "lease_until")
