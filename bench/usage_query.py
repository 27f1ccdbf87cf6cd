"""Benchmark: QueryUsage over a large synthetic history, on SQLite and PostgreSQL.

    python -m bench.usage_query [--rows 1000000] [--days 30] [--runs 50]
                                [--postgres postgresql://postgres@127.0.0.1:5432/test]

Loads `--rows` usage events spread over `--days` days into a fresh database (a temporary
SQLite file; with --postgres, a scratch database `gw_bench_<random>` created through that
server and dropped afterwards), builds the rollups in SQL, then times `query_usage` grouped
by one label key and by model, and prints p50/p95 against the 100 ms target.

The data looks like a few teams' traffic: 3 projects, 6 callers each tied to one team,
10 models x 2 methods, label sets {team, env} from 4 teams x 3 envs (a tenth unlabelled),
about 4% errors and some long prompts on the pro models.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import sqlalchemy as sa

from bench.stats import percentile
from bench.stores import postgres_url, sqlite_url
from gemini_gateway.server.pricing import LONG_PROMPT_TOKENS, PriceTable
from gemini_gateway.server.store import Store, open_store
from gemini_gateway.server.store.models import canonical_labels, labels_hash
from gemini_gateway.server.store.usage import query_usage, rebuild_rollups

TARGET_P95_MS = 100.0
END = datetime(2026, 3, 31, tzinfo=UTC)

MODELS = [
    "models/gemini-2.5-pro", "models/gemini-2.5-flash", "models/gemini-2.5-flash-lite",
    "models/gemini-2.0-flash", "models/gemini-2.0-flash-lite", "models/gemini-3-pro-preview",
    "models/gemini-3-flash-preview", "models/gemini-3.1-pro-preview",
    "models/gemini-3.1-flash-lite-preview", "tunedModels/support-bot-v2",
]  # fmt: skip
METHODS = ["GenerateContent", "StreamGenerateContent"]
TEAMS = ["search", "ads", "support", "research"]
ENVS = ["prod", "staging", "dev"]
# (caller, project, team): a caller is one application of one team.
CALLERS = [
    ("svc-search@p", "acme-prod", "search"),
    ("svc-ads@p", "acme-prod", "ads"),
    ("svc-support@p", "acme-prod", "support"),
    ("ana@acme.com", "acme-research", "research"),
    ("bo@acme.com", "acme-research", "research"),
    ("ci-bot@acme.com", "acme-staging", "support"),
]
STATUSES = [("OK", 960), ("RESOURCE_EXHAUSTED", 20), ("INVALID_ARGUMENT", 10),
            ("UNAVAILABLE", 5), ("DEADLINE_EXCEEDED", 5)]  # fmt: skip

EVENT_COLUMNS = [
    "time", "project", "caller", "model", "method", "labels", "labels_hash", "status",
    "prompt_tokens", "candidates_tokens", "cached_tokens", "thoughts_tokens", "tool_use_tokens",
    "total_tokens", "latency_ms", "first_chunk_ms", "incomplete", "long_prompt",
]  # fmt: skip


def synthetic_rows(count: int, days: int, seed: int = 7) -> Iterator[tuple[Any, ...]]:
    """Rows in EVENT_COLUMNS order; labels as canonical JSON text."""
    rng = random.Random(seed)
    start = END - timedelta(days=days)
    span_us = days * 86_400 * 1_000_000
    label_sets: dict[tuple[str, str | None], tuple[str, str]] = {}
    for team in TEAMS:
        for env in [*ENVS, None]:
            labels = {"team": team, **({"env": env} if env else {})}
            label_sets[(team, env)] = (canonical_labels(labels), labels_hash(labels))
    unlabelled = (canonical_labels({}), labels_hash({}))
    statuses = [s for s, _ in STATUSES]
    status_weights = [w for _, w in STATUSES]
    for _ in range(count):
        caller, project, team = rng.choice(CALLERS)
        model = rng.choice(MODELS)
        method = rng.choice(METHODS)
        if rng.random() < 0.1:
            labels_text, digest = unlabelled
        else:
            env = rng.choices(ENVS, weights=(6, 3, 1))[0]
            labels_text, digest = label_sets[(team, env)]
        status = rng.choices(statuses, weights=status_weights)[0]
        ok = status == "OK"
        long_prompt = "pro" in model and rng.random() < 0.02
        prompt = rng.randint(200_001, 900_000) if long_prompt else rng.randint(20, 20_000)
        cached = prompt // 2 if rng.random() < 0.2 else 0
        candidates = rng.randint(1, 2_000) if ok else 0
        thoughts = rng.randint(0, 3_000) if ok and "pro" in model else 0
        tool_use = rng.randint(0, 500) if rng.random() < 0.1 else 0
        stream = method == "StreamGenerateContent"
        latency = rng.uniform(200, 20_000) if ok else rng.uniform(5, 300)
        yield (
            start + timedelta(microseconds=rng.randrange(span_us)),
            project, caller, model, method, labels_text, digest, status,
            prompt, candidates, cached, thoughts, tool_use,
            prompt + candidates + thoughts + tool_use,
            latency, rng.uniform(100, 2_000) if stream and ok else None,
            stream and ok and rng.random() < 0.01, prompt > LONG_PROMPT_TOKENS,
        )  # fmt: skip


async def load(store: Store, rows: int, days: int) -> float:
    """Bulk-load the raw rows, then compute the rollups in SQL; returns seconds taken."""
    started = time.perf_counter()
    chunk: list[tuple[Any, ...]] = []
    async with store.begin() as conn:
        raw = (await conn.get_raw_connection()).driver_connection
        for row in synthetic_rows(rows, days):
            chunk.append(row)
            if len(chunk) == 50_000:
                await _insert(store.dialect, conn, raw, chunk)
                chunk = []
        if chunk:
            await _insert(store.dialect, conn, raw, chunk)
        await rebuild_rollups(conn)
    async with store.begin() as conn:
        await conn.exec_driver_sql("ANALYZE")
    return time.perf_counter() - started


async def _insert(dialect: str, conn: Any, raw: Any, rows: list[tuple[Any, ...]]) -> None:
    if dialect == "postgresql":
        # COPY: the fastest way in; jsonb takes the JSON text as is.
        await raw.copy_records_to_table("usage_events", records=rows, columns=EVENT_COLUMNS)
        return
    # SQLite keeps times as naive UTC text in the format the UTCDateTime type reads back.
    stamp = "%Y-%m-%d %H:%M:%S.%f"
    values = [(r[0].strftime(stamp), *r[1:]) for r in rows]
    marks = ", ".join("?" for _ in EVENT_COLUMNS)
    await conn.exec_driver_sql(
        f"INSERT INTO usage_events ({', '.join(EVENT_COLUMNS)}) VALUES ({marks})", values
    )


@dataclass(frozen=True)
class Case:
    name: str
    start: datetime | None
    end: datetime | None
    project: str | None = None
    group_by: tuple[str, ...] = ("labels.team", "model")
    target: bool = True  # counts for the exit status


def cases(days: int) -> list[Case]:
    first = END - timedelta(days=days)
    odd_start = first + timedelta(hours=5, minutes=17, seconds=3)
    odd_end = END - timedelta(hours=2, minutes=41, seconds=59)
    return [
        Case("whole range, all projects", None, None),
        Case("non-aligned range, all projects", odd_start, odd_end),
        Case("non-aligned range, one project", odd_start, odd_end, "acme-prod"),
        # Grouping by caller needs the full rollups: shown for comparison, not the target query.
        Case(
            "non-aligned range, all projects, by labels.team + caller",
            odd_start,
            odd_end,
            group_by=("labels.team", "caller"),
            target=False,
        ),
    ]


async def time_case(store: Store, prices: PriceTable, case: Case, runs: int) -> list[float]:
    samples = []
    for i in range(runs + 3):
        started = time.perf_counter()
        page = await query_usage(
            store,
            project=case.project,
            filter_text="",
            start=case.start,
            end=case.end,
            group_by=list(case.group_by),
            bucket=None,
            prices=prices,
            page_size=1000,
            page_token="",
        )
        elapsed = (time.perf_counter() - started) * 1000
        if i >= 3:  # the first runs warm the caches
            samples.append(elapsed)
        assert page.rows, "the benchmark query found nothing"
    return samples


async def table_sizes(store: Store) -> dict[str, int]:
    sizes = {}
    async with store.connect() as conn:
        for table in (
            "usage_events", "usage_hourly", "usage_daily", "usage_hourly_by_label",
            "usage_daily_by_label",
        ):  # fmt: skip
            sizes[table] = int(
                (await conn.execute(sa.text(f"SELECT count(*) FROM {table}"))).scalar() or 0
            )
    return sizes


async def run_one(
    label: str, url: str, rows: int, days: int, runs: int, prices: PriceTable
) -> list[list[str]]:
    store = await open_store(url)
    try:
        seconds = await load(store, rows, days)
        sizes = await table_sizes(store)
        print(
            f"{label}: loaded {sizes['usage_events']:,} events in {seconds:.1f} s; rollup rows: "
            f"{sizes['usage_hourly']:,} hourly, {sizes['usage_daily']:,} daily, "
            f"{sizes['usage_hourly_by_label']:,} hourly by label, "
            f"{sizes['usage_daily_by_label']:,} daily by label",
            file=sys.stderr,
        )
        out = []
        for case in cases(days):
            samples = await time_case(store, prices, case, runs)
            p50, p95 = percentile(samples, 50), percentile(samples, 95)
            met = "met" if p95 <= TARGET_P95_MS else "missed"
            if not case.target:
                met += " (for comparison)"
            out.append([label, case.name, f"{p50:.1f}", f"{p95:.1f}", met])
        return out
    finally:
        await store.close()


def markdown(rows: list[list[str]], events: int, runs: int) -> str:
    head = [
        "database",
        f"QueryUsage by labels.team + model unless said ({events:,} events, {runs} runs)",
        "p50 ms",
        "p95 ms",
        f"p95 <= {TARGET_P95_MS:.0f} ms",
    ]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


async def main_async(args: argparse.Namespace) -> int:
    prices = PriceTable.load()
    table: list[list[str]] = []
    async with sqlite_url() as url:
        table += await run_one("SQLite", url, args.rows, args.days, args.runs, prices)
    if args.postgres:
        async with postgres_url(args.postgres) as url:
            table += await run_one("PostgreSQL", url, args.rows, args.days, args.runs, prices)
    print(markdown(table, args.rows, args.runs))
    # Other processes on the machine show up in p95: say how busy it was.
    print(
        f"\nload average at the end: {' '.join(f'{x:.2f}' for x in os.getloadavg())} "
        f"on {os.cpu_count()} CPUs"
    )
    return 0 if all(row[-1] != "missed" for row in table) else 1


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.usage_query", description=__doc__)
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--days", type=int, default=30)
    parser.add_argument("--runs", type=int, default=50)
    parser.add_argument(
        "--postgres",
        metavar="URL",
        help="PostgreSQL server to benchmark too (a scratch database is created and dropped)",
    )
    return asyncio.run(main_async(parser.parse_args()))


if __name__ == "__main__":
    sys.exit(main())
