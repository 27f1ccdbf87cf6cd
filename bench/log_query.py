"""Benchmark: ListLogs over a large request log, and the log writer's cost, on SQLite and
PostgreSQL.

    python -m bench.log_query [--logs 100000] [--others 10000] [--days 30] [--runs 40]
                              [--postgres postgresql://postgres@127.0.0.1:5432/test]

Writes `--logs` logs of one project (and `--others` of another) over `--days` days through
the real `LogWriter` into a fresh database (a temporary SQLite file; with --postgres, a
scratch database `gw_bench_<random>` created through that server and dropped afterwards),
then times ListLogs-style queries (`list_logs`, 50 a page): the first page and a later one
(the sixth) of each filter, p50/p95 against the 50 ms target, with the indexes the database's
plan uses for each.

Before loading, it measures what the writer costs the gateway's event loop per event: the
CPU time of the loop's own thread (SQLite's work runs in aiosqlite's thread; asyncpg's runs on
the loop and is counted), and the wall time, for recorder batches of several sizes.

The logs look like a few teams' traffic: 10 models, 2 methods, labels {team, env} (a tenth
unlabelled), about 4% errors, prompts and answers of 10-60 words from a 2,000-word vocabulary
(Zipf-like: "order" is in about one log in five, "zebra" in about one in a thousand), and two
datasets: "golden" (1,000 logs from all over the history) and "recent" (200 recent logs).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import re
import secrets
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.sql.expression import ClauseElement, Executable

from bench.stats import percentile
from bench.stores import postgres_url, sqlite_url
from gemini_gateway.generated.google.ai.generativelanguage.v1beta import (
    generative_service_pb2,
)
from gemini_gateway.server.log_event import LogEvent, LoggingPolicy
from gemini_gateway.server.store import Store, open_store
from gemini_gateway.server.store.log_tables import DatasetLog, DatasetRow, RequestLog
from gemini_gateway.server.store.logs import LogWriter, list_logs, log_condition

TARGET_P95_MS = 50.0
PAGE_SIZE = 50
LATER_PAGE = 6
END = datetime(2026, 3, 31, tzinfo=UTC)
PROJECT = "acme-prod"
OTHER_PROJECT = "acme-research"
BATCH = 500  # the recorder's default batch size

MODELS = [
    "models/gemini-2.5-pro",
    "models/gemini-2.5-flash",
    "models/gemini-2.5-flash-lite",
    "models/gemini-2.0-flash",
    "models/gemini-2.0-flash-lite",
    "models/gemini-3-pro-preview",
    "models/gemini-3-flash-preview",
    "models/gemini-3.1-pro-preview",
    "models/gemini-3.1-flash-lite-preview",
    "tunedModels/support-bot-v2",
]
METHODS = ["GenerateContent", "StreamGenerateContent"]
TEAMS = ["search", "ads", "support", "research"]
ENVS = ["prod", "staging", "dev"]
CALLERS = ["svc-search@p", "svc-ads@p", "svc-support@p", "ana@acme.com", "bo@acme.com"]
STATUSES = [("OK", 960), ("RESOURCE_EXHAUSTED", 20), ("INVALID_ARGUMENT", 10),
            ("UNAVAILABLE", 5), ("DEADLINE_EXCEEDED", 5)]  # fmt: skip
POLICY = LoggingPolicy(enabled=True, max_logs=10**9, retention_s=1e9, at_limit="stop_logging")

Request = generative_service_pb2.GenerateContentRequest
Response = generative_service_pb2.GenerateContentResponse


def vocabulary(rng: random.Random) -> tuple[list[str], list[float]]:
    """2,000 made-up words with Zipf-like weights, "order" common and "zebra" rare."""
    syllables = ["ka", "lo", "mi", "ne", "ru", "sa", "ti", "vo", "ze", "pa", "qu", "di"]
    words = {"".join(rng.choices(syllables, k=rng.randint(2, 4))) for _ in range(4000)}
    ranked = sorted(words)[:1998]
    rng.shuffle(ranked)
    ranked = ["order", *ranked[:1500], "zebra", *ranked[1500:]]
    weights = [1 / (rank + 8) for rank in range(len(ranked))]
    return ranked, weights


def synthetic_events(
    count: int, project: str, days: int, seed: int
) -> Iterator[tuple[LogEvent, float]]:
    """(event, arrival time) pairs in arrival order: ids sort as they do in a gateway."""
    rng = random.Random(seed)
    words, weights = vocabulary(random.Random(1))
    start = END - timedelta(days=days)
    span_ms = days * 86_400_000
    times = sorted(rng.randrange(span_ms) for _ in range(count))
    statuses = [s for s, _ in STATUSES]
    status_weights = [w for _, w in STATUSES]
    for i, offset_ms in enumerate(times):
        when = start + timedelta(milliseconds=offset_ms)
        model = rng.choice(MODELS)
        method = rng.choice(METHODS)
        status = rng.choices(statuses, weights=status_weights)[0]
        labels = {} if rng.random() < 0.1 else {
            "team": rng.choice(TEAMS), "env": rng.choices(ENVS, weights=(6, 3, 1))[0]}  # fmt: skip
        prompt = " ".join(rng.choices(words, weights, k=rng.randint(10, 60)))
        request = Request(model=model)
        request.contents.add(role="user").parts.add(text=prompt)
        request.generation_config.temperature = 0.7
        responses = []
        prompt_tokens = len(prompt) // 4
        candidates_tokens = 0
        if status == "OK":
            answer = " ".join(rng.choices(words, weights, k=rng.randint(10, 60)))
            response = Response(response_id=f"r{i}", model_version=model.split("/")[-1])
            candidate = response.candidates.add(finish_reason=1)
            candidate.content.role = "model"
            candidate.content.parts.add(text=answer)
            candidates_tokens = len(answer) // 4
            usage = response.usage_metadata
            usage.prompt_token_count = prompt_tokens
            usage.candidates_token_count = candidates_tokens
            usage.total_token_count = prompt_tokens + candidates_tokens
            responses.append(response)
        stream = method == "StreamGenerateContent"
        latency = rng.uniform(200, 20_000) if status == "OK" else rng.uniform(5, 300)
        ms = int(when.timestamp() * 1000)
        event = LogEvent(
            id=f"{ms:012x}{rng.getrandbits(48):012x}",
            project=project,
            caller=rng.choice(CALLERS),
            create_time=when,
            model=model,
            method=method,
            api_version="v1beta",
            labels=labels,
            status=status,
            error_message="" if status == "OK" else "upstream said no",
            latency_ms=latency,
            first_chunk_ms=rng.uniform(100, 2000) if stream and status == "OK" else None,
            prompt_tokens=prompt_tokens,
            candidates_tokens=candidates_tokens,
            cached_tokens=0,
            thoughts_tokens=0,
            tool_use_tokens=0,
            total_tokens=prompt_tokens + candidates_tokens,
            incomplete=False,
            request=request,
            responses=responses,
            chunk_offsets_ms=[latency] if stream and status == "OK" else [],
        )
        yield event, offset_ms


async def load(store: Store, logs: int, others: int, days: int) -> float:
    """Write the logs through the LogWriter in recorder-sized batches; seconds taken."""
    started = time.perf_counter()
    writer = LogWriter(lambda project: POLICY)
    for project, count, seed in ((PROJECT, logs, 7), (OTHER_PROJECT, others, 8)):
        batch: list[LogEvent] = []
        for event, _ in synthetic_events(count, project, days, seed):
            batch.append(event)
            if len(batch) == BATCH:
                async with store.begin() as conn:
                    await writer(conn, batch)
                batch = []
        if batch:
            async with store.begin() as conn:
                await writer(conn, batch)
    await make_datasets(store)
    async with store.begin() as conn:
        await conn.exec_driver_sql("ANALYZE")
    return time.perf_counter() - started


async def make_datasets(store: Store) -> None:
    rng = random.Random(3)
    async with store.begin() as conn:
        ids = list(
            (
                await conn.execute(
                    sa.select(RequestLog.id)
                    .where(RequestLog.project == PROJECT)
                    .order_by(RequestLog.id)
                )
            ).scalars()
        )
        members = {
            "golden": rng.sample(ids, min(1000, len(ids))),
            "recent": rng.sample(ids[-5000:], min(200, len(ids))),
        }
        for dataset, chosen in members.items():
            await conn.execute(
                sa.insert(DatasetRow).values(
                    project=PROJECT,
                    dataset_id=dataset,
                    display_name=dataset,
                    description="",
                    create_time=END,
                    update_time=END,
                )
            )
            await conn.execute(
                sa.insert(DatasetLog),
                [
                    {"project": PROJECT, "dataset_id": dataset, "log_id": log_id, "add_time": END}
                    for log_id in chosen
                ],
            )


# --- the writer's cost ----------------------------------------------------------------------


@dataclass(frozen=True)
class WriterCost:
    batch: int
    loop_cpu_us: float
    wall_us: float


async def writer_cost(store: Store, events: int = 2000) -> list[WriterCost]:
    """Per event: CPU time of the loop's thread and wall time, by batch size."""
    writer = LogWriter(lambda project: POLICY)
    pool = [event for event, _ in synthetic_events(events, "cost-probe", 1, 11)]
    out = []
    for size in (1, 10, 100, BATCH):
        chosen = pool[: max(size * 4, 200)] if size < 100 else pool
        # Fresh ids each round, so every round inserts.
        for event in chosen:
            event.id = event.id[:12] + secrets.token_hex(6)
        cpu = wall = 0.0
        for start in range(0, len(chosen), size):
            batch = chosen[start : start + size]
            t_cpu, t_wall = time.thread_time(), time.perf_counter()
            async with store.begin() as conn:
                await writer(conn, batch)
            cpu += time.thread_time() - t_cpu
            wall += time.perf_counter() - t_wall
        out.append(WriterCost(size, cpu / len(chosen) * 1e6, wall / len(chosen) * 1e6))
    async with store.begin() as conn:
        await conn.execute(sa.delete(RequestLog).where(RequestLog.project == "cost-probe"))
        await conn.exec_driver_sql("DELETE FROM logging_settings WHERE project = 'cost-probe'")
    return out


