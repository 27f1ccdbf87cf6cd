"""Usage: the recorder's batch writer and the queries behind the usage service.

Writing: each batch inserts its raw rows and, in the same transaction, adds its sums to the
hourly and daily rollups and its label pairs to `usage_label_values` with
INSERT ... ON CONFLICT DO UPDATE (col = col + excluded.col), so replicas writing at once keep
the rollups exact. Rows are upserted in key order, so two writers lock them in the same order.

Reading: a range [start, end) is cut into the raw partial hours at its edges, the hourly rows
of the partial days next to them and the daily rows in between (coarsest first, as far as
the requested bucket allows). Every part groups by the requested keys plus model,
long_prompt and batch; each (model, tier, batch) sub-group is priced (Batch API requests at
the batch discount), then merged into the requested groups.
The result is exact for any range while a long range reads a few thousand rollup rows.
"""

from __future__ import annotations

import functools
import hashlib
import itertools
import json
import math
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any, Literal, cast

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from gemini_gateway.server.filters import (
    Comparison,
    Expr,
    FilterError,
    FilterField,
    Not,
    Resolver,
    Text,
    compile_filter,
    field_resolver,
    parse_filter,
)
from gemini_gateway.server.labels import label_violations
from gemini_gateway.server.pricing import LONG_PROMPT_TOKENS, PriceTable, TokenSums
from gemini_gateway.server.store.engine import Store
from gemini_gateway.server.store.models import (
    ROLLUP_SUM_COLUMNS,
    TOKEN_COLUMNS,
    UsageDaily,
    UsageDailyByLabel,
    UsageEventRow,
    UsageHourly,
    UsageHourlyByLabel,
    UsageLabelValue,
    labels_hash,
)
from gemini_gateway.server.store.page_tokens import decode_page_token, encode_page_token

if TYPE_CHECKING:
    from gemini_gateway.server.recorder import UsageEvent

NONE_VALUE = "(none)"
"""Group value of calls without the grouped label key (label values cannot contain '(')."""
GROUP_FIELDS = ("model", "method", "project", "caller", "status")
MAX_GROUP_KEYS = 5
DEFAULT_PAGE_SIZE = 100
MAX_PAGE_SIZE = 1000

HOUR = timedelta(hours=1)
DAY = timedelta(days=1)

_events = cast(sa.Table, UsageEventRow.__table__)
_hourly = cast(sa.Table, UsageHourly.__table__)
_daily = cast(sa.Table, UsageDaily.__table__)
_hourly_by_label = cast(sa.Table, UsageHourlyByLabel.__table__)
_daily_by_label = cast(sa.Table, UsageDailyByLabel.__table__)
_label_values = cast(sa.Table, UsageLabelValue.__table__)
# gRPC status code names, so a misspelt status in a filter is an error, not an empty result.
STATUS_NAMES = (
    "OK", "CANCELLED", "UNKNOWN", "INVALID_ARGUMENT", "DEADLINE_EXCEEDED", "NOT_FOUND",
    "ALREADY_EXISTS", "PERMISSION_DENIED", "RESOURCE_EXHAUSTED", "FAILED_PRECONDITION",
    "ABORTED", "OUT_OF_RANGE", "UNIMPLEMENTED", "INTERNAL", "UNAVAILABLE", "DATA_LOSS",
    "UNAUTHENTICATED",
)  # fmt: skip


class UsageQueryError(ValueError):
    """A usage query that cannot be answered as asked (bad group key, page size, range)."""


class InvalidPageToken(UsageQueryError):
    """A page token that is malformed or belongs to a different query."""


# ---------------------------------------------------------------------------------------------
# Writing
#
# The writer runs on the gateway's event loop, so its Python work per event is what recording
# costs a busy gateway, and it keeps that work small:
#
# - Each event becomes one tuple of values the driver binds as they are: the label set's JSON
#   text and hash are worked out once per distinct set, and a time is the text SQLAlchemy
#   would store on SQLite, or the datetime asyncpg takes. SQLAlchemy's per-row parameter
#   processing (JSON, time zones, date formatting) was most of the writer's time.
# - The statements are SQL text, built once per table and row count; each table takes one
#   multi-row INSERT (an upsert for the rollups and label counts) per 100 rows.
# - The events are grouped by their hourly rollup key as they are converted; each group's sums
#   are taken column by column, and the coarser rollups and the label counts are summed from
#   the groups, not from every event again.
#
# What is stored is what SQLAlchemy's typed statements stored, value for value
# (tests/store/test_usage_write.py compares the two on both dialects).


