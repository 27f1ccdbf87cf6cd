"""Tables of request logs, logging settings, datasets and dataset re-runs.

- `request_logs`: one row per logged GenerateContent / StreamGenerateContent call. The key is
  the gateway's own log id: 12 hex digits of the arrival time in milliseconds then 12 random
  hex digits, so ordering by id is ordering by arrival (newest first = id descending, one
  index per project serves listing and paging). Request and (merged) response are kept as
  the messages' protobuf bytes, turned into proto3 JSON when read (rows written before
  revision 0005 hold the JSON text instead); `search_text` holds the prompt and response
  text that free-text filters search (SQLite FTS5 / PostgreSQL full-text, set up by the
  migration).
- `logging_settings`: a project's settings as changed through the API (NULL: the configured
  default), its counters and how many logs it holds, kept in the store so every replica sees
  the same. The row is also the project's lock: whatever adds or deletes its logs takes it
  first.
- `datasets`, `dataset_logs`: named selections of a project's logs. A log in a dataset is
  never expired by retention; deleting a log or a dataset removes its memberships.
- `dataset_runs`, `run_results`: re-runs of a dataset and, per logged request, both answers.
  A result keeps a copy of the original's figures, so it still reads after the log is gone.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Mapped, mapped_column

from gemini_gateway.server.store.models import Base, JsonType, UTCDateTime


class RequestLog(Base):
    """One logged generate call."""

    __tablename__ = "request_logs"
    __table_args__ = (
        # Listing newest first within a project, and keyset paging: (project, id DESC).
        sa.Index("ix_request_logs_project_id", "project", "id"),
        # create_time ranges and retention.
        sa.Index("ix_request_logs_project_create_time", "project", "create_time"),
    )

    id: Mapped[str] = mapped_column(sa.String(24), primary_key=True)
    project: Mapped[str] = mapped_column(sa.String())
    create_time: Mapped[datetime] = mapped_column(UTCDateTime())
    caller: Mapped[str] = mapped_column(sa.String())
    model: Mapped[str] = mapped_column(sa.String())
    method: Mapped[str] = mapped_column(sa.String())
    api_version: Mapped[str] = mapped_column(sa.String(16))
    labels: Mapped[dict[str, str]] = mapped_column(JsonType)
    # The gRPC code name the caller saw ("OK", "RESOURCE_EXHAUSTED") and the status message.
    status: Mapped[str] = mapped_column(sa.String(32))
    error_message: Mapped[str] = mapped_column(sa.Text(), default="")
    latency_ms: Mapped[float] = mapped_column(sa.Float())
    first_chunk_ms: Mapped[float | None] = mapped_column(sa.Float(), nullable=True)
    prompt_tokens: Mapped[int] = mapped_column(sa.Integer(), default=0)
    candidates_tokens: Mapped[int] = mapped_column(sa.Integer(), default=0)
    cached_tokens: Mapped[int] = mapped_column(sa.Integer(), default=0)
    thoughts_tokens: Mapped[int] = mapped_column(sa.Integer(), default=0)
    tool_use_tokens: Mapped[int] = mapped_column(sa.Integer(), default=0)
    total_tokens: Mapped[int] = mapped_column(sa.Integer(), default=0)
    incomplete: Mapped[bool] = mapped_column(sa.Boolean())
    finish_reason: Mapped[str] = mapped_column(sa.String(64), default="")
    response_id: Mapped[str] = mapped_column(sa.String(), default="")
    prompt_preview: Mapped[str] = mapped_column(sa.Text(), default="")
    response_preview: Mapped[str] = mapped_column(sa.Text(), default="")
    search_text: Mapped[str] = mapped_column(sa.Text(), default="")
    # The GenerateContentRequest and the (merged) response, of the log's API version, as
    # protobuf bytes (response: NULL when none came); JSON is made on read, not per call.
    request_pb: Mapped[bytes | None] = mapped_column(sa.LargeBinary(), nullable=True)
    response_pb: Mapped[bytes | None] = mapped_column(sa.LargeBinary(), nullable=True)
    # The same as proto3 JSON text, in rows written before revision 0005 ("" since).
    request_json: Mapped[str] = mapped_column(sa.Text())
    response_json: Mapped[str] = mapped_column(sa.Text(), default="")
    # Streams: each chunk's arrival, in ms from the call's arrival (a JSON list of numbers).
    chunk_offsets_ms: Mapped[list[float]] = mapped_column(JsonType, default=list)


class LoggingSettingsRow(Base):
    """A project's logging settings (NULL: the configured default) and its counters."""

    __tablename__ = "logging_settings"

    project: Mapped[str] = mapped_column(sa.String(), primary_key=True)
    enabled: Mapped[bool | None] = mapped_column(sa.Boolean(), nullable=True)
    max_logs: Mapped[int | None] = mapped_column(sa.Integer(), nullable=True)
    retention_s: Mapped[float | None] = mapped_column(sa.Float(), nullable=True)
    # "stop_logging" or "evict_oldest".
    at_limit: Mapped[str | None] = mapped_column(sa.String(16), nullable=True)
    update_time: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    skipped_at_limit: Mapped[int] = mapped_column(sa.BigInteger(), default=0)
    skipped_media: Mapped[int] = mapped_column(sa.BigInteger(), default=0)
    evicted: Mapped[int] = mapped_column(sa.BigInteger(), default=0)
    expired: Mapped[int] = mapped_column(sa.BigInteger(), default=0)
    # The logs the project holds, kept by every statement that adds or deletes them (under
    # this row's lock), so the writer checks the limit without counting the table.
    log_count: Mapped[int] = mapped_column(sa.BigInteger(), default=0, server_default="0")


