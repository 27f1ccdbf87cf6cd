"""The recorder: batched writes, and every event it cannot keep counted, never raised."""

from __future__ import annotations

import asyncio
import logging
import socket
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import pytest
import sqlalchemy as sa
from prometheus_client import REGISTRY
from sqlalchemy.ext.asyncio import AsyncConnection

from gemini_gateway.server.recorder import Recorder, UsageEvent
from gemini_gateway.server.store import Store, open_store
from gemini_gateway.server.store.models import (
    UsageDaily,
    UsageDailyByLabel,
    UsageEventRow,
    UsageHourly,
    UsageHourlyByLabel,
    UsageLabelValue,
)
from gemini_gateway.server.store.usage import write_usage_batch
from tests.postgres import PostgresAdmin, require
from tests.store.support import T0, FreshUrl, event


def dropped(reason: str) -> float:
    value = REGISTRY.get_sample_value("gateway_recorder_dropped_events_total", {"reason": reason})
    return value or 0.0


def written(kind: str = "UsageEvent") -> float:
    value = REGISTRY.get_sample_value("gateway_recorder_written_events_total", {"event": kind})
    return value or 0.0


def queue_depth() -> float:
    return REGISTRY.get_sample_value("gateway_recorder_queue_depth") or 0.0


async def count_rows(store: Store) -> tuple[int, int]:
    """(raw rows, requests summed in the hourly rollup)."""
    async with store.connect() as conn:
        raw = (await conn.execute(sa.select(sa.func.count()).select_from(UsageEventRow))).scalar()
        hourly = (await conn.execute(sa.select(sa.func.sum(UsageHourly.request_count)))).scalar()
    return int(raw or 0), int(hourly or 0)


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


async def test_writes_in_batches(store: Store) -> None:
    batches: list[int] = []

    async def counting_writer(conn: AsyncConnection, events: Sequence[UsageEvent]) -> None:
        batches.append(len(events))
        await write_usage_batch(conn, events)

    before = written()
    recorder = Recorder(store, batch_size=10, writers={UsageEvent: counting_writer})
    for i in range(35):
        recorder.record(event(time=T0 + timedelta(minutes=i)))
    recorder.start()
    await recorder.flush()
    await recorder.stop()
    assert await count_rows(store) == (35, 35)
    assert batches == [10, 10, 10, 5]
    assert written() - before == 35


async def test_waits_for_a_batch_to_fill_for_at_most_the_flush_interval(store: Store) -> None:
    recorder = Recorder(store, flush_interval_s=0.05)
    recorder.start()
    try:
        recorder.record(event())
        for _ in range(250):  # no flush(): the writer must go on its own
            await asyncio.sleep(0.02)
            if (await count_rows(store))[0]:
                break
        assert await count_rows(store) == (1, 1)
    finally:
        await recorder.stop()


async def test_flush_writes_at_once_and_waits_for_every_batch(store: Store) -> None:
    recorder = Recorder(store, batch_size=4, flush_interval_s=60)
    recorder.start()
    try:
        depth = queue_depth()
        for i in range(10):
            recorder.record(event(caller=f"c{i % 3}"))
        assert queue_depth() - depth == 10
        # Not the 60 s flush interval: flush() sends the partial batch at once.
        await asyncio.wait_for(recorder.flush(), 10)
        assert await count_rows(store) == (10, 10)
        assert queue_depth() == depth
        recorder.record(event())
        await asyncio.wait_for(recorder.flush(), 10)
        assert await count_rows(store) == (11, 11)
    finally:
        await recorder.stop()


async def test_stop_flushes_what_is_queued(store: Store) -> None:
    recorder = Recorder(store, batch_size=7, flush_interval_s=30)
    recorder.start()
    for i in range(50):
        recorder.record(event(caller=f"c{i % 3}"))
    await recorder.stop(timeout=30)
    assert await count_rows(store) == (50, 50)
    before = dropped("stopped")
    recorder.record(event())  # after stop: counted, not raised
    assert dropped("stopped") - before == 1


async def test_queue_full_drops_are_counted(store: Store) -> None:
    recorder = Recorder(store, max_queue=5)
    before, depth = dropped("queue_full"), queue_depth()
    for _ in range(8):
        recorder.record(event())
    assert dropped("queue_full") - before == 3
    assert queue_depth() - depth == 5
    recorder.start()
    await recorder.stop()
    assert await count_rows(store) == (5, 5)
    assert queue_depth() == depth


async def _record_against_a_failing_store(store: Store, events: int = 300) -> None:
    recorder = Recorder(store, max_queue=100, batch_size=20, flush_interval_s=0.01)
    recorder.start()
    before = {reason: dropped(reason) for reason in ("store_error", "queue_full")}
    started = time.perf_counter()
    for _ in range(events):
        recorder.record(event())  # must neither raise nor block
    assert time.perf_counter() - started < 0.5
    await recorder.flush()
    await recorder.stop(timeout=10)
    lost = sum(dropped(reason) - before[reason] for reason in before)
    assert lost == events
    assert dropped("store_error") > before["store_error"]


