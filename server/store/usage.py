"""Usage: the recorder's batch writer and the queries behind the usage service.

Writing: each batch inserts its raw rows and, in the same transaction, adds its sums to the
hourly and daily rollups and its label pairs to `usage_label_values` with
INSERT ... ON CONFLICT DO UPDATE (col = col + excluded.col), so replicas writing at once keep
the rollups exact. Rows are upserted in key order, so two writers lock them in the same order.

Reading: a range [start, end) is cut into the raw partial hours at its edges, the hourly rows
of the partial days next to them and the daily rows in between (coarsest first, as far as
the requested bucket allows). Every part groups by the requested keys plus model and
long_prompt; each (model, tier) sub-group is priced, then merged into the requested groups.
The result is exact for any range while a long range reads a few thousand rollup rows.
"""

from __future__ import annotations

import base64
import binascii
import functools
import hashlib
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any, Literal, cast

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
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


@functools.lru_cache(maxsize=4096)
def _label_set(items: tuple[tuple[str, str], ...]) -> tuple[dict[str, str], str]:
    """A label set and its hash, worked out once per distinct set: calls repeat a few sets,
    and hashing the canonical JSON of every event was a fifth of the writer's time.

    The dict is shared by all rows of that set; rows are only read, never changed.
    """
    labels = dict(items)
    return labels, labels_hash(labels)


def _event_row(event: UsageEvent) -> dict[str, Any]:
    labels, digest = _label_set(tuple(sorted((str(k), str(v)) for k, v in event.labels.items())))
    prompt = int(event.prompt_tokens)
    return {
        "time": _utc(event.time),
        "project": event.project,
        "caller": event.caller,
        "model": event.model,
        "method": event.method,
        "labels": labels,
        "labels_hash": digest,
        "status": event.status,
        "prompt_tokens": prompt,
        "candidates_tokens": int(event.candidates_tokens),
        "cached_tokens": int(event.cached_tokens),
        "thoughts_tokens": int(event.thoughts_tokens),
        "tool_use_tokens": int(event.tool_use_tokens),
        "total_tokens": int(event.total_tokens),
        # SQLite stores NaN as NULL: one odd timing must not fail the whole batch.
        "latency_ms": _finite(event.latency_ms) or 0.0,
        "first_chunk_ms": _finite(event.first_chunk_ms),
        "incomplete": bool(event.incomplete),
        "long_prompt": prompt > LONG_PROMPT_TOKENS,
    }


def _rollup_rows(
    rows: Sequence[dict[str, Any]], period: timedelta, key_columns: Sequence[str]
) -> list[dict[str, Any]]:
    """The batch summed per rollup key; sorted, so every writer locks rows in one order."""
    dimensions = [c for c in key_columns if c != "period_start"]
    sums: dict[tuple[Any, ...], dict[str, Any]] = {}
    for row in rows:
        start = _floor(row["time"], period)
        key = (start, *(row[c] for c in dimensions))
        acc = sums.get(key)
        if acc is None:
            acc = {c: row[c] for c in dimensions}
            acc["period_start"] = start
            acc["labels"] = row["labels"]
            acc.update(dict.fromkeys(ROLLUP_SUM_COLUMNS, 0))
            acc["latency_ms_sum"] = 0.0
            acc["first_chunk_ms_sum"] = 0.0
            sums[key] = acc
        acc["request_count"] += 1
        acc["error_count"] += row["status"] != "OK"
        acc["incomplete_count"] += row["incomplete"]
        for column in TOKEN_COLUMNS:
            acc[column] += row[column]
        acc["latency_ms_sum"] += row["latency_ms"]
        if row["first_chunk_ms"] is not None:
            acc["first_chunk_ms_sum"] += row["first_chunk_ms"]
            acc["first_chunk_count"] += 1
    return [sums[key] for key in sorted(sums)]


def _coarser(
    sums: Sequence[dict[str, Any]], period: timedelta, key_columns: Sequence[str]
) -> list[dict[str, Any]]:
    """Rollup rows for a coarser period or key, summed from finer rollup rows (a batch has
    a handful), instead of another pass over every event; sorted like `_rollup_rows`."""
    dimensions = [c for c in key_columns if c != "period_start"]
    out: dict[tuple[Any, ...], dict[str, Any]] = {}
    for fine in sums:
        start = _floor(fine["period_start"], period)
        key = (start, *(fine[c] for c in dimensions))
        acc = out.get(key)
        if acc is None:
            acc = {c: fine[c] for c in dimensions}
            acc["period_start"] = start
            acc["labels"] = fine["labels"]
            acc.update(dict.fromkeys(ROLLUP_SUM_COLUMNS, 0))
            out[key] = acc
        for column in ROLLUP_SUM_COLUMNS:
            acc[column] += fine[column]
    return [out[key] for key in sorted(out)]