def _utc(value: datetime) -> datetime:
    # Event times are UTC by contract; a naive one is read as UTC rather than dropping a batch.
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def _floor(value: datetime, period: timedelta) -> datetime:
    value = value.replace(minute=0, second=0, microsecond=0)
    return value.replace(hour=0) if period == DAY else value


def _ceil(value: datetime, period: timedelta) -> datetime:
    floor = _floor(value, period)
    return floor if floor == value else floor + period


def _finite(value: float | None) -> float | None:
    return None if value is None or not math.isfinite(value) else float(value)


_Execute = Callable[[str, tuple[Any, ...]], Awaitable[Any]]
"""Runs one statement: `await execute(sql, params)`."""


@dataclass(frozen=True, slots=True)
class _Driver:
    """Everything the writer does differently on SQLite (aiosqlite) and PostgreSQL (asyncpg):
    the bind parameter style, how a time is bound, and how a statement is run. The SQL is
    otherwise the same on both."""

    placeholder: Callable[[int], str]
    """The n-th bind parameter (from 1) of a statement."""
    time: Callable[[datetime], Any]
    """A UTC datetime as the driver binds it."""
    hour: Callable[[Any], Any]
    """A bound time truncated to its hour, bound the same way."""
    day: Callable[[Any], Any]
    """A bound time truncated to its day."""
    executor: Callable[[AsyncConnection], Awaitable[_Execute]]
    """How statements are run in the connection's transaction."""


async def _sqlite_executor(conn: AsyncConnection) -> _Execute:
    # Straight to aiosqlite: one hand-off to its thread per statement, where SQLAlchemy's
    # adapter takes three (cursor, execute, close), each waking both threads. The statements
    # run in the transaction SQLAlchemy began on this connection: sqlite3 opens it at the first
    # INSERT, and SQLAlchemy commits or rolls back the same connection. (They are not in
    # SQLAlchemy's echo log.)
    raw = await conn.get_raw_connection()
    driver = raw.driver_connection
    assert driver is not None  # a checked-out connection always has its driver connection
    execute: _Execute = driver.execute
    return execute


async def _postgresql_executor(conn: AsyncConnection) -> _Execute:
    # asyncpg runs on the event loop itself, so SQLAlchemy's adapter costs no hand-off; and it
    # starts the transaction on the driver connection at the first statement.
    return conn.exec_driver_sql


def _sqlite_time(value: datetime) -> str:
    # SQLAlchemy stores a DATETIME on SQLite as "YYYY-MM-DD HH:MM:SS.ffffff", and UTCDateTime
    # hands it the naive UTC time: that is the UTC ISO form without its "+00:00".
    return value.isoformat(" ", "microseconds")[:26]


_DRIVERS = {
    "sqlite": _Driver(
        placeholder=lambda n: "?",
        time=_sqlite_time,
        # The stored text sorts and truncates like the time it stands for.
        hour=lambda text: text[:13] + ":00:00.000000",
        day=lambda text: text[:10] + " 00:00:00.000000",
        executor=_sqlite_executor,
    ),
    "postgresql": _Driver(
        placeholder=lambda n: f"${n}",
        time=lambda value: value,  # timestamptz takes the aware datetime
        hour=lambda value: value.replace(minute=0, second=0, microsecond=0),
        day=lambda value: value.replace(hour=0, minute=0, second=0, microsecond=0),
        executor=_postgresql_executor,
    ),
}


def _driver(dialect: str) -> _Driver:
    try:
        return _DRIVERS[dialect]
    except KeyError:
        raise NotImplementedError(f"usage writer on {dialect}") from None


@functools.lru_cache(maxsize=4096)
def _label_set(items: tuple[tuple[str, str], ...]) -> tuple[str, str, tuple[tuple[str, str], ...]]:
    """A label set's JSON text as stored, its hash and its pairs in key order, worked out once
    per distinct set: calls repeat a few sets. Keyed by the pairs in the event's own order,
    which is cheaper than sorting them for every event."""
    pairs = tuple(sorted((str(k), str(v)) for k, v in items))
    labels = dict(pairs)
    # json.dumps is what SQLAlchemy's JSON type binds (the engine sets no json_serializer).
    return json.dumps(labels), labels_hash(labels), pairs


