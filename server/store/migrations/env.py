"""Alembic environment of the gateway's store.

The store's own code hands a live connection in `config.attributes["connection"]` (see
`engine.upgrade` and `python -m gemini_gateway.server.store`). Run from the `alembic` command
line instead, it opens `sqlalchemy.url` with the async engine.
"""

from __future__ import annotations

import asyncio

from alembic import context
from sqlalchemy.engine import Connection

from gemini_gateway.server.store.engine import create_engine
from gemini_gateway.server.store.models import Base

config = context.config
target_metadata = Base.metadata

# Free-text search over request logs is set up by the 0003 migration per database and is not in
# the models: SQLite's FTS5 table (with its shadow tables) and PostgreSQL's full-text index.
_SEARCH_TABLE_PREFIX = "request_logs_fts"
_SEARCH_INDEX = "ix_request_logs_search_text"


def _include_name(name: str | None, type_: str, parent_names: object) -> bool:
    """Leave the free-text search objects out of autogenerate's comparison."""
    if type_ == "table" and name is not None and name.startswith(_SEARCH_TABLE_PREFIX):
        return False
    return not (type_ == "index" and name == _SEARCH_INDEX)


def _configure(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        # SQLite cannot ALTER most things: later revisions get copy-and-move batches.
        render_as_batch=connection.dialect.name == "sqlite",
        compare_type=True,
        include_name=_include_name,
    )
    with context.begin_transaction():
        context.run_migrations()


async def _run_with_url(url: str) -> None:
    engine = create_engine(url)
    try:
        async with engine.begin() as conn:
            await conn.run_sync(_configure)
    finally:
        await engine.dispose()


def run_online() -> None:
    connection = config.attributes.get("connection")
    if connection is not None:
        _configure(connection)
        return
    url = config.get_main_option("sqlalchemy.url")
    if not url:
        raise RuntimeError("no connection given and no sqlalchemy.url set")
    asyncio.run(_run_with_url(url))


def run_offline() -> None:
    context.configure(
        url=config.get_main_option("sqlalchemy.url"),
        target_metadata=target_metadata,
        literal_binds=True,
    )
    with context.begin_transaction():
        context.run_migrations()


if context.is_offline_mode():
    run_offline()
else:
    run_online()