# --- ListLogs --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Case:
    name: str
    filter_text: str


def cases(days: int) -> list[Case]:
    middle = END - timedelta(days=days // 2)
    recent = f"{END - timedelta(days=min(days, 20)):%Y-%m-%dT%H:%M:%SZ}"
    day = f'create_time >= "{middle:%Y-%m-%dT%H:%M:%SZ}" AND ' \
          f'create_time < "{middle + timedelta(days=1):%Y-%m-%dT%H:%M:%SZ}"'  # fmt: skip
    return [
        Case("no filter", ""),
        Case("model =", 'model = "models/gemini-2.5-pro"'),
        Case("labels.team =", 'labels.team = "search"'),
        Case("status != OK", "status != OK"),
        Case("create_time range (one day)", day),
        Case("create_time range (the last 20 days)", f'create_time >= "{recent}"'),
        Case("free text, common word", "order"),
        Case("free text, rare word", "zebra"),
        Case("free text, two words", '"order zebra"'),
        Case("dataset = golden (1,000 logs)", "dataset = golden"),
        Case("dataset = recent (200 logs)", "dataset = recent"),
        Case("in any dataset", "dataset:*"),
        Case(
            "model + labels + free text",
            'model = "models/gemini-2.5-flash" AND labels.team = "search" AND order',
        ),
    ]


async def later_token(store: Store, filter_text: str) -> str:
    """The token of page LATER_PAGE of the listing ("" if it has fewer pages)."""
    token = ""
    for _ in range(LATER_PAGE - 1):
        _, token = await list_logs(
            store, PROJECT, filter_text=filter_text, page_size=PAGE_SIZE, page_token=token
        )
        if not token:
            return ""
    return token


async def time_listing(store: Store, filter_text: str, token: str, runs: int) -> list[float]:
    samples = []
    for i in range(runs + 3):
        started = time.perf_counter()
        records, _ = await list_logs(
            store, PROJECT, filter_text=filter_text, page_size=PAGE_SIZE, page_token=token
        )
        elapsed = (time.perf_counter() - started) * 1000
        if i >= 3:  # the first runs warm the caches
            samples.append(elapsed)
        assert records or filter_text, "the benchmark query found nothing"
    return samples


_INDEX_NAMES = re.compile(
    r"(?:USING (?:COVERING )?INDEX|using|on|Index Scan on|Index Only Scan using) "
    r"(ix_\w+|pk_\w+|sqlite_autoindex_\w+)"
)


class Explain(Executable, ClauseElement):
    """`EXPLAIN [QUERY PLAN] <statement>`, its parameters bound as the statement's are."""

    inherit_cache = False

    def __init__(self, statement: sa.Select[Any], prefix: str) -> None:
        self.statement = statement
        self.prefix = prefix


@compiles(Explain)
def _compile_explain(element: Explain, compiler: Any, **kw: Any) -> str:
    return element.prefix + compiler.process(element.statement, **kw)


async def indexes_used(store: Store, filter_text: str, later: bool) -> str:
    """The indexes (and FTS table) the database's plan for the listing's query uses."""
    query = sa.select(RequestLog.id).where(log_condition(PROJECT, filter_text, store.dialect))
    if later:
        query = query.where(RequestLog.id < "ffffffffffffffffffffffff")
    query = query.order_by(RequestLog.id.desc()).limit(PAGE_SIZE + 1)
    prefix = "EXPLAIN QUERY PLAN " if store.dialect == "sqlite" else "EXPLAIN "
    async with store.connect() as conn:
        rows = (await conn.execute(Explain(query, prefix))).all()
    plan = "\n".join(str(row[-1]) for row in rows)
    used = list(dict.fromkeys(_INDEX_NAMES.findall(plan)))
    if "VIRTUAL TABLE INDEX" in plan:
        used.append("request_logs_fts (FTS5)")
    if store.dialect == "postgresql" and "Seq Scan on request_logs" in plan:
        used.append("seq scan")
    if store.dialect == "sqlite" and re.search(r"SCAN request_logs(?! USING)(?!_fts)", plan):
        used.append("table scan")
    return ", ".join(used) or "-"


async def run_one(
    label: str, url: str, args: argparse.Namespace
) -> tuple[list[list[str]], list[list[str]]]:
    store = await open_store(url)
    try:
        costs = await writer_cost(store)
        cost_rows = [
            [label, str(c.batch), f"{c.loop_cpu_us:.0f}", f"{c.wall_us:.0f}"] for c in costs
        ]
        seconds = await load(store, args.logs, args.others, args.days)
        total = args.logs + args.others
        print(
            f"{label}: wrote {total:,} logs through the LogWriter in {seconds:.1f} s "
            f"({seconds / total * 1e6:.0f} us a log)",
            file=sys.stderr,
        )
        out = []
        for case in cases(args.days):
            token = await later_token(store, case.filter_text)
            for page, page_token in (("first", ""), (f"page {LATER_PAGE}", token)):
                if page != "first" and not token:
                    out.append([label, case.name, page, "-", "-", "(fewer pages)", "-"])
                    continue
                samples = await time_listing(store, case.filter_text, page_token, args.runs)
                p50, p95 = percentile(samples, 50), percentile(samples, 95)
                met = "met" if p95 <= TARGET_P95_MS else "missed"
                used = await indexes_used(store, case.filter_text, page != "first")
                out.append([label, case.name, page, f"{p50:.1f}", f"{p95:.1f}", met, used])
        return out, cost_rows
    finally:
        await store.close()


def markdown(head: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


async def main_async(args: argparse.Namespace) -> int:
    table: list[list[str]] = []
    costs: list[list[str]] = []
    async with sqlite_url() as url:
        rows, cost_rows = await run_one("SQLite", url, args)
        table += rows
        costs += cost_rows
    if args.postgres:
        async with postgres_url(args.postgres) as url:
            rows, cost_rows = await run_one("PostgreSQL", url, args)
            table += rows
            costs += cost_rows
    print("LogWriter cost per event (typical small unary/stream call)\n")
    print(markdown(["database", "batch", "event-loop CPU us", "wall us"], costs))
    print(
        f"\nListLogs, {PAGE_SIZE} a page, over {args.logs:,} logs of one project "
        f"(+{args.others:,} of another), {args.runs} runs\n"
    )
    head = ["database", "filter", "page", "p50 ms", "p95 ms", f"p95 <= {TARGET_P95_MS:.0f} ms",
            "indexes in the plan"]  # fmt: skip
    print(markdown(head, table))
    # Other processes on the machine show up in p95: say how busy it was.
    print(
        f"\nload average at the end: {' '.join(f'{x:.2f}' for x in os.getloadavg())} "
        f"on {os.cpu_count()} CPUs"
    )
    return 0 if all(row[5] != "missed" for row in table) else 1


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.log_query", description=__doc__)
    parser.add_argument("--logs", type=int, default=100_000)
    parser.add_argument("--others", type=int, default=10_000)
    parser.add_argument("--days", type=int, default=30)
    parser.add_argument("--runs", type=int, default=40)
    parser.add_argument(
        "--postgres",
        metavar="URL",
        help="PostgreSQL server to benchmark too (a scratch database is created and dropped)",
    )
    return asyncio.run(main_async(parser.parse_args()))


if __name__ == "__main__":
    sys.exit(main())
