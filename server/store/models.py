"""Tables of the gateway's store, portable between SQLite and PostgreSQL.

Usage is kept three ways:

- `usage_events`: one row per finished call (the truth, to the microsecond);
- rollups, the same events summed per period, upserted by the recorder in the same
  transaction as the raw rows so usage queries read few rows for long ranges:
  `usage_hourly` / `usage_daily` per distinct (project, model, method, caller, status,
  long_prompt, label set), and `usage_hourly_by_label` / `usage_daily_by_label` per
  (project, model, long_prompt, label set) for the queries that need no more;
- `usage_label_values`: how often each label key/value pair was seen, for the pickers.

Later features (request logs, datasets) add their own tables to `Base.metadata` in their own
modules and their own Alembic revisions; nothing here needs to change for that.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any, ClassVar

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import DeclarativeBase, Mapped, declared_attr, mapped_column

# Stable constraint names, so later migrations can refer to (and drop) them on both dialects.
NAMING_CONVENTION = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

# JSON on SQLite (text), JSONB on PostgreSQL (groupable, indexable).
JsonType = sa.JSON().with_variant(JSONB(), "postgresql")
# SQLite only autoincrements an INTEGER PRIMARY KEY.
BigIntId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


class UTCDateTime(sa.TypeDecorator[datetime]):
    """A timezone-aware UTC timestamp on both dialects.

    SQLite has no time zones: values are stored as naive UTC text and read back as aware UTC.
    Naive datetimes are refused, since their zone would be a guess.
    """

    impl = sa.DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None or value.utcoffset() is None:
            raise ValueError(f"naive datetime {value!r}: the store keeps UTC-aware times only")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value.astimezone(UTC)


def canonical_labels(labels: Mapping[str, str]) -> str:
    """The one text form of a label set: sorted keys, compact, UTF-8 kept as is."""
    return json.dumps(dict(sorted(labels.items())), separators=(",", ":"), ensure_ascii=False)


def labels_hash(labels: Mapping[str, str]) -> str:
    """SHA-256 (hex) of the canonical label text: the label set's part of a rollup key.

    A hash rather than the text itself: 64 labels of 63 (multi-byte) characters make a text
    far longer than a PostgreSQL b-tree entry may be (2,704 bytes).
    """
    return hashlib.sha256(canonical_labels(labels).encode()).hexdigest()


class Base(DeclarativeBase):
    metadata = sa.MetaData(naming_convention=NAMING_CONVENTION)


class UsageEventRow(Base):
    """One finished GenerateContent / StreamGenerateContent call."""

    __tablename__ = "usage_events"
    __table_args__ = (
        # Usage queries are always a time range, usually within one project.
        sa.Index("ix_usage_events_project_time", "project", "time"),
        sa.Index("ix_usage_events_time", "time"),
    )

    id: Mapped[int] = mapped_column(BigIntId, primary_key=True, autoincrement=True)
    time: Mapped[datetime] = mapped_column(UTCDateTime())
    project: Mapped[str] = mapped_column(sa.String())
    caller: Mapped[str] = mapped_column(sa.String())
    model: Mapped[str] = mapped_column(sa.String())
    method: Mapped[str] = mapped_column(sa.String())
    labels: Mapped[dict[str, str]] = mapped_column(JsonType)
    # Kept on the raw row so rollups can be rebuilt from it in SQL alone.
    labels_hash: Mapped[str] = mapped_column(sa.String(64))
    status: Mapped[str] = mapped_column(sa.String())
    prompt_tokens: Mapped[int] = mapped_column(sa.Integer(), default=0)
    candidates_tokens: Mapped[int] = mapped_column(sa.Integer(), default=0)
    cached_tokens: Mapped[int] = mapped_column(sa.Integer(), default=0)
    thoughts_tokens: Mapped[int] = mapped_column(sa.Integer(), default=0)
    tool_use_tokens: Mapped[int] = mapped_column(sa.Integer(), default=0)
    total_tokens: Mapped[int] = mapped_column(sa.Integer(), default=0)
    latency_ms: Mapped[float] = mapped_column(sa.Float())
    first_chunk_ms: Mapped[float | None] = mapped_column(sa.Float(), nullable=True)
    incomplete: Mapped[bool] = mapped_column(sa.Boolean())
    long_prompt: Mapped[bool] = mapped_column(sa.Boolean())
    # A request of a Batch API batch (billed at the batch discount), not a generate call.
    batch: Mapped[bool] = mapped_column(sa.Boolean(), default=False, server_default=sa.false())


class _RollupBase:
    """Columns of every rollup: the period, the cost dimensions and the sums."""

    period_start: Mapped[datetime] = mapped_column(UTCDateTime())
    project: Mapped[str] = mapped_column(sa.String())
    model: Mapped[str] = mapped_column(sa.String())
    long_prompt: Mapped[bool] = mapped_column(sa.Boolean())
    batch: Mapped[bool] = mapped_column(sa.Boolean(), default=False, server_default=sa.false())
    labels_hash: Mapped[str] = mapped_column(sa.String(64))
    labels: Mapped[dict[str, str]] = mapped_column(JsonType)
    request_count: Mapped[int] = mapped_column(sa.BigInteger())
    error_count: Mapped[int] = mapped_column(sa.BigInteger())
    incomplete_count: Mapped[int] = mapped_column(sa.BigInteger())
    prompt_tokens: Mapped[int] = mapped_column(sa.BigInteger())
    candidates_tokens: Mapped[int] = mapped_column(sa.BigInteger())
    cached_tokens: Mapped[int] = mapped_column(sa.BigInteger())
    thoughts_tokens: Mapped[int] = mapped_column(sa.BigInteger())
    tool_use_tokens: Mapped[int] = mapped_column(sa.BigInteger())
    total_tokens: Mapped[int] = mapped_column(sa.BigInteger())
    latency_ms_sum: Mapped[float] = mapped_column(sa.Float())
    # Streams only: the mean time to first chunk is first_chunk_ms_sum / first_chunk_count.
    first_chunk_ms_sum: Mapped[float] = mapped_column(sa.Float())
    first_chunk_count: Mapped[int] = mapped_column(sa.BigInteger())

    # The rollup's key, in index order.
    key_columns: ClassVar[tuple[str, ...]] = (
        "period_start", "project", "model", "long_prompt", "batch", "labels_hash",
    )  # fmt: skip

    @declared_attr.directive
    @classmethod
    def __table_args__(cls) -> tuple[Any, ...]:
        # The key leads with period_start for range scans over all projects; the index
        # serves the common one-project range.
        name = cls.__tablename__  # type: ignore[attr-defined]
        return (
            sa.PrimaryKeyConstraint(*cls.key_columns),
            sa.Index(f"ix_{name}_project_period_start", "project", "period_start"),
        )


class _CallDimensions:
    """Who called what and how it ended: in the key of the full rollups only."""

    method: Mapped[str] = mapped_column(sa.String())
    caller: Mapped[str] = mapped_column(sa.String())
    status: Mapped[str] = mapped_column(sa.String())

    key_columns: ClassVar[tuple[str, ...]] = (
        "period_start", "project", "model", "method", "caller", "status", "long_prompt",
        "batch", "labels_hash",
    )  # fmt: skip


class UsageHourly(_CallDimensions, _RollupBase, Base):
    """Every dimension, per hour: serves any grouping and filter."""

    __tablename__ = "usage_hourly"


class UsageDaily(_CallDimensions, _RollupBase, Base):
    __tablename__ = "usage_daily"


class UsageHourlyByLabel(_RollupBase, Base):
    """Cost by label, model and project only, per hour.

    Queries that neither group nor filter by method, caller or status (the by-label cost
    view) read these: without those three dimensions a period has several times fewer rows.
    """

    __tablename__ = "usage_hourly_by_label"


class UsageDailyByLabel(_RollupBase, Base):
    __tablename__ = "usage_daily_by_label"


class UsageLabelValue(Base):
    """Every label key/value pair seen per project, for ListLabelKeys / ListLabelValues."""

    __tablename__ = "usage_label_values"

    project: Mapped[str] = mapped_column(sa.String(), primary_key=True)
    key: Mapped[str] = mapped_column(sa.String(), primary_key=True)
    value: Mapped[str] = mapped_column(sa.String(), primary_key=True)
    count: Mapped[int] = mapped_column(sa.BigInteger())
    last_seen: Mapped[datetime] = mapped_column(UTCDateTime())


class BatchMeter(Base):
    """A Batch API batch the gateway submitted, waiting to be metered once it is done.

    Written when BatchGenerateContent answers (server/batch_usage.py): who submitted it and,
    per request, the model and labels its usage belongs to (the answers carry neither).
    `metered_time` is set in the transaction that writes the batch's usage, so each batch is
    metered once, whichever replica first sees it done.
    """

    __tablename__ = "batch_meters"

    # `batches/{id}`.
    name: Mapped[str] = mapped_column(sa.String(255), primary_key=True)
    project: Mapped[str] = mapped_column(sa.String())
    caller: Mapped[str] = mapped_column(sa.String())
    # {"kinds": [[model, {labels}], ...], "kind_of": [index per request]}: a batch's requests
    # share a few (model, labels) kinds; `kind_of` is empty when all share the first.
    requests: Mapped[dict[str, Any]] = mapped_column(JsonType)
    create_time: Mapped[datetime] = mapped_column(UTCDateTime())
    metered_time: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    # The sweeper of one replica claims the batch until then (server/batch_sweeper.py): the
    # others leave it alone, so each batch is read once per interval, not once per replica.
    read_after: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)


# Sum columns of a rollup row, in one place for the writer, the queries and the rebuild.
TOKEN_COLUMNS = (
    "prompt_tokens",
    "candidates_tokens",
    "cached_tokens",
    "thoughts_tokens",
    "tool_use_tokens",
    "total_tokens",
)
ROLLUP_SUM_COLUMNS = (
    "request_count",
    "error_count",
    "incomplete_count",
    *TOKEN_COLUMNS,
    "latency_ms_sum",
    "first_chunk_ms_sum",
    "first_chunk_count",
)
