"""request logs, logging settings, datasets and dataset re-runs

Free-text search over `request_logs.search_text` is set up here beside the tables, per
database (the models do not describe it; the migration environment leaves it out of its
comparison):

- SQLite: an FTS5 table `request_logs_fts` whose content is `request_logs` itself (external
  content, keyed by its rowid), kept in step by triggers on insert, delete and update;
- PostgreSQL: a GIN index over `to_tsvector('simple', search_text)`.

Queries match them in server/store/logs.py.

Revision ID: 0003_request_logs
Revises: 0002_usage_by_label
Create Date: 2026-11-25
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0003_request_logs"
down_revision: str | Sequence[str] | None = "0002_usage_by_label"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_JSON = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")

# Words are runs of letters, digits and combining marks (Indic scripts keep their vowel signs
# within the word), case-folded; accents are kept, as PostgreSQL's 'simple' configuration does.
_SQLITE_SEARCH_UP = (
    "CREATE VIRTUAL TABLE request_logs_fts USING fts5(search_text, content='request_logs', "
    "tokenize=\"unicode61 remove_diacritics 0 categories 'L* N* Co M*'\")",
    "CREATE TRIGGER request_logs_fts_insert AFTER INSERT ON request_logs BEGIN "
    "INSERT INTO request_logs_fts (rowid, search_text) VALUES (new.rowid, new.search_text); END",
    "CREATE TRIGGER request_logs_fts_delete AFTER DELETE ON request_logs BEGIN "
    "INSERT INTO request_logs_fts (request_logs_fts, rowid, search_text) "
    "VALUES ('delete', old.rowid, old.search_text); END",
    "CREATE TRIGGER request_logs_fts_update AFTER UPDATE OF search_text ON request_logs BEGIN "
    "INSERT INTO request_logs_fts (request_logs_fts, rowid, search_text) "
    "VALUES ('delete', old.rowid, old.search_text); "
    "INSERT INTO request_logs_fts (rowid, search_text) VALUES (new.rowid, new.search_text); END",
)
_SQLITE_SEARCH_DOWN = (
    "DROP TRIGGER IF EXISTS request_logs_fts_update",
    "DROP TRIGGER IF EXISTS request_logs_fts_delete",
    "DROP TRIGGER IF EXISTS request_logs_fts_insert",
    "DROP TABLE IF EXISTS request_logs_fts",
)
_POSTGRESQL_SEARCH_UP = (
    "CREATE INDEX ix_request_logs_search_text ON request_logs "
    "USING gin (to_tsvector('simple'::regconfig, search_text))",
)
_POSTGRESQL_SEARCH_DOWN = ("DROP INDEX IF EXISTS ix_request_logs_search_text",)


def _run(statements: dict[str, tuple[str, ...]]) -> None:
    for statement in statements.get(op.get_context().dialect.name, ()):
        op.execute(statement)


def upgrade() -> None:
    op.create_table(
        "datasets",
        sa.Column("project", sa.String(), nullable=False),
        sa.Column("dataset_id", sa.String(length=63), nullable=False),
        sa.Column("display_name", sa.String(length=128), nullable=False),
        sa.Column("description", sa.Text(), nullable=False),
        sa.Column(
            "create_time",
            sa.DateTime(timezone=True),
            nullable=False,
        ),
        sa.Column(
            "update_time",
            sa.DateTime(timezone=True),
            nullable=False,
        ),
        sa.PrimaryKeyConstraint("project", "dataset_id", name=op.f("pk_datasets")),
    )
    with op.batch_alter_table("datasets", schema=None) as batch_op:
        batch_op.create_index(
            "ix_datasets_project_create_time", ["project", "create_time"], unique=False
        )

    op.create_table(
        "logging_settings",
        sa.Column("project", sa.String(), nullable=False),
        sa.Column("enabled", sa.Boolean(), nullable=True),
        sa.Column("max_logs", sa.Integer(), nullable=True),
        sa.Column("retention_s", sa.Float(), nullable=True),
        sa.Column("at_limit", sa.String(length=16), nullable=True),
        sa.Column(
            "update_time",
            sa.DateTime(timezone=True),
            nullable=True,
        ),
        sa.Column("skipped_at_limit", sa.BigInteger(), nullable=False),
        sa.Column("skipped_media", sa.BigInteger(), nullable=False),
        sa.Column("evicted", sa.BigInteger(), nullable=False),
        sa.Column("expired", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("project", name=op.f("pk_logging_settings")),
    )
    op.create_table(
        "request_logs",
        sa.Column("id", sa.String(length=24), nullable=False),
        sa.Column("project", sa.String(), nullable=False),
        sa.Column(
            "create_time",
            sa.DateTime(timezone=True),
            nullable=False,
        ),
        sa.Column("caller", sa.String(), nullable=False),
        sa.Column("model", sa.String(), nullable=False),
        sa.Column("method", sa.String(), nullable=False),
        sa.Column("api_version", sa.String(length=16), nullable=False),
        sa.Column(
            "labels",
            _JSON,
            nullable=False,
        ),
        sa.Column("status", sa.String(length=32), nullable=False),
        sa.Column("error_message", sa.Text(), nullable=False),
        sa.Column("latency_ms", sa.Float(), nullable=False),
        sa.Column("first_chunk_ms", sa.Float(), nullable=True),
        sa.Column("prompt_tokens", sa.Integer(), nullable=False),
        sa.Column("candidates_tokens", sa.Integer(), nullable=False),
        sa.Column("cached_tokens", sa.Integer(), nullable=False),
        sa.Column("thoughts_tokens", sa.Integer(), nullable=False),
        sa.Column("tool_use_tokens", sa.Integer(), nullable=False),
        sa.Column("total_tokens", sa.Integer(), nullable=False),
        sa.Column("incomplete", sa.Boolean(), nullable=False),
        sa.Column("finish_reason", sa.String(length=64), nullable=False),
        sa.Column("response_id", sa.String(), nullable=False),
        sa.Column("prompt_preview", sa.Text(), nullable=False),
        sa.Column("response_preview", sa.Text(), nullable=False),
        sa.Column("search_text", sa.Text(), nullable=False),
        sa.Column("request_json", sa.Text(), nullable=False),
        sa.Column("response_json", sa.Text(), nullable=False),
        sa.Column(
            "chunk_offsets_ms",
            _JSON,
            nullable=False,
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_request_logs")),
    )
    with op.batch_alter_table("request_logs", schema=None) as batch_op:
        batch_op.create_index(
            "ix_request_logs_project_create_time", ["project", "create_time"], unique=False
        )
        batch_op.create_index("ix_request_logs_project_id", ["project", "id"], unique=False)

    op.create_table(
        "dataset_logs",
        sa.Column("project", sa.String(), nullable=False),
        sa.Column("dataset_id", sa.String(length=63), nullable=False),
        sa.Column("log_id", sa.String(length=24), nullable=False),
        sa.Column(
            "add_time",
            sa.DateTime(timezone=True),
            nullable=False,
        ),
        sa.ForeignKeyConstraint(
            ["log_id"],
            ["request_logs.id"],
            name=op.f("fk_dataset_logs_log_id_request_logs"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["project", "dataset_id"],
            ["datasets.project", "datasets.dataset_id"],
            name=op.f("fk_dataset_logs_project_datasets"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("project", "dataset_id", "log_id", name=op.f("pk_dataset_logs")),
    )
    with op.batch_alter_table("dataset_logs", schema=None) as batch_op:
        batch_op.create_index("ix_dataset_logs_log_id", ["log_id"], unique=False)
    _run({"sqlite": _SQLITE_SEARCH_UP, "postgresql": _POSTGRESQL_SEARCH_UP})

    op.create_table(
        "dataset_runs",
        sa.Column("project", sa.String(), nullable=False),
        sa.Column("dataset_id", sa.String(length=63), nullable=False),
        sa.Column("run_id", sa.String(length=63), nullable=False),
        sa.Column("model", sa.String(), nullable=False),
        sa.Column("mode", sa.String(length=16), nullable=False),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column(
            "create_time",
            sa.DateTime(timezone=True),
            nullable=False,
        ),
        sa.Column("end_time", sa.DateTime(timezone=True), nullable=True),
        sa.Column("concurrency", sa.Integer(), nullable=False),
        sa.Column("system_instruction_json", sa.Text(), nullable=False),
        sa.Column("generation_config_json", sa.Text(), nullable=False),
        sa.Column("batch", sa.String(), nullable=False),
        sa.Column("error_code", sa.Integer(), nullable=False),
        sa.Column("error_message", sa.Text(), nullable=False),
        sa.Column("request_count", sa.Integer(), nullable=False),
        sa.ForeignKeyConstraint(
            ["project", "dataset_id"],
            ["datasets.project", "datasets.dataset_id"],
            name=op.f("fk_dataset_runs_project_datasets"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("project", "dataset_id", "run_id", name=op.f("pk_dataset_runs")),
    )
    op.create_table(
        "run_results",
        sa.Column("project", sa.String(), nullable=False),
        sa.Column("dataset_id", sa.String(length=63), nullable=False),
        sa.Column("run_id", sa.String(length=63), nullable=False),
        sa.Column("log_id", sa.String(length=24), nullable=False),
        sa.Column("position", sa.Integer(), nullable=False),
        sa.Column(
            "original",
            _JSON,
            nullable=False,
        ),
        sa.Column(
            "rerun",
            _JSON,
            nullable=True,
        ),
        sa.Column("response_json", sa.Text(), nullable=False),
        sa.Column("same_text", sa.Boolean(), nullable=False),
        sa.Column("text_similarity", sa.Float(), nullable=False),
        sa.ForeignKeyConstraint(
            ["project", "dataset_id", "run_id"],
            ["dataset_runs.project", "dataset_runs.dataset_id", "dataset_runs.run_id"],
            name=op.f("fk_run_results_project_dataset_runs"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint(
            "project", "dataset_id", "run_id", "log_id", name=op.f("pk_run_results")
        ),
    )


def downgrade() -> None:
    op.drop_table("run_results")
    op.drop_table("dataset_runs")
    with op.batch_alter_table("dataset_logs", schema=None) as batch_op:
        batch_op.drop_index("ix_dataset_logs_log_id")

    op.drop_table("dataset_logs")
    _run({"sqlite": _SQLITE_SEARCH_DOWN, "postgresql": _POSTGRESQL_SEARCH_DOWN})
    with op.batch_alter_table("request_logs", schema=None) as batch_op:
        batch_op.drop_index("ix_request_logs_project_id")
        batch_op.drop_index("ix_request_logs_project_create_time")

    op.drop_table("request_logs")
    op.drop_table("logging_settings")
    with op.batch_alter_table("datasets", schema=None) as batch_op:
        batch_op.drop_index("ix_datasets_project_create_time")

    op.drop_table("datasets")
