"""batch usage: the `batch` flag on usage rows and rollups; batch_meters

The Batch API is billed at a discount, so a batch request's usage is kept apart from
interactive calls': every usage row and rollup gets a `batch` flag, part of each rollup's key.
Existing rows are interactive calls (false). `batch_meters` keeps each batch the gateway
submits until its usage is written, once, when it is first seen done. A downgrade deletes
the batches' usage (the older schema cannot tell it apart).

Revision ID: 0008_batch_usage
Revises: 0007_run_leases
Create Date: 2026-11-25
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0008_batch_usage"
down_revision: str | Sequence[str] | None = "0007_run_leases"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_JSON = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")
_CALL_KEY = ("period_start", "project", "model", "method", "caller", "status", "long_prompt")
_LABEL_KEY = ("period_start", "project", "model", "long_prompt")
# Each rollup and the part of its key before the flag (the label hash ends every key).
_ROLLUPS = {
    "usage_hourly": _CALL_KEY,
    "usage_daily": _CALL_KEY,
    "usage_hourly_by_label": _LABEL_KEY,
    "usage_daily_by_label": _LABEL_KEY,
}


def _flag() -> sa.Column[bool]:
    return sa.Column("batch", sa.Boolean(), nullable=False, server_default=sa.false())


def upgrade() -> None:
    op.add_column("usage_events", _flag())
    for table, key in _ROLLUPS.items():
        # SQLite cannot change a primary key in place: batch mode copies the table.
        with op.batch_alter_table(table) as rollup:
            rollup.add_column(_flag())
            rollup.drop_constraint(f"pk_{table}", type_="primary")
            rollup.create_primary_key(f"pk_{table}", [*key, "batch", "labels_hash"])
    op.create_table(
        "batch_meters",
        sa.Column("name", sa.String(255), nullable=False),
        sa.Column("project", sa.String(), nullable=False),
        sa.Column("caller", sa.String(), nullable=False),
        sa.Column("requests", _JSON, nullable=False),
        sa.Column("create_time", sa.DateTime(timezone=True), nullable=False),
        sa.Column("metered_time", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("name", name=op.f("pk_batch_meters")),
    )


def downgrade() -> None:
    op.drop_table("batch_meters")
    for table, key in _ROLLUPS.items():
        # The old key cannot hold a batch row beside an interactive one: batches' usage goes.
        op.execute(f"DELETE FROM {table} WHERE batch")
        with op.batch_alter_table(table) as rollup:
            rollup.drop_constraint(f"pk_{table}", type_="primary")
            rollup.create_primary_key(f"pk_{table}", [*key, "labels_hash"])
            rollup.drop_column("batch")
    op.execute("DELETE FROM usage_events WHERE batch")
    op.drop_column("usage_events", "batch")