# A raw row's values in this order; the indexes name the ones the rollups sum.
_EVENT_COLUMNS = (
    "time", "project", "caller", "model", "method", "labels", "labels_hash", "status",
    *TOKEN_COLUMNS, "latency_ms", "first_chunk_ms", "incomplete", "long_prompt", "batch",
)  # fmt: skip
_TIME, _LABELS = 0, _EVENT_COLUMNS.index("labels")
_TOKENS = [_EVENT_COLUMNS.index(c) for c in TOKEN_COLUMNS]
_LATENCY, _FIRST_CHUNK, _INCOMPLETE = (
    _EVENT_COLUMNS.index(c) for c in ("latency_ms", "first_chunk_ms", "incomplete")
)
# A rollup row's values: its key (the primary key, in index order), the labels, the sums.
_HOURLY_KEY = tuple(c.name for c in _hourly.primary_key.columns)


def _rollup_columns(table: sa.Table) -> tuple[str, ...]:
    return (*(c.name for c in table.primary_key.columns), "labels", *ROLLUP_SUM_COLUMNS)


@dataclass(slots=True)
class _Batch:
    events: list[tuple[Any, ...]]
    hourly: list[tuple[Any, ...]]
    label_values: list[tuple[Any, ...]]


def _summarise(events: Sequence[UsageEvent], driver: _Driver) -> _Batch:
    """The raw rows of `events`, their hourly rollup rows and their label counts."""
    bind_time, hour = driver.time, driver.hour
    rows: list[tuple[Any, ...]] = []
    # hourly key -> [label pairs, the group's rows...]
    groups: dict[tuple[Any, ...], list[Any]] = {}
    for event in events:
        when = event.time
        if when.tzinfo is not UTC:
            when = _utc(when)
        time = bind_time(when)
        labels, digest, pairs = _label_set(tuple(event.labels.items()))
        prompt = int(event.prompt_tokens)
        long_prompt = prompt > LONG_PROMPT_TOKENS
        row = (
            time, event.project, event.caller, event.model, event.method, labels, digest,
            event.status, prompt, int(event.candidates_tokens), int(event.cached_tokens),
            int(event.thoughts_tokens), int(event.tool_use_tokens), int(event.total_tokens),
            # SQLite stores NaN as NULL: one odd timing must not fail the whole batch.
            _finite(event.latency_ms) or 0.0, _finite(event.first_chunk_ms),
            bool(event.incomplete), long_prompt, bool(event.batch),
        )  # fmt: skip
        rows.append(row)
        key = (hour(time), event.project, event.model, event.method, event.caller,
               event.status, long_prompt, bool(event.batch), digest)  # fmt: skip
        group = groups.get(key)
        if group is None:
            groups[key] = [pairs, row]
        else:
            group.append(row)

    hourly: list[tuple[Any, ...]] = []
    seen: dict[tuple[str, str, str], list[Any]] = {}  # (project, key, value) -> [count, last]
    status_at = _HOURLY_KEY.index("status")
    for key in sorted(groups):  # key order: every writer locks rollup rows in one order
        pairs, *members = groups[key]
        columns = list(zip(*members, strict=True))
        first_chunks = [v for v in columns[_FIRST_CHUNK] if v is not None]
        count = len(members)
        hourly.append((
            *key, members[0][_LABELS], count, count if key[status_at] != "OK" else 0,
            sum(columns[_INCOMPLETE]), *(sum(columns[i]) for i in _TOKENS),
            sum(columns[_LATENCY], 0.0), sum(first_chunks, 0.0), len(first_chunks),
        ))  # fmt: skip
        last = max(columns[_TIME])
        for name, value in pairs:
            acc = seen.get((key[1], name, value))
            if acc is None:
                seen[(key[1], name, value)] = [count, last]
            else:
                acc[0] += count
                acc[1] = max(acc[1], last)
    label_values = [(*pair, count, last) for pair, (count, last) in sorted(seen.items())]
    return _Batch(rows, hourly, label_values)


def _coarser(
    fine: Sequence[tuple[Any, ...]], table: sa.Table, floor: Callable[[Any], Any]
) -> list[tuple[Any, ...]]:
    """Rollup rows of `table`, summed from the batch's hourly rows (a handful), with their
    period start truncated by `floor`; sorted like those."""
    key_columns = [c.name for c in table.primary_key.columns]
    picks = [_HOURLY_KEY.index(c) for c in key_columns[1:]]
    sums_at = len(_HOURLY_KEY) + 1  # after the key and the labels
    out: dict[tuple[Any, ...], list[Any]] = {}
    for row in fine:
        key = (floor(row[0]), *(row[i] for i in picks))
        acc = out.get(key)
        if acc is None:
            out[key] = [*key, *row[len(_HOURLY_KEY) :]]
        else:
            for i, value in enumerate(row[sums_at:], start=len(key) + 1):
                acc[i] += value
    return [tuple(out[key]) for key in sorted(out)]


