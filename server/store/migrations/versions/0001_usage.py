"""usage: raw events, hourly and daily rollups, label values

Revision ID: 0001_usage
Revises:
Create Date: 2025-11-25
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0001_usage"
down_revision: str | Sequence[str] | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_JSON = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")
_TIME = sa.DateTime(timezone=True)


def _rollup(name: str) -> None:
    op.create_table(
        name,
        sa.Column("period_start", _TIME, nullable=False),
        sa.Column("project", sa.String(), nullable=False),
        sa.Column("model", sa.String(), nullable=False),
        sa.Column("method", sa.String(), nullable=False),
        sa.Column("caller", sa.String(), nullable=False),
        sa.Column("status", sa.String(), nullable=False),
        sa.Column("long_prompt", sa.Boolean(), nullable=False),
        sa.Column("labels_hash", sa.String(64), nullable=False),
        sa.Column("labels", _JSON, nullable=False),
        sa.Column("request_count", sa.BigInteger(), nullable=False),
        sa.Column("error_count", sa.BigInteger(), nullable=False),
        sa.Column("incomplete_count", sa.BigInteger(), nullable=False),
        sa.Column("prompt_tokens", sa.BigInteger(), nullable=False),
        sa.Column("candidates_tokens", sa.BigInteger(), nullable=False),
        sa.Column("cached_tokens", sa.BigInteger(), nullable=False),
        sa.Column("thoughts_tokens", sa.BigInteger(), nullable=False),
        sa.Column("tool_use_tokens", sa.BigInteger(), nullable=False),
        sa.Column("total_tokens", sa.BigInteger(), nullable=False),
        sa.Column("latency_ms_sum", sa.Float(), nullable=False),
        sa.Column("first_chunk_ms_sum", sa.Float(), nullable=False),
        sa.Column("first_chunk_count", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint(
            "period_start",
            "project",
            "model",
            "method",
            "caller",
            "status",
            "long_prompt",
            "labels_hash",
            name=op.f(f"pk_{name}"),
        ),
    )
    op.create_index(op.f(f"ix_{name}_project_period_start"), name, ["project", "period_start"])


def upgrade() -> None:
    op.create_table(
        "usage_events",
        sa.Column(
            "id",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            autoincrement=True,
            nullable=False,
        ),
        sa.Column("time", _TIME, nullable=False),
        sa.Column("project", sa.String(), nullable=False),
        sa.Column("caller", sa.String(), nullable=False),
        sa.Column("model", sa.String(), nullable=False),
        sa.Column("method", sa.String(), nullable=False),
        sa.Column("labels", _JSON, nullable=False),
        sa.Column("labels_hash", sa.String(64), nullable=False),
        sa.Column("status", sa.String(), nullable=False),
        sa.Column("prompt_tokens", sa.Integer(), nullable=False),
        sa.Column("candidates_tokens", sa.Integer(), nullable=False),
        sa.Column("cached_tokens", sa.Integer(), nullable=False),
        sa.Column("thoughts_tokens", sa.Integer(), nullable=False),
        sa.Column("tool_use_tokens", sa.Integer(), nullable=False),
        sa.Column("total_tokens", sa.Integer(), nullable=False),
        sa.Column("latency_ms", sa.Float(), nullable=False),
        sa.Column("first_chunk_ms", sa.Float(), nullable=True),
        sa.Column("incomplete", sa.Boolean(), nullable=False),
        sa.Column("long_prompt", sa.Boolean(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_usage_events")),
    )
    op.create_index(op.f("ix_usage_events_project_time"), "usage_events", ["project", "time"])
    op.create_index(op.f("ix_usage_events_time"), "usage_events", ["time"])
    _rollup("usage_hourly")
    _rollup("usage_daily")
    op.create_table(
        "usage_label_values",
        sa.Column("project", sa.String(), nullable=False),
        sa.Column("key", sa.String(), nullable=False),
        sa.Column("value", sa.String(), nullable=False),
        sa.Column("count", sa.BigInteger(), nullable=False),
        sa.Column("last_seen", _TIME, nullable=False),
        sa.PrimaryKeyConstraint("project", "key", "value", name=op.f("pk_usage_label_values")),
    )


def downgrade() -> None:
    op.drop_table("usage_label_values")
    for name in ("usage_daily", "usage_hourly"):
        op.drop_index(op.f(f"ix_{name}_project_period_start"), table_name=name)
        op.drop_table(name)
    op.drop_index(op.f("ix_usage_events_time"), table_name="usage_events")
    op.drop_index(op.f("ix_usage_events_project_time"), table_name="usage_events")
    op.drop_table("usage_events")
