"""Queries over `resource_owners`: record who created a resource, read the owners of names.

Both are single statements on the primary key. Recording is an upsert (INSERT ... ON
CONFLICT DO UPDATE, on SQLite and PostgreSQL alike): a name created again after its model
was deleted belongs to whoever created it last.
"""

from __future__ import annotations

from collections.abc import Collection
from datetime import UTC, datetime
from typing import cast

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite

from gemini_gateway.server.store.engine import Store
from gemini_gateway.server.store.tenancy_tables import ResourceOwner

_owners = cast(sa.Table, ResourceOwner.__table__)
# Names per IN (...) list: far below SQLite's and asyncpg's bound-parameter limits.
_IN_CHUNK = 1000


async def record_owner(
    store: Store, name: str, project: str, caller: str, when: datetime | None = None
) -> None:
    """`name` was created by `caller` of `project` (now, unless `when` says otherwise)."""
    values = {
        "name": name,
        "project": project,
        "caller": caller,
        "create_time": when or datetime.now(UTC),
    }
    insert = postgresql.insert if store.dialect == "postgresql" else sqlite.insert
    statement = insert(_owners).values(**values)
    statement = statement.on_conflict_do_update(
        index_elements=[_owners.c.name],
        set_={key: statement.excluded[key] for key in ("project", "caller", "create_time")},
    )
    async with store.begin() as conn:
        await conn.execute(statement)


async def owners_of(store: Store, names: Collection[str]) -> dict[str, str]:
    """The owning project of each of `names` that has one (names without are left out)."""
    wanted = sorted(set(names))
    found: dict[str, str] = {}
    async with store.connect() as conn:
        for start in range(0, len(wanted), _IN_CHUNK):
            chunk = wanted[start : start + _IN_CHUNK]
            rows = await conn.execute(
                sa.select(_owners.c.name, _owners.c.project).where(_owners.c.name.in_(chunk))
            )
            found.update({row.name: row.project for row in rows})
    return found