# Every rollup the writer keeps, in the order it upserts them (the same in every replica).
_ROLLUPS = (
    (_hourly, HOUR),
    (_daily, DAY),
    (_hourly_by_label, HOUR),
    (_daily_by_label, DAY),
)


def _quote(name: str) -> str:
    # Quoted on both dialects: "key" is an SQLite keyword, and the names are lowercase.
    return f'"{name}"'


def _conflict(table: sa.Table) -> str:
    """The ON CONFLICT clause that adds a row's counts to the row already stored."""
    t = _quote(table.name)
    if table is _label_values:
        newer = f'excluded."last_seen" > {t}."last_seen"'
        return (
            ' ON CONFLICT ("project", "key", "value") DO UPDATE SET '
            f'"count" = {t}."count" + excluded."count", '
            f'"last_seen" = CASE WHEN {newer} THEN excluded."last_seen" ELSE {t}."last_seen" END'
        )
    keys = ", ".join(_quote(c.name) for c in table.primary_key.columns)
    sums = ", ".join(f"{_quote(c)} = {t}.{_quote(c)} + excluded.{_quote(c)}"
                     for c in ROLLUP_SUM_COLUMNS)  # fmt: skip
    return f" ON CONFLICT ({keys}) DO UPDATE SET {sums}"


# Columns each table is written with, in the order of the writer's tuples.
_COLUMNS: dict[sa.Table, tuple[str, ...]] = {
    _events: _EVENT_COLUMNS,
    **{table: _rollup_columns(table) for table, _ in _ROLLUPS},
    _label_values: ("project", "key", "value", "count", "last_seen"),
}
# Rows per INSERT. Each row count is its own statement text, prepared once per connection and
# kept in the driver's statement cache (sqlite3: 128, SQLAlchemy's asyncpg adapter: 100), so
# the count is capped to keep the variants few. 100 rows of 18 values stay far below the
# bind-parameter caps (32,766 on SQLite >= 3.32, 32,767 on PostgreSQL).
_MAX_ROWS = 100


@functools.cache
def _insert_sql(dialect: str, table: sa.Table, rows: int) -> str:
    """INSERT of `rows` rows into `table` (an upsert for the rollups and label counts)."""
    placeholder = _driver(dialect).placeholder
    columns = _COLUMNS[table]
    width = len(columns)
    values = ", ".join(
        "(" + ", ".join(placeholder(r * width + i + 1) for i in range(width)) + ")"
        for r in range(rows)
    )
    conflict = "" if table is _events else _conflict(table)
    names = ", ".join(_quote(c) for c in columns)
    return f"INSERT INTO {_quote(table.name)} ({names}) VALUES {values}{conflict}"


async def _insert(
    execute: _Execute, dialect: str, table: sa.Table, rows: Sequence[tuple[Any, ...]]
) -> None:
    # One multi-row INSERT per chunk rather than an executemany: sqlite3 steps (and releases
    # the GIL, to take it back from the busy event loop) once per statement, not once per row.
    for start in range(0, len(rows), _MAX_ROWS):
        chunk = rows[start : start + _MAX_ROWS]
        params = tuple(itertools.chain.from_iterable(chunk))
        await execute(_insert_sql(dialect, table, len(chunk)), params)


async def write_usage_batch(conn: AsyncConnection, events: Sequence[UsageEvent]) -> None:
    """Insert `events` and add them to the rollups and label counts, in `conn`'s transaction."""
    if not events:
        return
    dialect = conn.dialect.name
    driver = _driver(dialect)
    batch = _summarise(events, driver)
    execute = await driver.executor(conn)
    await _insert(execute, dialect, _events, batch.events)
    for table, period in _ROLLUPS:
        if table is _hourly:
            rows = batch.hourly
        else:
            rows = _coarser(batch.hourly, table, driver.hour if period == HOUR else driver.day)
        await _insert(execute, dialect, table, rows)
    await _insert(execute, dialect, _label_values, batch.label_values)


_REBUILD_SQL = {
    "postgresql": (
        "date_trunc('hour', time)",
        "date_trunc('day', period_start)",
        "usage_events CROSS JOIN LATERAL jsonb_each_text(usage_events.labels) AS kv",
    ),
    "sqlite": (
        "strftime('%Y-%m-%d %H:00:00.000000', time)",
        "strftime('%Y-%m-%d 00:00:00.000000', period_start)",
        "usage_events, json_each(usage_events.labels) AS kv",
    ),
}


