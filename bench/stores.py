"""Throwaway stores for the store benchmarks: a SQLite file in a temporary folder, or a fresh
PostgreSQL database created beside the one an admin URL names and dropped afterwards."""

from __future__ import annotations

import secrets
import shutil
import tempfile
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import asyncpg
import sqlalchemy as sa


@asynccontextmanager
async def sqlite_url() -> AsyncIterator[str]:
    folder = tempfile.mkdtemp(prefix="gw-bench-")
    try:
        yield f"sqlite+aiosqlite:///{Path(folder) / 'gateway.db'}"
    finally:
        shutil.rmtree(folder, ignore_errors=True)


@asynccontextmanager
async def postgres_url(admin_url: str) -> AsyncIterator[str]:
    admin = sa.make_url(admin_url).set(drivername="postgresql")
    dsn = admin.render_as_string(hide_password=False)
    name = f"gw_bench_{secrets.token_hex(4)}"
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()
    try:
        yield admin.set(drivername="postgresql+asyncpg", database=name).render_as_string(
            hide_password=False
        )
    finally:
        conn = await asyncpg.connect(dsn)
        try:
            await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            await conn.close()
