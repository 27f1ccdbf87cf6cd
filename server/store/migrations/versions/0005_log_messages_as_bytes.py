"""request logs keep their messages as protobuf bytes (request_pb, response_pb)

Turning each logged call's request and response into JSON cost the writer more than
anything else it does per log; the bytes cost next to nothing and JSON is made when a log
is read. Rows written before this revision keep their JSON text in request_json and
response_json, which new rows leave empty; readers take whichever a row has.

Revision ID: 0005_log_messages_as_bytes
Revises: 0004_tuned_model_owners
Create Date: 2026-11-25
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005_log_messages_as_bytes"
down_revision: str | Sequence[str] | None = "0004_tuned_model_owners"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


# Plain ALTER TABLE, not batch mode: on SQLite a batch would copy request_logs into a new
# table, and the FTS5 index follows the table's rowids.


def upgrade() -> None:
    op.add_column("request_logs", sa.Column("request_pb", sa.LargeBinary(), nullable=True))
    op.add_column("request_logs", sa.Column("response_pb", sa.LargeBinary(), nullable=True))


def downgrade() -> None:
    # Logs written since the upgrade lose their request and response: older code has no
    # reader for the bytes.
    op.drop_column("request_logs", "response_pb")
    op.drop_column("request_logs", "request_pb")
