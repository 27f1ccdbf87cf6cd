"""PostgreSQL for the tests: the server on 127.0.0.1:5432 (override with
GATEWAY_TEST_PG_ADMIN_URL, a plain postgresql:// URL of a database the test user may connect to
and create databases from). Each session creates throw-away `gw_test_<random>` databases and
drops them at its end. When the server cannot be reached, PostgreSQL tests are skipped, unless
CI is set: then they fail.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import AsyncIterator

import asyncpg
import pytest
import sqlalchemy as sa

from tests.store.support import FreshUrl

PG_ADMIN_URL = os.environ.get(
    "GATEWAY_TEST_PG_ADMIN_URL", "postgresql://postgres@127.0.0.1:5432/test"
)


class PostgresAdmin:
    """Creates and drops the throw-away databases of one test session."""

    def __init__(self, admin_url: str) -> None:
        self.admin_url = admin_url
        self.created: list[str] = []
        self.problem: str | None = None

    async def reachable(self) -> str | None:
        try:
            conn = await asyncpg.connect(self.admin_url, timeout=5)
        except (OSError, asyncpg.PostgresError, TimeoutError) as exc:
            return f"{type(exc).__name__}: {exc}"
        await conn.close()
        return None

    async def create(self) -> str:
        name = f"gw_test_{secrets.token_hex(6)}"
        conn = await asyncpg.connect(self.admin_url)
        try:
            await conn.execute(f'CREATE DATABASE "{name}"')
        finally:
            await conn.close()
        self.created.append(name)
        return name

    async def drop(self, name: str) -> None:
        conn = await asyncpg.connect(self.admin_url)
        try:
            await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            await conn.close()

    def url(self, name: str) -> str:
        admin = sa.make_url(self.admin_url)
        return admin.set(drivername="postgresql+asyncpg", database=name).render_as_string(
            hide_password=False
        )


def require(admin: PostgresAdmin) -> None:
    """Skip the calling test when PostgreSQL is unreachable, or fail it when CI is set."""
    if admin.problem is None:
        return
    message = f"PostgreSQL at {sa.make_url(admin.admin_url)!r} is unreachable: {admin.problem}"
    if os.environ.get("CI"):
        pytest.fail(message + " (CI is set: the PostgreSQL tests must run, not skip)")
    pytest.skip(message)


@pytest.fixture(scope="session")
async def postgres() -> AsyncIterator[PostgresAdmin]:
    """The admin of the session's PostgreSQL databases; drops them all at the end."""
    admin = PostgresAdmin(PG_ADMIN_URL)
    admin.problem = await admin.reachable()
    yield admin
    for name in admin.created:
        await admin.drop(name)


@pytest.fixture(
    scope="session",
    params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)],
)
async def fresh_url(
    request: pytest.FixtureRequest,
    tmp_path_factory: pytest.TempPathFactory,
    postgres: PostgresAdmin,
) -> FreshUrl:
    """A factory of URLs of new, empty databases of the parametrised dialect."""
    if request.param == "sqlite":
        folder = tmp_path_factory.mktemp("store")

        async def sqlite_url() -> str:
            # A folder that does not exist yet: open_store must create it.
            return f"sqlite+aiosqlite:///{folder / secrets.token_hex(4) / 'gateway.db'}"

        return sqlite_url
    require(postgres)

    async def postgres_url() -> str:
        return postgres.url(await postgres.create())

    return postgres_url
