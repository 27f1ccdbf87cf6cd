"""Datasets: named selections of a project's logs, and the queries behind DatasetService.

A dataset is one `datasets` row and one `dataset_logs` row per member log. Members chosen by
a filter go in with a single INSERT ... SELECT over the log store's own filter query, so a
dataset of every matching log never passes through Python. Deleting a dataset removes its
memberships and runs (ON DELETE CASCADE); the logs themselves stay and expire as any other.

Every function takes the project the caller may act in: a dataset of another project is
simply not found. Bad input raises `DatasetError` (naming the field), a missing dataset
`DatasetNotFound`, a taken id `DatasetExists`, and unknown log ids `UnknownLogs`.
"""

from __future__ import annotations

import re
import secrets
import string
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, cast

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncConnection

from gemini_gateway.server.store.engine import Store
from gemini_gateway.server.store.log_tables import DatasetLog, DatasetRow, RequestLog
from gemini_gateway.server.store.logs import LogRecord, get_logs, log_ids_select
from gemini_gateway.server.store.page_tokens import decode_page_token, encode_page_token

DATASET_ID_PATTERN = re.compile(r"[a-z]([a-z0-9-]{0,61}[a-z0-9])?")
MAX_DATASET_ID = 63
MAX_DISPLAY_NAME = 128
MAX_DESCRIPTION = 10_000
MAX_LOG_IDS = 10_000
"""Most log ids one call may name (a filter has no such limit)."""
DEFAULT_PAGE_SIZE = 50
MAX_PAGE_SIZE = 1000
EXPORT_PAGE_SIZE = 100
"""Logs read in full per query while a dataset is iterated: bounds an export's memory."""

_ID_SUFFIX_LENGTH = 5
_ID_SUFFIX_ALPHABET = string.ascii_lowercase + string.digits
# Generated ids collide only on the same name and the same 5 random characters (36^5):
# a few attempts are plenty.
_ID_ATTEMPTS = 5
# Ids per IN (...) list: far below SQLite's and asyncpg's bound-parameter limits.
_IN_CHUNK = 1000

_datasets = cast(sa.Table, DatasetRow.__table__)
_members = cast(sa.Table, DatasetLog.__table__)
_logs = cast(sa.Table, RequestLog.__table__)


