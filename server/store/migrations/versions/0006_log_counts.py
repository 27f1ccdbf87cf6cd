"""each project's log count, kept in logging_settings.log_count

The log writer checked a project's limit by counting its rows in request_logs, once per
batch: a cost that grew with the project's logs. The count is now kept beside the project's
other counters, updated in the same transactions as the logs themselves, and this revision
sets it from the rows already there (adding the settings row of a project that has logs and
none).

Revision ID: 0006_log_counts
Revises: 0005_log_messages_as_bytes
Create Date: 2026-11-25
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006_log_counts"
down_revision: str | Sequence[str] | None = "0005_log_messages_as_bytes"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column(
        "logging_settings",
        sa.Column("log_count", sa.BigInteger(), server_default="0", nullable=False),
    )
    op.execute(
        "INSERT INTO logging_settings "
        "(project, skipped_at_limit, skipped_media, evicted, expired, log_count) "
        "SELECT DISTINCT project, 0, 0, 0, 0, 0 FROM request_logs "
        "WHERE project NOT IN (SELECT project FROM logging_settings)"
    )
    op.execute(
        "UPDATE logging_settings SET log_count = "
        "(SELECT count(*) FROM request_logs WHERE request_logs.project = logging_settings.project)"
    )


def downgrade() -> None:
    op.drop_column("logging_settings", "log_count")