def _label_rows(rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    seen: dict[tuple[str, str, str], dict[str, Any]] = {}
    for row in rows:
        for key, value in row["labels"].items():
            acc = seen.setdefault(
                (row["project"], key, value),
                {
                    "project": row["project"],
                    "key": key,
                    "value": value,
                    "count": 0,
                    "last_seen": row["time"],
                },
            )
            acc["count"] += 1
            acc["last_seen"] = max(acc["last_seen"], row["time"])
    return [seen[key] for key in sorted(seen)]


def _insert(dialect: str, table: sa.Table) -> Any:
    if dialect == "postgresql":
        return postgresql.insert(table)
    if dialect == "sqlite":
        return sqlite.insert(table)
    raise NotImplementedError(f"upsert on {dialect}")


# Each upsert is built once per dialect and table and run as an executemany with the rows as
# parameters. One statement object is compiled once and then found in SQLAlchemy's cache; a
# new `.values(rows)` statement with its own `excluded` alias was compiled on every batch,
# which was most of the writer's time. executemany also needs no chunking for the drivers'
# bind-parameter caps.
@functools.cache
def _rollup_upsert(dialect: str, table: sa.Table) -> Any:
    stmt = _insert(dialect, table)
    return stmt.on_conflict_do_update(
        index_elements=[c.name for c in table.primary_key.columns],
        set_={c: table.c[c] + stmt.excluded[c] for c in ROLLUP_SUM_COLUMNS},
    )


@functools.cache
def _label_values_upsert(dialect: str) -> Any:
    table = _label_values
    stmt = _insert(dialect, table)
    newer = stmt.excluded.last_seen > table.c.last_seen
    return stmt.on_conflict_do_update(
        index_elements=["project", "key", "value"],
        set_={
            "count": table.c.count + stmt.excluded.count,
            "last_seen": sa.case((newer, stmt.excluded.last_seen), else_=table.c.last_seen),
        },
    )


async def _upsert_rollup(
    conn: AsyncConnection, table: sa.Table, rows: list[dict[str, Any]]
) -> None:
    if rows:  # sorted by key: every writer locks rows in the same order
        await conn.execute(_rollup_upsert(conn.dialect.name, table), rows)


async def _upsert_label_values(conn: AsyncConnection, rows: list[dict[str, Any]]) -> None:
    if rows:
        await conn.execute(_label_values_upsert(conn.dialect.name), rows)


# Every rollup the writer keeps, in the order it upserts them (the same in every replica).
_ROLLUPS = (
    (_hourly, HOUR),
    (_daily, DAY),
    (_hourly_by_label, HOUR),
    (_daily_by_label, DAY),
)
# Each rollup's key; the first rollup's is the finest, and every other one is part of it.
_ROLLUP_KEYS = {table: [c.name for c in table.primary_key.columns] for table, _ in _ROLLUPS}


async def write_usage_batch(conn: AsyncConnection, events: Sequence[UsageEvent]) -> None:
    """Insert `events` and add them to the rollups and label counts, in `conn`'s transaction."""
    if not events:
        return
    rows = [_event_row(event) for event in events]
    await conn.execute(sa.insert(_events), rows)
    finest = _rollup_rows(rows, HOUR, _ROLLUP_KEYS[_hourly])
    for table, period in _ROLLUPS:
        sums = finest if table is _hourly else _coarser(finest, period, _ROLLUP_KEYS[table])
        await _upsert_rollup(conn, table, sums)
    await _upsert_label_values(conn, _label_rows(rows))


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
_BY_LABEL_FIELDS = frozenset({"project", "model", "long_prompt"})


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
    raw = json.dumps({"o": offset, "q": query}, separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _decode_token(token: str, query: str) -> int:
    if not token:
        return 0
    try:
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
        data = json.loads(raw)
        offset, owner = data["o"], data["q"]
    except (binascii.Error, ValueError, TypeError, KeyError):
        raise InvalidPageToken("page_token is not a token this service issued") from None
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

    # (bucket, group values, model, long_prompt) -> measures
    fine: dict[tuple[Any, ...], list[float]] = {}
    async with store.connect() as conn:
        for source, lo, hi in parts:
            await _read_part(conn, source, lo, hi, project, expr, keys, bucket_period, fine)

    coarse: dict[tuple[Any, ...], list[float]] = {}
    for (bucket_start, values, model, long_prompt), sums in fine.items():
        tokens = TokenSums(
            prompt=int(sums[3]),
            candidates=int(sums[4]),
            cached=int(sums[5]),
            thoughts=int(sums[6]),
            tool_use=int(sums[7]),
        )
        cost = prices.cost(model, bool(long_prompt), tokens)
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
        model, long_prompt = row[i + n_keys], bool(row[i + n_keys + 1])
        measures = row[i + n_keys + 2 :]
        acc = into.get((bucket_start, values, model, long_prompt))
        if acc is None:
            acc = into[(bucket_start, values, model, long_prompt)] = [0] * (_N - 1) + [0.0]
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
