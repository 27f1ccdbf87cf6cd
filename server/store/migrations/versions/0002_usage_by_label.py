"""usage: rollups by label, model and project only (hourly and daily)

Cost-by-label queries that neither group nor filter by method, caller or status read these
instead of usage_hourly / usage_daily: several times fewer rows per period. Existing history
is summed in from the full rollups, so the new tables start exact.

Revision ID: 0002_usage_by_label
Revises: 0001_usage
Create Date: 2025-11-25
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0002_usage_by_label"
down_revision: str | Sequence[str] | None = "0001_usage"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_JSON = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")
_KEY = ("period_start", "project", "model", "long_prompt", "labels_hash")
_SUMS = (
    "request_count", "error_count", "incomplete_count", "prompt_tokens", "candidates_tokens",
    "cached_tokens", "thoughts_tokens", "tool_use_tokens", "total_tokens", "latency_ms_sum",
    "first_chunk_ms_sum", "first_chunk_count",
)  # fmt: skip
_FLOATS = {"latency_ms_sum", "first_chunk_ms_sum"}


def upgrade() -> None:
    for period in ("hourly", "daily"):
        name = f"usage_{period}_by_label"
        op.create_table(
            name,
            sa.Column("period_start", sa.DateTime(timezone=True), nullable=False),
            sa.Column("project", sa.String(), nullable=False),
            sa.Column("model", sa.String(), nullable=False),
            sa.Column("long_prompt", sa.Boolean(), nullable=False),
            sa.Column("labels_hash", sa.String(64), nullable=False),
            sa.Column("labels", _JSON, nullable=False),
            *(
                sa.Column(c, sa.Float() if c in _FLOATS else sa.BigInteger(), nullable=False)
                for c in _SUMS
            ),
            sa.PrimaryKeyConstraint(*_KEY, name=op.f(f"pk_{name}")),
        )
        op.create_index(op.f(f"ix_{name}_project_period_start"), name, ["project", "period_start"])
        keys = ", ".join(_KEY)
        sums = ", ".join(f"sum({c})" for c in _SUMS)
        op.execute(
            f"INSERT INTO {name} ({keys}, labels, {', '.join(_SUMS)}) "
            f"SELECT {keys}, labels, {sums} FROM usage_{period} GROUP BY {keys}, labels"
        )


def downgrade() -> None:
    for period in ("daily", "hourly"):
        name = f"usage_{period}_by_label"
        op.drop_index(op.f(f"ix_{name}_project_period_start"), table_name=name)
        op.drop_table(name)
