"""BatchUsage on both dialects: a batch's usage is written once, however many replicas see it
done at once, and priced at the batch discount."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

import pytest
import sqlalchemy as sa
from google.longrunning import operations_pb2
from google.protobuf import timestamp_pb2

from gemini_gateway.generated.google.ai.generativelanguage.v1beta import (
    generative_service_pb2 as gs,
)
from gemini_gateway.server.batch_usage import (
    GET_OPERATION,
    LIST_OPERATIONS,
    SEEN,
    BatchUsage,
    forget_settled,
    request_kinds,
    settle,
)
from gemini_gateway.server.identity import Identity
from gemini_gateway.server.metering import UsageMetrics
from gemini_gateway.server.pricing import PriceTable, TokenSums
from gemini_gateway.server.store import Store
from gemini_gateway.server.store.models import BatchMeter, UsageEventRow
from gemini_gateway.server.store.usage import query_usage

FLASH = "models/gemini-2.5-flash"
PRO = "models/gemini-2.5-pro"
ENDED = datetime(2026, 11, 2, 15, 30, tzinfo=UTC)


def submitted(*items: tuple[str, dict[str, str]]) -> gs.BatchGenerateContentRequest:
    """A batch of FLASH whose requests name (model or "" for the batch's, labels)."""
    request = gs.BatchGenerateContentRequest(batch=gs.GenerateContentBatch(model=FLASH))
    for model, labels in items:
        inlined = request.batch.input_config.requests.requests.add()
        inlined.request.model = model
        inlined.request.labels.update(labels)
        inlined.request.contents.add(role="user").parts.add(text="hi")
    return request


def done_operation(name: str, answers: list[tuple[int, int] | int]) -> operations_pb2.Operation:
    """A done batch: (prompt, candidates) tokens per answered request, or an error code."""
    output = gs.GenerateContentBatchOutput()
    for answer in answers:
        entry = output.inlined_responses.inlined_responses.add()
        if isinstance(answer, int):
            entry.error.code = answer
            entry.error.message = "no"
        else:
            usage = entry.response.usage_metadata
            usage.prompt_token_count, usage.candidates_token_count = answer
            usage.total_token_count = sum(answer)
    batch = gs.GenerateContentBatch(name=name, model=FLASH, output=output)
    batch.end_time.CopyFrom(timestamp_pb2.Timestamp(seconds=int(ENDED.timestamp())))
    operation = operations_pb2.Operation(name=name, done=True)
    operation.metadata.Pack(batch)
    operation.response.Pack(output)
    return operation


def test_requests_are_kept_as_a_few_kinds() -> None:
    same = submitted(("", {"team": "a"}), (FLASH, {"team": "a"}), ("", {"team": "a"}))
    assert request_kinds(same) == {"kinds": [[FLASH, {"team": "a"}]], "kind_of": []}
    mixed = submitted(("", {"team": "a"}), (PRO, {}), ("", {"team": "a"}), ("", {"team": "b"}))
    assert request_kinds(mixed) == {
        "kinds": [[FLASH, {"team": "a"}], [PRO, {}], [FLASH, {"team": "b"}]],
        "kind_of": [0, 1, 0, 2],
    }


async def usage_rows(store: Store) -> list[tuple]:
    async with store.connect() as conn:
        rows = await conn.execute(
            sa.select(
                UsageEventRow.project,
                UsageEventRow.caller,
                UsageEventRow.model,
                UsageEventRow.method,
                UsageEventRow.labels,
                UsageEventRow.status,
                UsageEventRow.prompt_tokens,
                UsageEventRow.candidates_tokens,
                UsageEventRow.batch,
                UsageEventRow.time,
            ).order_by(UsageEventRow.id)
        )
        return [tuple(row) for row in rows]


async def test_replicas_seeing_a_batch_done_at_once_meter_it_once(
    store: Store, prices: PriceTable
) -> None:
    name = "batches/once"
    request = submitted(("", {"team": "a"}), (PRO, {"team": "b"}), ("", {"team": "a"}))
    replicas = [BatchUsage(store, UsageMetrics(())) for _ in range(4)]
    before = {o: SEEN.labels(o)._value.get() for o in ("metered", "already_metered")}
    await replicas[0].created(
        Identity("search", "ranker"), request, operations_pb2.Operation(name=name)
    )

    operation = done_operation(name, [(10, 5), (20, 7), 8])  # 8: RESOURCE_EXHAUSTED
    await asyncio.gather(*(r.seen(GET_OPERATION, operation) for r in replicas))
    listing = operations_pb2.ListOperationsResponse(operations=[operation])
    await asyncio.gather(*(r.seen(LIST_OPERATIONS, listing) for r in replicas))

    batch_call = ("search", "ranker")
    method = "BatchGenerateContent"
    assert await usage_rows(store) == [
        (*batch_call, FLASH, method, {"team": "a"}, "OK", 10, 5, True, ENDED),
        (*batch_call, PRO, method, {"team": "b"}, "OK", 20, 7, True, ENDED),
        (*batch_call, FLASH, method, {"team": "a"}, "RESOURCE_EXHAUSTED", 0, 0, True, ENDED),
    ]
    assert SEEN.labels("metered")._value.get() - before["metered"] == 1
    # The other three replicas found it metered in the store; later reads stop in memory.
    assert SEEN.labels("already_metered")._value.get() - before["already_metered"] == 3
    async with store.connect() as conn:
        metered = await conn.scalar(sa.select(BatchMeter.metered_time))
    assert metered is not None

    page = await query_usage(store, project="search", group_by=["model"], prices=prices)
    costs = {row.group["model"]: row.cost_usd for row in page.rows}
    assert costs[PRO] == pytest.approx(
        prices.cost(PRO, False, TokenSums(prompt=20, candidates=7), batch=True)
    )
    assert costs[FLASH] == pytest.approx(
        prices.cost(FLASH, False, TokenSums(prompt=10, candidates=5), batch=True)
    )
    assert costs[PRO] < prices.cost(PRO, False, TokenSums(prompt=20, candidates=7))
    # `batch` filters, on the rollups by label as on the full ones.
    for group_by in ([], ["method"]):
        for flag, count in (("true", 3), ("false", 0)):
            page = await query_usage(
                store, project="search", filter_text=f"batch = {flag}", group_by=group_by,
                prices=prices,
            )  # fmt: skip
            assert page.totals.request_count == count


async def test_batches_not_kept_or_answered_in_a_file_are_not_metered(store: Store) -> None:
    meter = BatchUsage(store, UsageMetrics(()))
    await meter.seen(GET_OPERATION, done_operation("batches/unknown", [(1, 1)]))
    await meter.created(
        Identity("p", "c"), submitted(("", {})), operations_pb2.Operation(name="batches/file")
    )
    in_file = operations_pb2.Operation(name="batches/file", done=True)
    in_file.response.Pack(gs.GenerateContentBatchOutput(responses_file="files/out"))
    await meter.seen(GET_OPERATION, in_file)
    assert await usage_rows(store) == []
    # Settled all the same: the sweeper stops reading it.
    assert await settled(store) == {"batches/file": True}
    # Not done yet, or not a batch: nothing is looked at.
    running = operations_pb2.Operation(name="batches/file")
    await meter.seen(GET_OPERATION, running)
    await meter.seen(
        GET_OPERATION, operations_pb2.Operation(name="tunedModels/x/operations/y", done=True)
    )
    assert await usage_rows(store) == []


async def test_a_batch_done_when_submitted_is_metered_at_once(store: Store) -> None:
    meter = BatchUsage(store, UsageMetrics(()))
    operation = done_operation("batches/quick", [(3, 4)])
    await meter.created(Identity("p", "c"), submitted(("", {"k": "v"})), operation)
    rows = await usage_rows(store)
    assert [(r[0], r[1], r[4], r[6], r[7], r[8]) for r in rows] == [
        ("p", "c", {"k": "v"}, 3, 4, True)
    ]


async def settled(store: Store) -> dict[str, bool]:
    """Each kept batch: whether it is settled (metered, answered in a file, or gone)."""
    async with store.connect() as conn:
        rows = await conn.execute(sa.select(BatchMeter.name, BatchMeter.metered_time))
        return {row.name: row.metered_time is not None for row in rows}


async def test_settled_batches_are_forgotten_after_a_while_and_never_metered_twice(
    store: Store,
) -> None:
    meter = BatchUsage(store, UsageMetrics(()))
    now = datetime.now(UTC)
    for name in ("batches/old", "batches/recent", "batches/running"):
        await meter.created(
            Identity("p", "c"), submitted(("", {})), operations_pb2.Operation(name=name)
        )
    await meter.seen(GET_OPERATION, done_operation("batches/old", [(2, 3)]))
    assert await settle(store, "batches/recent", now - timedelta(days=1))
    async with store.begin() as conn:  # as if metered eight days ago
        await conn.execute(
            sa.update(BatchMeter)
            .where(BatchMeter.name == "batches/old")
            .values(metered_time=now - timedelta(days=8))
        )

    assert await forget_settled(store, now - timedelta(days=7)) == 1
    assert await settled(store) == {"batches/recent": True, "batches/running": False}
    assert await forget_settled(store, now - timedelta(days=7)) == 0

    # Read again once forgotten (by another replica, which has not seen it): unknown, and
    # its usage is not written a second time.
    unknown = SEEN.labels("unknown")._value.get()
    other = BatchUsage(store, UsageMetrics(()))
    await other.seen(GET_OPERATION, done_operation("batches/old", [(2, 3)]))
    assert SEEN.labels("unknown")._value.get() == unknown + 1
    assert len(await usage_rows(store)) == 1
    # Settling what is settled, or unknown, changes nothing.
    assert not await settle(store, "batches/recent", now)
    assert not await settle(store, "batches/old", now)


async def test_keeping_a_new_batch_deletes_those_settled_long_ago(store: Store) -> None:
    meter = BatchUsage(store, UsageMetrics(()))
    await meter.created(
        Identity("p", "c"), submitted(("", {})), operations_pb2.Operation(name="batches/old")
    )
    assert await settle(store, "batches/old", datetime.now(UTC) - timedelta(days=8))
    # In every mode, sweeper or not: a new batch is when the table grows.
    other = BatchUsage(store, UsageMetrics(()))
    await other.created(
        Identity("p", "c"), submitted(("", {})), operations_pb2.Operation(name="batches/new")
    )
    assert await settled(store) == {"batches/new": False}