async def rebuild_rollups(conn: AsyncConnection) -> None:
    """Recompute the rollups and label counts from the raw rows, in SQL.

    For loading history in bulk (the benchmark) and for repair: the writer keeps the rollups
    current incrementally. Both dialects run with UTC as their time zone (see engine.py).
    """
    hour, day, label_source = _REBUILD_SQL[conn.dialect.name]
    for table, _ in reversed(_ROLLUPS):
        await conn.execute(table.delete())
    await conn.execute(_label_values.delete())

    dims = ", ".join(c.name for c in _hourly.primary_key.columns if c.name != "period_start")
    tokens = ", ".join(f"sum({c})" for c in TOKEN_COLUMNS)
    await conn.execute(
        sa.text(
            f"INSERT INTO usage_hourly (period_start, {dims}, labels, "
            f"{', '.join(ROLLUP_SUM_COLUMNS)}) "
            f"SELECT {hour}, {dims}, labels, count(*), "
            "sum(CASE WHEN status <> 'OK' THEN 1 ELSE 0 END), "
            f"sum(CASE WHEN incomplete THEN 1 ELSE 0 END), {tokens}, sum(latency_ms), "
            "coalesce(sum(first_chunk_ms), 0), count(first_chunk_ms) "
            f"FROM usage_events GROUP BY {hour}, {dims}, labels"
        )
    )
    # Each other rollup is a coarser sum of one already built.
    for target, source, period in (
        (_daily, _hourly, day),
        (_hourly_by_label, _hourly, "period_start"),
        (_daily_by_label, _daily, "period_start"),
    ):
        dims = ", ".join(c.name for c in target.primary_key.columns if c.name != "period_start")
        await conn.execute(
            sa.text(
                f"INSERT INTO {target.name} (period_start, {dims}, labels, "
                f"{', '.join(ROLLUP_SUM_COLUMNS)}) "
                f"SELECT {period}, {dims}, labels, "
                + ", ".join(f"sum({c})" for c in ROLLUP_SUM_COLUMNS)
                + f" FROM {source.name} GROUP BY {period}, {dims}, labels"
            )
        )
    await conn.execute(
        sa.text(
            "INSERT INTO usage_label_values (project, key, value, count, last_seen) "
            f"SELECT project, kv.key, kv.value, count(*), max(time) FROM {label_source} "
            "GROUP BY project, kv.key, kv.value"
        )
    )


# ---------------------------------------------------------------------------------------------
# Reading


@dataclass(frozen=True, slots=True, kw_only=True)
class UsageSums:
    """Counts, token sums and estimated cost (USD) of a set of calls."""

    request_count: int = 0
    error_count: int = 0
    incomplete_count: int = 0
    prompt_tokens: int = 0
    candidates_tokens: int = 0
    cached_tokens: int = 0
    thoughts_tokens: int = 0
    tool_use_tokens: int = 0
    total_tokens: int = 0
    latency_ms_sum: float = 0.0
    cost_usd: float = 0.0


@dataclass(frozen=True, slots=True, kw_only=True)
class UsageRow(UsageSums):
    """One group: its key values in group_by order, and its bucket when bucketed."""

    group: Mapping[str, str]
    bucket_start: datetime | None = None


@dataclass(frozen=True, slots=True)
class UsagePage:
    rows: list[UsageRow]
    totals: UsageSums
    next_page_token: str


# Measures in the order the queries select them; cost is added in Python.
_MEASURES = (
    "request_count",
    "error_count",
    "incomplete_count",
    *TOKEN_COLUMNS,
    "latency_ms_sum",
)
_N = len(_MEASURES)


@dataclass(frozen=True)
class _Source:
    table: sa.Table
    time: sa.ColumnElement[Any]
    period: timedelta | None  # None: raw rows

    def measures(self) -> list[sa.ColumnElement[Any]]:
        c = self.table.c
        if self.period is None:
            return [
                sa.func.count(),
                sa.func.sum(sa.case((c.status != "OK", 1), else_=0)),
                sa.func.sum(sa.case((c.incomplete, 1), else_=0)),
                *(sa.func.sum(c[name]) for name in TOKEN_COLUMNS),
                sa.func.sum(c.latency_ms),
            ]
        return [sa.func.sum(c[name]) for name in _MEASURES]


_RAW = _Source(_events, _events.c.time, None)
_HOURLY = _Source(_hourly, _hourly.c.period_start, HOUR)
_DAILY = _Source(_daily, _daily.c.period_start, DAY)
_HOURLY_BY_LABEL = _Source(_hourly_by_label, _hourly_by_label.c.period_start, HOUR)
_DAILY_BY_LABEL = _Source(_daily_by_label, _daily_by_label.c.period_start, DAY)
# Fields the by-label rollups keep; a query using any other reads the full rollups.
_BY_LABEL_FIELDS = frozenset({"project", "model", "long_prompt", "batch"})