class DatasetError(ValueError):
    """A request that cannot be carried out as given; `field` names the offending input."""

    def __init__(self, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.field = field


class DatasetNotFound(LookupError):
    """No dataset of that id in the project."""

    def __init__(self, project: str, dataset_id: str) -> None:
        super().__init__(f"dataset projects/{project}/datasets/{dataset_id} does not exist")
        self.project = project
        self.dataset_id = dataset_id


class DatasetExists(Exception):
    """The id asked for is already a dataset of the project."""

    def __init__(self, project: str, dataset_id: str) -> None:
        super().__init__(f"dataset projects/{project}/datasets/{dataset_id} already exists")


class UnknownLogs(LookupError):
    """Log ids that are not logs of the project (never stored, deleted or expired)."""

    def __init__(self, project: str, log_ids: Sequence[str]) -> None:
        super().__init__(f"{len(log_ids)} logs do not exist in project {project}")
        self.project = project
        self.log_ids = list(log_ids)


@dataclass(frozen=True, slots=True)
class DatasetRecord:
    """A dataset as the service returns it."""

    project: str
    dataset_id: str
    display_name: str
    description: str
    create_time: datetime
    update_time: datetime
    log_count: int

    @property
    def name(self) -> str:
        return f"projects/{self.project}/datasets/{self.dataset_id}"


# --- ids and limits --------------------------------------------------------------------------


def check_dataset_id(dataset_id: str, field: str = "dataset_id") -> None:
    if DATASET_ID_PATTERN.fullmatch(dataset_id) is None:
        raise DatasetError(
            f"{dataset_id[:100]!r} is not a dataset id: use 1-63 lowercase letters, digits "
            "and hyphens, starting with a letter and not ending with a hyphen",
            field,
        )


def new_dataset_id(display_name: str) -> str:
    """`Hard Questions (v2)` -> `hard-questions-v2-k3x9q`: the name's words and a suffix."""
    words = re.findall(r"[a-z0-9]+", display_name.lower())
    if not words or not words[0][0].isalpha():
        words.insert(0, "dataset")
    stem = "-".join(words)[: MAX_DATASET_ID - _ID_SUFFIX_LENGTH - 1].rstrip("-")
    suffix = "".join(secrets.choice(_ID_SUFFIX_ALPHABET) for _ in range(_ID_SUFFIX_LENGTH))
    return f"{stem}-{suffix}"


def check_display_name(display_name: str) -> None:
    if not display_name.strip():
        raise DatasetError("display_name is required", "display_name")
    if len(display_name) > MAX_DISPLAY_NAME:
        raise DatasetError(
            f"display_name has {len(display_name)} characters; at most {MAX_DISPLAY_NAME}",
            "display_name",
        )


def check_description(description: str) -> None:
    if len(description) > MAX_DESCRIPTION:
        raise DatasetError(
            f"description has {len(description)} characters; at most {MAX_DESCRIPTION}",
            "description",
        )


def _unique_ids(log_ids: Sequence[str]) -> list[str]:
    if len(log_ids) > MAX_LOG_IDS:
        raise DatasetError(
            f"{len(log_ids)} logs named; at most {MAX_LOG_IDS} per call (use a filter for more)",
            "log_ids",
        )
    return list(dict.fromkeys(log_ids))


def _selection(log_ids: Sequence[str], filter_text: str) -> list[str]:
    if log_ids and filter_text.strip():
        raise DatasetError("give log names or a filter, not both", "filter")
    return _unique_ids(log_ids)


def _chunks(items: Sequence[str]) -> list[Sequence[str]]:
    return [items[start : start + _IN_CHUNK] for start in range(0, len(items), _IN_CHUNK)]


def _now(now: datetime | None) -> datetime:
    return datetime.now(UTC) if now is None else now


# --- reading ---------------------------------------------------------------------------------


def _log_count() -> sa.ScalarSelect[int]:
    return (
        sa.select(sa.func.count())
        .select_from(_members)
        .where(
            _members.c.project == _datasets.c.project,
            _members.c.dataset_id == _datasets.c.dataset_id,
        )
        .scalar_subquery()
    )


def _record_select() -> sa.Select[Any]:
    return sa.select(
        _datasets.c.project,
        _datasets.c.dataset_id,
        _datasets.c.display_name,
        _datasets.c.description,
        _datasets.c.create_time,
        _datasets.c.update_time,
        _log_count().label("log_count"),
    )


def _record(row: sa.Row[Any]) -> DatasetRecord:
    return DatasetRecord(
        project=row.project,
        dataset_id=row.dataset_id,
        display_name=row.display_name,
        description=row.description or "",
        create_time=row.create_time,
        update_time=row.update_time,
        log_count=int(row.log_count),
    )


def _key(project: str, dataset_id: str) -> sa.ColumnElement[bool]:
    return sa.and_(_datasets.c.project == project, _datasets.c.dataset_id == dataset_id)


async def _read(conn: AsyncConnection, project: str, dataset_id: str) -> DatasetRecord:
    row = (await conn.execute(_record_select().where(_key(project, dataset_id)))).first()
    if row is None:
        raise DatasetNotFound(project, dataset_id)
    return _record(row)


async def get_dataset(store: Store, project: str, dataset_id: str) -> DatasetRecord:
    async with store.connect() as conn:
        return await _read(conn, project, dataset_id)


def _encode_token(project: str, last: DatasetRecord) -> str:
    return encode_page_token(
        {"p": project, "t": last.create_time.isoformat(), "i": last.dataset_id}
    )


def _decode_token(project: str, token: str) -> tuple[datetime, str]:
    invalid = DatasetError("page_token is not a token this service issued", "page_token")
    data = decode_page_token(token)
    if data is None:
        raise invalid
    try:
        owner, time_text, dataset_id = data["p"], data["t"], data["i"]
        create_time = datetime.fromisoformat(time_text)
    except (ValueError, TypeError, KeyError):
        raise invalid from None
    if owner != project or not isinstance(dataset_id, str) or create_time.tzinfo is None:
        raise invalid
    return create_time, dataset_id


async def list_datasets(
    store: Store, project: str, *, page_size: int = 0, page_token: str = ""
) -> tuple[list[DatasetRecord], str]:
    """One page of the project's datasets, newest first, and the next page's token."""
    if page_size < 0:
        raise DatasetError("page_size must not be negative", "page_size")
    size = min(page_size or DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE)
    query = (
        _record_select()
        .where(_datasets.c.project == project)
        .order_by(_datasets.c.create_time.desc(), _datasets.c.dataset_id.desc())
        .limit(size + 1)
    )
    if page_token:
        # Keyset paging: datasets created (or deleted) meanwhile neither repeat nor vanish.
        after_time, after_id = _decode_token(project, page_token)
        query = query.where(
            sa.or_(
                _datasets.c.create_time < after_time,
                sa.and_(_datasets.c.create_time == after_time, _datasets.c.dataset_id < after_id),
            )
        )
    async with store.connect() as conn:
        rows = (await conn.execute(query)).all()
    records = [_record(row) for row in rows[:size]]
    more = len(rows) > size
    return records, _encode_token(project, records[-1]) if more else ""


async def iter_dataset_logs(
    store: Store, project: str, dataset_id: str, *, page_size: int = EXPORT_PAGE_SIZE
) -> AsyncIterator[LogRecord]:
    """Every log of the dataset in full, newest first, read `page_size` at a time.

    Each page is its own short read (keyset on the log id), so a slow consumer holds no
    connection and memory stays at one page whatever the dataset's size. Logs added while
    the iteration runs may or may not be seen; none is seen twice.
    """
    await get_dataset(store, project, dataset_id)
    before: str | None = None
    while True:
        query = (
            sa.select(_members.c.log_id)
            .where(_members.c.project == project, _members.c.dataset_id == dataset_id)
            .order_by(_members.c.log_id.desc())
            .limit(page_size)
        )
        if before is not None:
            query = query.where(_members.c.log_id < before)
        async with store.connect() as conn:
            ids = list((await conn.execute(query)).scalars())
        if not ids:
            return
        for record in await get_logs(store, project, ids, full=True):
            yield record
        if len(ids) < page_size:
            return
        before = ids[-1]


# --- writing ---------------------------------------------------------------------------------


def _insert(dialect: str, table: sa.Table) -> Any:
    """INSERT with ON CONFLICT DO NOTHING available, in the store's dialect."""
    return postgresql.insert(table) if dialect == "postgresql" else sqlite.insert(table)


async def _existing_ids(conn: AsyncConnection, project: str, log_ids: Sequence[str]) -> set[str]:
    found: set[str] = set()
    for chunk in _chunks(log_ids):
        query = sa.select(_logs.c.id).where(_logs.c.project == project, _logs.c.id.in_(chunk))
        found.update((await conn.execute(query)).scalars())
    return found


async def _add(
    conn: AsyncConnection,
    dialect: str,
    project: str,
    dataset_id: str,
    log_ids: Sequence[str],
    filter_text: str,
    now: datetime,
) -> int:
    """Add memberships (ids already checked, or a filter); returns how many are new."""
    if log_ids:
        sources = [
            sa.select(_logs.c.id).where(_logs.c.project == project, _logs.c.id.in_(chunk))
            for chunk in _chunks(log_ids)
        ]
    else:
        sources = [log_ids_select(project, filter_text, dialect)]
    added = 0
    for source in sources:
        matched = source.subquery()
        rows = sa.select(
            sa.literal(project, sa.String()),
            sa.literal(dataset_id, sa.String()),
            matched.c[0],
            sa.literal(now, _members.c.add_time.type),
        ).where(
            # SQLite reads `SELECT ... ON CONFLICT` as a join constraint unless the SELECT
            # has a WHERE of its own.
            matched.c[0].is_not(None)
        )
        statement = (
            _insert(dialect, _members)
            .from_select(["project", "dataset_id", "log_id", "add_time"], rows)
            .on_conflict_do_nothing()
        )
        result = await conn.execute(statement)
        added += max(result.rowcount, 0)
    return added


async def _lock(conn: AsyncConnection, project: str, dataset_id: str) -> None:
    """Hold the dataset row until the transaction ends (PostgreSQL; SQLite writes serialise),
    so a concurrent delete cannot leave memberships of a dataset that is gone."""
    query = sa.select(_datasets.c.dataset_id).where(_key(project, dataset_id)).with_for_update()
    if (await conn.execute(query)).first() is None:
        raise DatasetNotFound(project, dataset_id)


async def _check_ids(conn: AsyncConnection, project: str, log_ids: Sequence[str]) -> None:
    if not log_ids:
        return
    found = await _existing_ids(conn, project, log_ids)
    missing = [log_id for log_id in log_ids if log_id not in found]
    if missing:
        raise UnknownLogs(project, missing)


async def create_dataset(
    store: Store,
    project: str,
    *,
    display_name: str,
    description: str = "",
    dataset_id: str = "",
    log_ids: Sequence[str] = (),
    filter_text: str = "",
    now: datetime | None = None,
) -> DatasetRecord:
    """A new dataset holding the given logs, or every log the filter matches (or none).

    Raises DatasetError, DatasetExists (a given id that is taken), UnknownLogs (every id must
    be a log of the project) and FilterError.
    """
    check_display_name(display_name)
    check_description(description)
    if dataset_id:
        check_dataset_id(dataset_id)
    ids = _selection(log_ids, filter_text)
    created = _now(now)
    for _attempt in range(_ID_ATTEMPTS):
        chosen = dataset_id or new_dataset_id(display_name)
        async with store.begin() as conn:
            row = {
                "project": project,
                "dataset_id": chosen,
                "display_name": display_name,
                "description": description,
                "create_time": created,
                "update_time": created,
            }
            result = await conn.execute(
                _insert(store.dialect, _datasets).values(row).on_conflict_do_nothing()
            )
            if result.rowcount != 1:
                if dataset_id:
                    raise DatasetExists(project, dataset_id)
                continue  # a generated id that happens to be taken: draw another
            await _check_ids(conn, project, ids)
            if ids or filter_text.strip():
                await _add(conn, store.dialect, project, chosen, ids, filter_text, created)
            return await _read(conn, project, chosen)
    raise DatasetError(f"no free dataset id for {display_name!r}; give dataset_id", "dataset_id")


async def update_dataset(
    store: Store,
    project: str,
    dataset_id: str,
    *,
    display_name: str | None = None,
    description: str | None = None,
    now: datetime | None = None,
) -> DatasetRecord:
    """Change the display name and/or the description (None: leave as it is)."""
    changes: dict[str, Any] = {}
    if display_name is not None:
        check_display_name(display_name)
        changes["display_name"] = display_name
    if description is not None:
        check_description(description)
        changes["description"] = description
    async with store.begin() as conn:
        if changes:
            changes["update_time"] = _now(now)
            result = await conn.execute(
                _datasets.update().where(_key(project, dataset_id)).values(changes)
            )
            if result.rowcount == 0:
                raise DatasetNotFound(project, dataset_id)
        return await _read(conn, project, dataset_id)


async def delete_dataset(store: Store, project: str, dataset_id: str) -> None:
    """Delete the dataset, its memberships and its runs; its logs stay."""
    async with store.begin() as conn:
        result = await conn.execute(_datasets.delete().where(_key(project, dataset_id)))
        if result.rowcount == 0:
            raise DatasetNotFound(project, dataset_id)


async def _touch(conn: AsyncConnection, project: str, dataset_id: str, now: datetime) -> None:
    await conn.execute(_datasets.update().where(_key(project, dataset_id)).values(update_time=now))


async def add_logs(
    store: Store,
    project: str,
    dataset_id: str,
    *,
    log_ids: Sequence[str] = (),
    filter_text: str = "",
    now: datetime | None = None,
) -> tuple[int, DatasetRecord]:
    """Add logs by id or by filter; logs already in the dataset stay as they are.

    Returns how many logs are new in the dataset, and the dataset after the change.
    """
    ids = _selection(log_ids, filter_text)
    if not ids and not filter_text.strip():
        raise DatasetError("give log names or a filter", "log_names")
    changed = _now(now)
    async with store.begin() as conn:
        await _lock(conn, project, dataset_id)
        await _check_ids(conn, project, ids)
        added = await _add(conn, store.dialect, project, dataset_id, ids, filter_text, changed)
        if added:
            await _touch(conn, project, dataset_id, changed)
        return added, await _read(conn, project, dataset_id)


async def remove_logs(
    store: Store,
    project: str,
    dataset_id: str,
    *,
    log_ids: Sequence[str] = (),
    filter_text: str = "",
    now: datetime | None = None,
) -> tuple[int, DatasetRecord]:
    """Remove logs by id or by filter from the dataset (ids not in it are ignored).

    Returns how many logs left the dataset, and the dataset after the change.
    """
    ids = _selection(log_ids, filter_text)
    if not ids and not filter_text.strip():
        raise DatasetError("give log names or a filter", "log_names")
    changed = _now(now)
    mine = sa.and_(_members.c.project == project, _members.c.dataset_id == dataset_id)
    if ids:
        conditions = [_members.c.log_id.in_(chunk) for chunk in _chunks(ids)]
    else:
        matched = log_ids_select(project, filter_text, store.dialect)
        conditions = [_members.c.log_id.in_(matched.scalar_subquery())]
    removed = 0
    async with store.begin() as conn:
        await _lock(conn, project, dataset_id)
        for condition in conditions:
            result = await conn.execute(_members.delete().where(mine, condition))
            removed += max(result.rowcount, 0)
        if removed:
            await _touch(conn, project, dataset_id, changed)
        return removed, await _read(conn, project, dataset_id)