async def test_a_store_that_is_down(fresh_url: FreshUrl) -> None:
    url = await fresh_url()
    if url.startswith("sqlite"):
        # A database file that was never migrated: every write fails with "no such table".
        down = await open_store(url, migrate=False)
    else:
        down = await open_store(
            f"postgresql+asyncpg://postgres@127.0.0.1:{closed_port()}/gw", migrate=False
        )
    try:
        await _record_against_a_failing_store(down)
    finally:
        await down.close()


@pytest.mark.postgres
async def test_a_dropped_database(postgres: PostgresAdmin) -> None:
    require(postgres)
    name = await postgres.create()
    store = await open_store(postgres.url(name))
    try:
        recorder = Recorder(store)
        recorder.start()
        recorder.record(event())
        await recorder.flush()
        assert await count_rows(store) == (1, 1)
        await recorder.stop()
        await postgres.drop(name)
        await _record_against_a_failing_store(store)
    finally:
        await store.close()


async def test_a_failed_batch_is_dropped_and_later_batches_are_written(store: Store) -> None:
    failures = [True]

    async def flaky(conn: AsyncConnection, events: Sequence[UsageEvent]) -> None:
        await write_usage_batch(conn, events)
        if failures and failures.pop():
            raise RuntimeError("disk full")  # after the inserts: the rollback must undo them

    before = dropped("store_error")
    recorder = Recorder(store, batch_size=5, writers={UsageEvent: flaky})
    recorder.start()
    for _ in range(5):
        recorder.record(event())
    await recorder.flush()
    for _ in range(3):
        recorder.record(event())
    await recorder.stop()
    assert dropped("store_error") - before == 5
    assert await count_rows(store) == (3, 3)


async def test_drops_are_logged_at_most_once_per_interval(
    store: Store, caplog: pytest.LogCaptureFixture
) -> None:
    recorder = Recorder(store, max_queue=1, drop_log_interval_s=3600)
    with caplog.at_level(logging.WARNING, logger="gemini_gateway.server.recorder"):
        recorder.record(event())
        for _ in range(100):
            recorder.record(event())
        recorder.start()
        await recorder.stop()
    lines = [r.getMessage() for r in caplog.records if "dropped" in r.getMessage()]
    # The first drop is reported at once, the other 99 together when the recorder stops.
    assert lines == [
        "recorder dropped 1 events since the last report (queue_full: 1)",
        "recorder dropped 99 events since the last report (queue_full: 99)",
    ]


@dataclass(frozen=True)
class OtherEvent:
    text: str


async def test_other_event_types_share_the_queue(store: Store) -> None:
    seen: list[Any] = []

    async def write_other(conn: AsyncConnection, events: Sequence[OtherEvent]) -> None:
        seen.extend(e.text for e in events)

    recorder = Recorder(store)
    recorder.register(OtherEvent, write_other)
    recorder.start()
    recorder.record(OtherEvent("a"))
    recorder.record(event())
    recorder.record(OtherEvent("b"))
    await recorder.stop()
    assert seen == ["a", "b"]
    assert await count_rows(store) == (1, 1)


async def test_an_unknown_event_type_is_dropped_not_raised(store: Store) -> None:
    before = dropped("store_error")
    recorder = Recorder(store)
    recorder.start()
    recorder.record(OtherEvent("nobody writes me"))
    await recorder.stop()
    assert dropped("store_error") - before == 1


async def test_two_replicas_writing_at_once_keep_rollups_exact(fresh_url: FreshUrl) -> None:
    url = await fresh_url()
    stores = [await open_store(url), await open_store(url)]
    recorders = [Recorder(s, batch_size=25, flush_interval_s=0.01) for s in stores]
    for recorder in recorders:
        recorder.start()
    try:
        # Both replicas hit the same rollup keys, batch after batch.
        async def replica(recorder: Recorder, seed: int) -> None:
            for i in range(400):
                recorder.record(
                    event(
                        time=T0 + timedelta(minutes=(i * 7 + seed) % 180),
                        caller=f"c{i % 3}",
                        labels={"team": f"t{i % 2}"},
                        prompt_tokens=i,
                    )
                )
                if i % 50 == 0:
                    await asyncio.sleep(0)

        await asyncio.gather(replica(recorders[0], 0), replica(recorders[1], 1))
        await asyncio.gather(*(r.stop(timeout=60) for r in recorders))
        async with stores[0].connect() as conn:
            sums = {}
            for model in (UsageHourly, UsageDaily, UsageHourlyByLabel, UsageDailyByLabel):
                stmt = sa.select(sa.func.sum(model.request_count), sa.func.sum(model.prompt_tokens))
                sums[model.__tablename__] = tuple(int(v) for v in (await conn.execute(stmt)).one())
            stmt = sa.select(sa.func.count(), sa.func.sum(UsageEventRow.prompt_tokens))
            raw = (await conn.execute(stmt)).one()
            stmt = sa.select(sa.func.sum(UsageLabelValue.count))
            values = (await conn.execute(stmt)).scalar()
        want = (800, 2 * sum(range(400)))
        assert sums == dict.fromkeys(sums, want)
        assert (int(raw[0]), int(raw[1])) == want
        assert int(values or 0) == 800
    finally:
        for s in stores:
            await s.close()