def _filter_fields(expr: Expr | None) -> set[str]:
    if expr is None or isinstance(expr, Text):
        return set()
    if isinstance(expr, Comparison):
        return {expr.field}
    if isinstance(expr, Not):
        return _filter_fields(expr.operand)
    return set().union(*(_filter_fields(operand) for operand in expr.operands))


def _levels(keys: Sequence[str], expr: Expr | None, bucket: str | None) -> list[_Source]:
    """The sources to read, finest first: raw rows, then rollups as coarse as allowed."""
    fields = {k for k in [*keys, *_filter_fields(expr)] if not k.startswith("labels.")}
    if fields <= _BY_LABEL_FIELDS:
        hourly, daily = _HOURLY_BY_LABEL, _DAILY_BY_LABEL
    else:
        hourly, daily = _HOURLY, _DAILY
    return [_RAW, hourly] if bucket == "hour" else [_RAW, hourly, daily]


def _split(
    lo: datetime | None, hi: datetime | None, levels: Sequence[_Source]
) -> list[tuple[_Source, datetime | None, datetime | None]]:
    """Cut [lo, hi) into parts, each read from the coarsest source whose periods fit whole.

    A part read from a finer source never crosses a boundary of the next coarser period, so
    it lies within one bucket of any coarser granularity.
    """
    if lo is not None and hi is not None and lo >= hi:
        return []
    here, rest = levels[0], levels[1:]
    if not rest:
        return [(here, lo, hi)]
    period = rest[0].period
    assert period is not None
    inner_lo = None if lo is None else _ceil(lo, period)
    inner_hi = None if hi is None else _floor(hi, period)
    if inner_lo is not None and inner_hi is not None and inner_lo > inner_hi:
        return [(here, lo, hi)]
    parts: list[tuple[_Source, datetime | None, datetime | None]] = []
    if lo is not None and inner_lo is not None and lo < inner_lo:
        parts.append((here, lo, inner_lo))
    if hi is not None and inner_hi is not None and inner_hi < hi:
        parts.append((here, inner_hi, hi))
    parts.extend(_split(inner_lo, inner_hi, rest))
    return parts


def _label_key_problem(key: str) -> str | None:
    # The key becomes a JSON path: only keys the label rules accept get that far.
    violations = label_violations({key: ""})
    return violations[0][1] if violations else None


def _check_label_key(key: str, what: str) -> str:
    problem = _label_key_problem(key)
    if problem:
        raise UsageQueryError(f"{what}: {problem}")
    return key


def _group_expr(table: sa.Table, name: str) -> sa.ColumnElement[Any]:
    if name.startswith("labels."):
        return sa.func.coalesce(table.c.labels[name[len("labels.") :]].as_string(), NONE_VALUE)
    return table.c[name]


def _resolver(table: sa.Table) -> Resolver:
    def label(key: str) -> FilterField:
        problem = _label_key_problem(key)
        if problem:
            raise FilterError(f"labels.{key}: {problem}")
        return FilterField(table.c.labels[key].as_string(), "string")

    # The by-label rollups lack method, caller and status; _levels only picks them for filters
    # that do not use those.
    fields = {
        name: FilterField(table.c[name], "string") for name in GROUP_FIELDS if name in table.c
    }
    if "status" in table.c:
        fields["status"] = FilterField(table.c.status, "enum", STATUS_NAMES)
    fields["long_prompt"] = FilterField(table.c.long_prompt, "bool")
    fields["batch"] = FilterField(table.c.batch, "bool")
    return field_resolver(fields, {"labels": label})


def _check_group_by(group_by: Sequence[str]) -> list[str]:
    allowed = f"{', '.join(GROUP_FIELDS)}, labels.<key>"
    keys = list(group_by)
    if len(keys) > MAX_GROUP_KEYS:
        raise UsageQueryError(f"at most {MAX_GROUP_KEYS} group_by keys, got {len(keys)}")
    for key in keys:
        if key in GROUP_FIELDS:
            continue
        if key.startswith("labels.") and not _label_key_problem(key[len("labels.") :]):
            continue
        raise UsageQueryError(f"cannot group by {key!r}: allowed keys are {allowed}")
    if len(set(keys)) != len(keys):
        raise UsageQueryError(f"group_by repeats a key: {', '.join(keys)}")
    return keys


