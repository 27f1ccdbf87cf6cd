"""Every store test runs on SQLite (a temporary file) and on PostgreSQL (a fresh database):
the `fresh_url` fixture (tests/postgres.py, registered in tests/conftest.py) is parametrised
by dialect."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from gemini_gateway.server.pricing import PriceTable
from gemini_gateway.server.store import Store, open_store
from gemini_gateway.server.store.models import Base
from tests.store.support import FreshUrl


@pytest.fixture(scope="session")
async def shared_store(fresh_url: FreshUrl) -> AsyncIterator[Store]:
    store = await open_store(await fresh_url())
    yield store
    await store.close()


async def clear(store: Store) -> None:
    async with store.begin() as conn:
        for table in reversed(Base.metadata.sorted_tables):
            await conn.execute(table.delete())


@pytest.fixture
async def store(shared_store: Store) -> Store:
    """The session's store of this dialect, emptied for the test."""
    await clear(shared_store)
    return shared_store


@pytest.fixture(scope="session")
def prices() -> PriceTable:
    return PriceTable.load()
