"""The usage writer stores what SQLAlchemy's typed statements store, value for value.

`write_usage_batch` binds pre-converted values through plain SQL (JSON text, SQLite's date
text, multi-row upserts). Here the same events are also written the plain way, with
`sa.insert` on the models' typed columns and the sums worked out in Python, and every table is
compared as the driver reads it back (on SQLite with each value's storage class), so a
difference in time format, JSON text, number type or sum shows.
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
import sqlalchemy as sa

from gemini_gateway.server.pricing import LONG_PROMPT_TOKENS
from gemini_gateway.server.recorder import UsageEvent
from gemini_gateway.server.store import Store
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
from gemini_gateway.server.store.usage import write_usage_batch
from tests.store.conftest import clear
from tests.store.support import T0, event

ROLLUPS = {UsageHourly: "hour", UsageDaily: "day", UsageHourlyByLabel: "hour",
           UsageDailyByLabel: "day"}  # fmt: skip
TABLES = [UsageEventRow, *ROLLUPS, UsageLabelValue]


def varied_events(count: int = 230, seed: int = 7) -> list[UsageEvent]:
    """Events over ~5 days in no time order: more than 100 raw rows and hourly rollup rows
    (so statements are split), label sets in any key order and with non-ASCII values, naive
    and non-UTC times, times on a whole second, NaN and infinite timings, errors, streams,
    long prompts. Timings are multiples of 1/8, so their sums are exact in any order."""
    rng = random.Random(seed)
    label_sets = [{}, {"team": "search", "env": "prod"}, {"env": "prod", "team": "search"},
                  {"team": "équipe ☃", "app": "a"}, {"b": "2", "a": "1", "c": ""}]  # fmt: skip
    zones = [UTC, timezone(timedelta(hours=2)), timezone(timedelta(hours=-7, minutes=-30))]
    events = []
    for i in range(count):
        when = T0 + timedelta(minutes=rng.randrange(5 * 24 * 60), seconds=rng.randrange(60))
        if i % 3:
            when += timedelta(microseconds=rng.randrange(1, 1_000_000))
        when = when.astimezone(zones[i % 3])
        if i % 11 == 0:
            when = when.astimezone(UTC).replace(tzinfo=None)  # naive: read as UTC
        streaming = i % 4 == 0
        batch = not streaming and i % 7 == 0  # a Batch API request
        latency = [rng.randrange(8_000) / 8, math.nan, math.inf][0 if i % 13 else 1 + i % 2]
        first_chunk = rng.randrange(800) / 8 if streaming else None
        if streaming and i % 17 == 0:
            first_chunk = math.nan
        events.append(
            event(
                time=when,
                project=rng.choice(["p1", "p2"]),
                caller=rng.choice(["alice", "bob"]),
                model=rng.choice(["models/gemini-2.5-flash", "gemini-2.5-pro"]),
                method=(
                    "StreamGenerateContent"
                    if streaming
                    else "BatchGenerateContent"
                    if batch
                    else "GenerateContent"
                ),
                labels=rng.choice(label_sets),
                status=rng.choice(["OK", "OK", "OK", "RESOURCE_EXHAUSTED", "CANCELLED"]),
                prompt_tokens=rng.choice([0, 17, LONG_PROMPT_TOKENS, LONG_PROMPT_TOKENS + 1]),
                candidates_tokens=rng.randrange(3_000),
                cached_tokens=rng.randrange(10),
                thoughts_tokens=rng.randrange(500),
                tool_use_tokens=rng.randrange(5),
                total_tokens=rng.randrange(10_000),
                latency_ms=latency,
                first_chunk_ms=first_chunk,
                incomplete=streaming and i % 3 == 0,
                batch=batch,
            )
        )
    return events


def _finite(value: float | None) -> float | None:
    return None if value is None or not math.isfinite(value) else value


def _floor(value: datetime, period: str) -> datetime:
    value = value.replace(minute=0, second=0, microsecond=0)
    return value.replace(hour=0) if period == "day" else value


def expected_rows(events: Sequence[UsageEvent]) -> dict[Any, list[dict[str, Any]]]:
    """Every table's rows after writing `events`, worked out one event at a time."""
    raw = []
    for e in events:
        when = e.time if e.time.tzinfo else e.time.replace(tzinfo=UTC)
        labels = dict(sorted(e.labels.items()))
        raw.append({
            "time": when.astimezone(UTC), "project": e.project, "caller": e.caller,
            "model": e.model, "method": e.method, "labels": labels,
            "labels_hash": labels_hash(labels), "status": e.status,
            **{c: getattr(e, c) for c in TOKEN_COLUMNS},
            "latency_ms": _finite(e.latency_ms) or 0.0,
            "first_chunk_ms": _finite(e.first_chunk_ms),
            "incomplete": e.incomplete, "long_prompt": e.prompt_tokens > LONG_PROMPT_TOKENS,
            "batch": e.batch,
        })  # fmt: skip
    tables: dict[Any, list[dict[str, Any]]] = {UsageEventRow: raw}
    for model, period in ROLLUPS.items():
        sums: dict[tuple[Any, ...], dict[str, Any]] = {}
        for row in raw:
            start = _floor(row["time"], period)
            key = (start, *(row[c] for c in model.key_columns[1:]))
            acc = sums.setdefault(key, {
                "period_start": start, **{c: row[c] for c in model.key_columns[1:]},
                "labels": row["labels"], **dict.fromkeys(ROLLUP_SUM_COLUMNS, 0),
                "latency_ms_sum": 0.0, "first_chunk_ms_sum": 0.0,
            })  # fmt: skip
            acc["request_count"] += 1
            acc["error_count"] += row["status"] != "OK"
            acc["incomplete_count"] += row["incomplete"]
            for column in TOKEN_COLUMNS:
                acc[column] += row[column]
            acc["latency_ms_sum"] += row["latency_ms"]
            if row["first_chunk_ms"] is not None:
                acc["first_chunk_ms_sum"] += row["first_chunk_ms"]
                acc["first_chunk_count"] += 1
        tables[model] = list(sums.values())
    seen: dict[tuple[str, str, str], dict[str, Any]] = {}
    for row in raw:
        for key, value in row["labels"].items():
            acc = seen.setdefault((row["project"], key, value), {
                "project": row["project"], "key": key, "value": value, "count": 0,
                "last_seen": row["time"],
            })  # fmt: skip
            acc["count"] += 1
            acc["last_seen"] = max(acc["last_seen"], row["time"])
    tables[UsageLabelValue] = list(seen.values())
    return tables