def _aware(value: datetime | None, what: str) -> datetime | None:
    if value is None:
        return None
    if value.tzinfo is None or value.utcoffset() is None:
        raise UsageQueryError(f"{what} must carry a time zone (UTC)")
    return value.astimezone(UTC)


def _page_size(page_size: int) -> int:
    if page_size < 0:
        raise UsageQueryError(f"page_size must not be negative, got {page_size}")
    return min(page_size or DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE)


def _query_hash(parts: Sequence[Any]) -> str:
    text = json.dumps(parts, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _encode_token(offset: int, query: str) -> str:
    return encode_page_token({"o": offset, "q": query})


def _decode_token(token: str, query: str) -> int:
    if not token:
        return 0
    data = decode_page_token(token)
    if data is None or "o" not in data or "q" not in data:
        raise InvalidPageToken("page_token is not a token this service issued")
    offset, owner = data["o"], data["q"]
    if not isinstance(offset, int) or isinstance(offset, bool) or offset < 0:
        raise InvalidPageToken("page_token is not a token this service issued")
    if owner != query:
        raise InvalidPageToken("page_token belongs to a different query; start from page one")
    return offset


async def query_usage(
    store: Store,
    *,
    project: str | None,
    filter_text: str = "",
    start: datetime | None = None,
    end: datetime | None = None,
    group_by: Sequence[str] = (),
    bucket: Literal["hour", "day"] | None = None,
    prices: PriceTable,
    page_size: int = 0,
    page_token: str = "",
) -> UsagePage:
    """Usage in [start, end) (either end open), grouped and bucketed, priced at query time.

    `project=None` covers all projects. Raises UsageQueryError (bad group key, bucket, time,
    page size), InvalidPageToken, or the filter module's FilterError; all are ValueErrors.
    """
    keys = _check_group_by(group_by)
    if bucket not in (None, "hour", "day"):
        raise UsageQueryError(f"bucket must be hour, day or unset, got {bucket!r}")
    start, end = _aware(start, "start"), _aware(end, "end")
    size = _page_size(page_size)
    query_id = _query_hash([project, filter_text, start, end, keys, bucket])
    offset = _decode_token(page_token, query_id)
    expr = parse_filter(filter_text)

    bucket_period = {"hour": HOUR, "day": DAY, None: None}[bucket]
    parts = _split(start, end, _levels(keys, expr, bucket))

    # (bucket, group values, model, long_prompt, batch) -> measures
    fine: dict[tuple[Any, ...], list[float]] = {}
    async with store.connect() as conn:
        for source, lo, hi in parts:
            await _read_part(conn, source, lo, hi, project, expr, keys, bucket_period, fine)

    coarse: dict[tuple[Any, ...], list[float]] = {}
    for (bucket_start, values, model, long_prompt, batch), sums in fine.items():
        tokens = TokenSums(
            prompt=int(sums[3]),
            candidates=int(sums[4]),
            cached=int(sums[5]),
            thoughts=int(sums[6]),
            tool_use=int(sums[7]),
        )
        cost = prices.cost(model, bool(long_prompt), tokens, batch=bool(batch))
        acc = coarse.setdefault((bucket_start, values), [0] * _N + [0.0])
        for i in range(_N):
            acc[i] += sums[i]
        acc[_N] += cost

    ordered = sorted(
        coarse.items(),
        key=lambda item: (
            item[0][0] or datetime.min.replace(tzinfo=UTC),
            -item[1][_N],
            item[0][1],
        ),
    )
    totals = [0] * _N + [0.0]
    for _, sums in ordered:
        for i in range(_N + 1):
            totals[i] += sums[i]
    page = ordered[offset : offset + size]
    rows = [
        UsageRow(
            group=dict(zip(keys, values, strict=True)),
            bucket_start=bucket_start,
            **_sums_fields(sums),
        )
        for (bucket_start, values), sums in page
    ]
    more = offset + size < len(ordered)
    return UsagePage(
        rows=rows,
        totals=UsageSums(**_sums_fields(totals)),
        next_page_token=_encode_token(offset + size, query_id) if more else "",
    )


def _sums_fields(sums: Sequence[float]) -> dict[str, Any]:
    fields: dict[str, Any] = {
        name: int(value) for name, value in zip(_MEASURES[:-1], sums, strict=False)
    }
    fields["latency_ms_sum"] = float(sums[_N - 1])
    fields["cost_usd"] = float(sums[_N])
    return fields


async def _read_part(
    conn: AsyncConnection,
    source: _Source,
    lo: datetime | None,
    hi: datetime | None,
    project: str | None,
    expr: Any,
    keys: Sequence[str],
    bucket_period: timedelta | None,
    into: dict[tuple[Any, ...], list[float]],
) -> None:
    table = source.table
    conditions: list[sa.ColumnElement[bool]] = []
    if lo is not None:
        conditions.append(source.time >= lo)
    if hi is not None:
        conditions.append(source.time < hi)
    if project is not None:
        conditions.append(table.c.project == project)
    if expr is not None:
        conditions.append(compile_filter(expr, _resolver(table)))

    dims: list[sa.Label[Any]] = []
    constant_bucket: datetime | None = None
    if bucket_period is not None:
        if source.period == bucket_period:
            dims.append(source.time.label("bucket"))
        else:
            # A finer part lies within one bucket (see _split): its bucket is known here.
            assert lo is not None
            constant_bucket = _floor(lo, bucket_period)
    dims.extend(_group_expr(table, key).label(f"g{i}") for i, key in enumerate(keys))
    dims.append(table.c.model.label("m"))
    dims.append(table.c.long_prompt.label("lp"))
    dims.append(table.c.batch.label("b"))

    stmt = sa.select(*dims, *source.measures()).where(*conditions).group_by(*dims)
    result = await conn.execute(stmt)
    has_bucket = constant_bucket is None and bucket_period is not None
    n_keys = len(keys)
    for row in result:
        i = 0
        if has_bucket:
            bucket_start = row[0]
            i = 1
        else:
            bucket_start = constant_bucket
        values = tuple(str(v) for v in row[i : i + n_keys])
        model, long_prompt, batch = (
            row[i + n_keys],
            bool(row[i + n_keys + 1]),
            bool(row[i + n_keys + 2]),
        )
        measures = row[i + n_keys + 3 :]
        sub_group = (bucket_start, values, model, long_prompt, batch)
        acc = into.get(sub_group)
        if acc is None:
            acc = into[sub_group] = [0] * (_N - 1) + [0.0]
        for j in range(_N - 1):
            acc[j] += int(measures[j] or 0)
        acc[_N - 1] += float(measures[_N - 1] or 0.0)


# ---------------------------------------------------------------------------------------------
# Label pickers


@dataclass(frozen=True, slots=True)
class LabelCount:
    """A label key (or a value of one key): calls that carried it, and when last."""

    name: str
    count: int
    last_seen: datetime


@dataclass(frozen=True, slots=True)
class LabelPage:
    items: list[LabelCount]
    next_page_token: str


async def _label_page(
    store: Store,
    column: sa.ColumnElement[str],
    conditions: list[sa.ColumnElement[bool]],
    query_id: str,
    page_size: int,
    page_token: str,
) -> LabelPage:
    size = _page_size(page_size)
    offset = _decode_token(page_token, query_id)
    count = sa.func.sum(_label_values.c.count).label("n")
    stmt = (
        sa.select(column, count, sa.func.max(_label_values.c.last_seen).label("last_seen"))
        .where(*conditions)
        .group_by(column)
        .order_by(count.desc(), column)
        .offset(offset)
        .limit(size + 1)
    )
    async with store.connect() as conn:
        result = (await conn.execute(stmt)).all()
    items = [LabelCount(name=name, count=int(n), last_seen=last) for name, n, last in result[:size]]
    more = len(result) > size
    return LabelPage(items, _encode_token(offset + size, query_id) if more else "")


async def list_label_keys(
    store: Store,
    project: str | None,
    prefix: str = "",
    page_size: int = 0,
    page_token: str = "",
) -> LabelPage:
    """Label keys seen in `project` (None: all projects), most used first."""
    conditions: list[sa.ColumnElement[bool]] = []
    if project is not None:
        conditions.append(_label_values.c.project == project)
    if prefix:
        conditions.append(_label_values.c.key.startswith(prefix, autoescape=True))
    query_id = _query_hash(["keys", project, prefix])
    return await _label_page(
        store, _label_values.c.key, conditions, query_id, page_size, page_token
    )


async def list_label_values(
    store: Store,
    project: str | None,
    key: str,
    prefix: str = "",
    page_size: int = 0,
    page_token: str = "",
) -> LabelPage:
    """Values seen for label `key` in `project` (None: all projects), most used first."""
    _check_label_key(key, "key")
    conditions = [_label_values.c.key == key]
    if project is not None:
        conditions.append(_label_values.c.project == project)
    if prefix:
        conditions.append(_label_values.c.value.startswith(prefix, autoescape=True))
    query_id = _query_hash(["values", project, key, prefix])
    return await _label_page(
        store, _label_values.c.value, conditions, query_id, page_size, page_token
    )