class DatasetRow(Base):
    """A named selection of a project's logs."""

    __tablename__ = "datasets"
    __table_args__ = (sa.Index("ix_datasets_project_create_time", "project", "create_time"),)

    project: Mapped[str] = mapped_column(sa.String(), primary_key=True)
    dataset_id: Mapped[str] = mapped_column(sa.String(63), primary_key=True)
    display_name: Mapped[str] = mapped_column(sa.String(128))
    description: Mapped[str] = mapped_column(sa.Text(), default="")
    create_time: Mapped[datetime] = mapped_column(UTCDateTime())
    update_time: Mapped[datetime] = mapped_column(UTCDateTime())


class DatasetLog(Base):
    """Membership of a log in a dataset."""

    __tablename__ = "dataset_logs"
    __table_args__ = (
        sa.ForeignKeyConstraint(
            ["project", "dataset_id"],
            ["datasets.project", "datasets.dataset_id"],
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(["log_id"], ["request_logs.id"], ondelete="CASCADE"),
        # "Is this log in any dataset?" (retention, eviction, the `dataset` filter).
        sa.Index("ix_dataset_logs_log_id", "log_id"),
    )

    project: Mapped[str] = mapped_column(sa.String(), primary_key=True)
    dataset_id: Mapped[str] = mapped_column(sa.String(63), primary_key=True)
    log_id: Mapped[str] = mapped_column(sa.String(24), primary_key=True)
    add_time: Mapped[datetime] = mapped_column(UTCDateTime())


class DatasetRun(Base):
    """A re-run of a dataset against a model."""

    __tablename__ = "dataset_runs"
    __table_args__ = (
        sa.ForeignKeyConstraint(
            ["project", "dataset_id"],
            ["datasets.project", "datasets.dataset_id"],
            ondelete="CASCADE",
        ),
    )

    project: Mapped[str] = mapped_column(sa.String(), primary_key=True)
    dataset_id: Mapped[str] = mapped_column(sa.String(63), primary_key=True)
    run_id: Mapped[str] = mapped_column(sa.String(63), primary_key=True)
    model: Mapped[str] = mapped_column(sa.String())
    # "direct" or "batch"; state "pending", "running", "succeeded" or "failed".
    mode: Mapped[str] = mapped_column(sa.String(16))
    state: Mapped[str] = mapped_column(sa.String(16))
    create_time: Mapped[datetime] = mapped_column(UTCDateTime())
    end_time: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    concurrency: Mapped[int] = mapped_column(sa.Integer())
    # proto3 JSON of the overrides, empty when not overridden.
    system_instruction_json: Mapped[str] = mapped_column(sa.Text(), default="")
    generation_config_json: Mapped[str] = mapped_column(sa.Text(), default="")
    batch: Mapped[str] = mapped_column(sa.String(), default="")
    error_code: Mapped[int] = mapped_column(sa.Integer(), default=0)
    error_message: Mapped[str] = mapped_column(sa.Text(), default="")
    request_count: Mapped[int] = mapped_column(sa.Integer(), default=0)
    # Until when the gateway process executing the run holds it (it extends this while the
    # run goes on): an unfinished run past it was left by a process that died.
    lease_until: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)


class RunResultRow(Base):
    """One logged request of a run: the original's figures and the re-run's answer."""

    __tablename__ = "run_results"
    __table_args__ = (
        sa.ForeignKeyConstraint(
            ["project", "dataset_id", "run_id"],
            ["dataset_runs.project", "dataset_runs.dataset_id", "dataset_runs.run_id"],
            ondelete="CASCADE",
        ),
    )

    project: Mapped[str] = mapped_column(sa.String(), primary_key=True)
    dataset_id: Mapped[str] = mapped_column(sa.String(63), primary_key=True)
    run_id: Mapped[str] = mapped_column(sa.String(63), primary_key=True)
    log_id: Mapped[str] = mapped_column(sa.String(24), primary_key=True)
    # Order of the request in the run.
    position: Mapped[int] = mapped_column(sa.Integer())
    # {"model", "text", "finish_reason", "tokens": {...}, "latency_ms", "error_code",
    # "error_message"}: one side each, as RunOutput holds it.
    original: Mapped[dict[str, Any]] = mapped_column(JsonType)
    rerun: Mapped[dict[str, Any] | None] = mapped_column(JsonType, nullable=True)
    # proto3 JSON of the re-run's response; empty until answered.
    response_json: Mapped[str] = mapped_column(sa.Text(), default="")
    same_text: Mapped[bool] = mapped_column(sa.Boolean(), default=False)
    text_similarity: Mapped[float] = mapped_column(sa.Float(), default=0.0)
