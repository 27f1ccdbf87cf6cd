"""Opening the store: one URL chooses SQLite (embedded default) or PostgreSQL (shared).

`open_store` creates what is missing (the SQLite file and its folder, the tables) and brings
the schema to the newest Alembic revision, so neither a first start nor an upgrade needs a
manual step. Replicas sharing one PostgreSQL database upgrade one at a time under an
advisory lock; the others then find the schema already current.
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from alembic.util import CommandError
from sqlalchemy import event
from sqlalchemy.engine import URL, Connection, make_url
from sqlalchemy.ext.asyncio import (
    AsyncConnection,
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)
from sqlalchemy.util import await_

log = logging.getLogger(__name__)

DEFAULT_URL = "sqlite+aiosqlite:///gateway-data/gateway.db"
MIGRATIONS_DIR = Path(__file__).resolve().parent / "migrations"
# Any fixed 64-bit number, the same in every replica: the key of the migration lock.
MIGRATION_LOCK_KEY = 0x67617465776179  # "gateway"
# How long a SQLite connection waits for another writer before "database is locked".
SQLITE_BUSY_TIMEOUT_MS = 10_000
# Between attempts to switch a database another connection is writing to WAL mode.
WAL_RETRY_PAUSE_S = 0.02


class StoreError(RuntimeError):
    """The store cannot be opened (bad URL, unsupported database)."""


@dataclass(eq=False)
class Store:
    """An open store: the async engine and a session factory over it."""

    engine: AsyncEngine
    sessions: async_sessionmaker[AsyncSession]

    @property
    def dialect(self) -> str:
        """`sqlite` or `postgresql`: queries that differ per database branch on this."""
        return self.engine.dialect.name

    @asynccontextmanager
    async def begin(self) -> AsyncIterator[AsyncConnection]:
        """A connection inside one transaction, committed on success, rolled back on error."""
        async with self.engine.begin() as conn:
            yield conn

    @asynccontextmanager
    async def connect(self) -> AsyncIterator[AsyncConnection]:
        """A connection for reads (no explicit transaction)."""
        async with self.engine.connect() as conn:
            yield conn

    async def close(self) -> None:
        await self.engine.dispose()


def alembic_config() -> Config:
    """Alembic configured in code: no alembic.ini, the scripts live beside this module."""
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    return cfg


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    # WAL lets readers (the usage API, the CLI) work while the recorder writes; NORMAL is
    # durable across application crashes in WAL mode and much faster than FULL.
    cursor = dbapi_connection.cursor()
    try:
        cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
        _use_wal(cursor)
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.execute("PRAGMA foreign_keys=ON")
    finally:
        cursor.close()


def _use_wal(cursor: Any) -> None:
    """Put the database in WAL mode, which the file keeps: the first connection does it.

    Switching needs the database to itself, and SQLite may refuse it at once ("database is
    locked"), without waiting through its busy handler, while another connection writes:
    a replica opening the store while another creates or migrates it. So it is tried again
    until the busy timeout has passed, pausing without blocking the event loop.
    """
    deadline = time.monotonic() + SQLITE_BUSY_TIMEOUT_MS / 1000
    while True:
        try:
            cursor.execute("PRAGMA journal_mode")
            if str(cursor.fetchone()[0]).lower() != "wal":
                cursor.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() > deadline:
                raise
        await_(asyncio.sleep(WAL_RETRY_PAUSE_S))


def _prepare_sqlite_path(url: URL) -> None:
    database = url.database or ""
    if database in ("", ":memory:") or database.startswith("file:"):
        return
    Path(database).expanduser().resolve().parent.mkdir(parents=True, exist_ok=True)


def create_engine(
    url: str | URL, *, pool_size: int = 10, max_overflow: int = 10, echo: bool = False
) -> AsyncEngine:
    """The async engine for `url`, with the per-dialect settings the store relies on."""
    parsed = make_url(url)
    backend = parsed.get_backend_name()
    if backend == "sqlite":
        if parsed.get_driver_name() != "aiosqlite":
            raise StoreError(f"SQLite needs the async driver sqlite+aiosqlite://, got {parsed!r}")
        _prepare_sqlite_path(parsed)
        engine = create_async_engine(parsed, echo=echo)
        event.listen(engine.sync_engine, "connect", _sqlite_pragmas)
        return engine
    if backend == "postgresql":
        if parsed.get_driver_name() != "asyncpg":
            raise StoreError(f"PostgreSQL needs postgresql+asyncpg://, got {parsed!r}")
        return create_async_engine(
            parsed,
            echo=echo,
            # Each replica holds at most pool_size + max_overflow connections: size the server's
            # max_connections for replicas x that.
            pool_size=pool_size,
            max_overflow=max_overflow,
            pool_pre_ping=True,
            pool_recycle=1800,
            # Day/hour boundaries are UTC whatever the server's default zone is.
            connect_args={"server_settings": {"timezone": "UTC"}},
        )
    raise StoreError(
        f"unsupported store URL {parsed!r}: use sqlite+aiosqlite:///path or postgresql+asyncpg://"
    )


def _upgrade(connection: Connection, revision: str = "head") -> None:
    cfg = alembic_config()
    cfg.attributes["connection"] = connection
    _refuse_a_newer_store(connection, cfg)
    command.upgrade(cfg, revision)


def _refuse_a_newer_store(connection: Connection, cfg: Config) -> None:
    """A store migrated by a newer release: StoreError saying so, not Alembic's traceback."""
    scripts = ScriptDirectory.from_config(cfg)
    for current in MigrationContext.configure(connection).get_current_heads():
        try:
            scripts.get_revision(current)
        except CommandError:
            raise StoreError(
                f"the store is at schema revision {current!r}, which this release does not "
                f"know (its newest is {scripts.get_current_head()!r}): a newer release has "
                "migrated it. Run that release or a newer one, or restore the store's backup "
                "from before the upgrade."
            ) from None


async def upgrade(engine: AsyncEngine, revision: str = "head") -> None:
    """Bring the schema to `revision`; safe when several replicas call it at once."""
    async with engine.begin() as conn:
        if conn.dialect.name == "postgresql":
            # Held until this transaction ends, so the upgrade (transactional DDL on
            # PostgreSQL) is committed before the next replica looks at alembic_version.
            await conn.execute(sa.select(sa.func.pg_advisory_xact_lock(MIGRATION_LOCK_KEY)))
        elif conn.dialect.name == "sqlite":
            # The write lock up front: a second process starting at once waits (busy_timeout)
            # instead of failing on "table already exists".
            await conn.exec_driver_sql("BEGIN IMMEDIATE")
        await conn.run_sync(_upgrade, revision)


def _check(connection: Connection) -> None:
    cfg = alembic_config()
    cfg.attributes["connection"] = connection
    command.check(cfg)


async def check_schema(engine: AsyncEngine) -> None:
    """Compare the models with the migrated schema of `engine`'s database.

    Raises `alembic.util.AutogenerateDiffsDetected` (listing the differences) on drift, and
    `alembic.util.CommandError` when the database is not at head.
    """
    async with engine.connect() as conn:
        await conn.run_sync(_check)


async def open_store(
    url: str = DEFAULT_URL,
    *,
    migrate: bool = True,
    pool_size: int = 10,
    max_overflow: int = 10,
    echo: bool = False,
) -> Store:
    """Open the store at `url` and (unless `migrate=False`) upgrade its schema to head."""
    # In a thread: for SQLite this may create the database's folder.
    engine = await asyncio.to_thread(
        create_engine, url, pool_size=pool_size, max_overflow=max_overflow, echo=echo
    )
    try:
        if migrate:
            await upgrade(engine)
    except BaseException:
        await engine.dispose()
        raise
    log.info("store open: %s", engine.url.render_as_string(hide_password=True))
    return Store(engine=engine, sessions=async_sessionmaker(engine, expire_on_commit=False))


def describe_error(exc: BaseException) -> str:
    """One line for a log about a failed store operation: the driver's own message (not
    SQLAlchemy's wrapper, which adds the statement and its parameters), at most 300 characters."""
    orig = getattr(exc, "orig", None) or exc
    text = str(orig).splitlines()[0] if str(orig) else ""
    return f"{type(orig).__name__}: {text}"[:300] if text else type(orig).__name__