async def stored(store: Store) -> dict[str, list[tuple[Any, ...]]]:
    """Every table as the driver reads it back; on SQLite also each value's storage class."""
    out = {}
    async with store.connect() as conn:
        for model in TABLES:
            table = model.__table__
            columns = [f'"{c.name}"' for c in table.columns if c.name != "id"]
            if conn.dialect.name == "sqlite":
                columns += [f'typeof("{c.name}")' for c in table.columns if c.name != "id"]
            order = "id" if "id" in table.c else ", ".join(c.name for c in table.primary_key)
            sql = f"SELECT {', '.join(columns)} FROM {table.name} ORDER BY {order}"
            out[table.name] = [tuple(row) for row in await conn.exec_driver_sql(sql)]
    return out


@pytest.mark.parametrize("batch", [230, 7], ids=["one batch", "batches of 7"])
async def test_the_writer_stores_what_typed_statements_store(store: Store, batch: int) -> None:
    events = varied_events()
    for start in range(0, len(events), batch):
        async with store.begin() as conn:
            await write_usage_batch(conn, events[start : start + batch])
    written = await stored(store)

    await clear(store)
    async with store.begin() as conn:
        for model, rows in expected_rows(events).items():
            await conn.execute(sa.insert(model.__table__), rows)
    want = await stored(store)

    assert {name: len(rows) for name, rows in written.items()} == {
        name: len(rows) for name, rows in want.items()
    }
    assert len(want["usage_hourly"]) > 100  # the upserts were split too
    for name in want:
        assert written[name] == want[name], name


async def test_an_empty_batch_writes_nothing(store: Store) -> None:
    async with store.begin() as conn:
        await write_usage_batch(conn, [])
    assert all(rows == [] for rows in (await stored(store)).values())


async def test_label_sets_in_any_key_order_are_one_set(store: Store) -> None:
    events = [event(labels={"a": "1", "b": "2"}), event(labels={"b": "2", "a": "1"})]
    async with store.begin() as conn:
        await write_usage_batch(conn, events)
    async with store.connect() as conn:
        hashes = (await conn.execute(sa.select(UsageEventRow.labels_hash))).scalars().all()
        hourly = (await conn.execute(sa.select(UsageHourly.request_count))).scalars().all()
    assert len(set(hashes)) == 1
    assert hourly == [2]
