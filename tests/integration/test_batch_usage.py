"""Batch API usage: labelled, metered once when done, priced at the batch discount.

A real gateway (callers in two projects) against the emulator's Batch API, on both store
dialects; usage read back through the UsageService.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import aiohttp
import grpc
import pytest
import sqlalchemy as sa
from google.longrunning import operations_pb2, operations_pb2_grpc
from google.protobuf import struct_pb2
from google.rpc import error_details_pb2
from grpc_status import rpc_status
from prometheus_client import REGISTRY

from gemini_gateway.client.gateway_client import text_request
from gemini_gateway.emulator.batches import BATCHES_KEY
from gemini_gateway.emulator.runner import EmulatorHandle, start_emulator
from gemini_gateway.emulator.settings import EmulatorSettings
from gemini_gateway.generated.gemini.gateway.v1 import usage_pb2, usage_pb2_grpc
from gemini_gateway.generated.google.ai.generativelanguage.v1beta import (
    generative_service_pb2 as gs,
)
from gemini_gateway.generated.google.ai.generativelanguage.v1beta import (
    generative_service_pb2_grpc,
)
from gemini_gateway.server.app import Gateway, start_gateway
from gemini_gateway.server.batch_usage import SEEN, batch_output
from gemini_gateway.server.config import CallerConfig, ProjectConfig, Settings
from gemini_gateway.server.identity import token_sha256
from gemini_gateway.server.pricing import PriceTable, TokenSums
from gemini_gateway.server.store.models import BatchMeter, UsageEventRow
from tests.integration.conftest import last_upstream_request
from tests.store.support import FreshUrl

FLASH = "models/gemini-2.5-flash"
PRO = "models/gemini-2.5-pro"
SEARCH_TOKEN = "search-batch-token"
ADS_TOKEN = "ads-batch-token"


def bearer(token: str) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {token}"),)


@pytest.fixture(scope="module")
async def batch_emulator() -> AsyncIterator[EmulatorHandle]:
    handle = await start_emulator(EmulatorSettings())
    handle.app[BATCHES_KEY].seconds = 0.3
    yield handle
    await handle.close()


def settings(emulator: EmulatorHandle, store_url: str, **extra: Any) -> Settings:
    return Settings(
        upstream="emulator",
        upstream_url=emulator.url,
        port=0,
        store_url=store_url,
        default_labels={"env": "prod"},
        metrics_label_keys=["team"],
        projects={
            "search": ProjectConfig(
                default_labels={"team": "search"},
                callers=[CallerConfig(name="ranker", token_sha256=token_sha256(SEARCH_TOKEN))],
            ),
            "ads": ProjectConfig(
                callers=[CallerConfig(name="bidder", token_sha256=token_sha256(ADS_TOKEN))],
            ),
        },
        **extra,
    )


@pytest.fixture(scope="module")
async def store_url(fresh_url: FreshUrl) -> str:
    return await fresh_url()


@pytest.fixture(scope="module")
async def gateway(batch_emulator: EmulatorHandle, store_url: str) -> AsyncIterator[Gateway]:
    gw = await start_gateway(settings(batch_emulator, store_url))
    yield gw
    await gw.stop(0)


@pytest.fixture(scope="module")
async def stubs(gateway: Gateway) -> AsyncIterator[dict[str, Any]]:
    async with grpc.aio.insecure_channel(gateway.target) as channel:
        yield stubs_on(channel)


def stubs_on(channel: grpc.aio.Channel) -> dict[str, Any]:
    return {
        "generative": generative_service_pb2_grpc.GenerativeServiceStub(channel),
        "operations": operations_pb2_grpc.OperationsStub(channel),
        "usage": usage_pb2_grpc.UsageServiceStub(channel),
    }


def batch_request(
    *items: tuple[str, dict[str, str]], model: str = FLASH
) -> gs.BatchGenerateContentRequest:
    """A batch of (prompt, labels) requests; the first request names FLASH itself."""
    requests = []
    for index, (prompt, labels) in enumerate(items):
        request = text_request(FLASH, prompt, labels)
        if index:
            request.ClearField("model")  # the batch's model applies
        metadata = struct_pb2.Struct()
        metadata.update({"key": f"k{index}"})
        requests.append(gs.InlinedRequest(request=request, metadata=metadata))
    return gs.BatchGenerateContentRequest(
        batch=gs.GenerateContentBatch(
            model=model,
            display_name="metered batch",
            input_config=gs.InputConfig(requests=gs.InlinedRequests(requests=requests)),
        )
    )


async def run_batch(stubs: dict[str, Any], request: Any, token: str) -> Any:
    """Submit `request` as the caller of `token` and wait for it (WaitOperation)."""
    operation = await stubs["generative"].BatchGenerateContent(request, metadata=bearer(token))
    assert operation.name.startswith("batches/") and not operation.done
    done = await stubs["operations"].WaitOperation(
        operations_pb2.WaitOperationRequest(name=operation.name), metadata=bearer(token), timeout=30
    )
    assert done.done and not done.HasField("error")
    return done


async def usage_of(
    stubs: dict[str, Any], token: str, run: str, group_by: list[str]
) -> usage_pb2.QueryUsageResponse:
    request = usage_pb2.QueryUsageRequest(filter=f'labels.run = "{run}"', group_by=group_by)
    return await stubs["usage"].QueryUsage(request, metadata=bearer(token))


def cost(model: str, usage: Any, batch: bool) -> float:
    return PriceTable.load().cost(
        model,
        False,
        TokenSums(
            prompt=usage.prompt_token_count,
            candidates=usage.candidates_token_count,
            cached=usage.cached_content_token_count,
            thoughts=usage.thoughts_token_count,
            tool_use=usage.tool_use_prompt_token_count,
        ),
        batch=batch,
    )


async def test_a_done_batch_is_metered_per_request_by_label_at_the_batch_price(
    stubs: dict[str, Any], gateway: Gateway
) -> None:
    request = batch_request(
        ("first question", {"run": "b1", "feature": "a"}),
        ("second question", {"run": "b1", "feature": "a"}),
        ("third question, a longer one", {"run": "b1", "feature": "b"}),
    )
    done = await run_batch(stubs, request, SEARCH_TOKEN)
    answers = batch_output(done).inlined_responses.inlined_responses
    assert len(answers) == 3

    result = await usage_of(stubs, SEARCH_TOKEN, "b1", ["labels.feature", "method", "caller"])
    rows = {row.group_values["labels.feature"]: row for row in result.rows}
    assert set(rows) == {"a", "b"}
    for feature, indexes in (("a", [0, 1]), ("b", [2])):
        row = rows[feature]
        assert dict(row.group_values) == {
            "labels.feature": feature,
            "method": "BatchGenerateContent",
            "caller": "ranker",
        }
        assert (row.request_count, row.error_count) == (len(indexes), 0)
        used = [answers[i].response.usage_metadata for i in indexes]
        assert row.tokens.prompt == sum(u.prompt_token_count for u in used) > 0
        assert row.tokens.candidates == sum(u.candidates_token_count for u in used) > 0
        assert row.tokens.total == sum(u.total_token_count for u in used)
        interactive = sum(cost(FLASH, u, batch=False) for u in used)
        discounted = sum(cost(FLASH, u, batch=True) for u in used)
        assert row.estimated_cost == pytest.approx(discounted)
        assert 0 < discounted < interactive  # the Batch API's discount applies

    # The project's and caller's default labels reached each request, upstream and in usage.
    by_team = await usage_of(stubs, SEARCH_TOKEN, "b1", ["labels.team", "labels.env"])
    assert [dict(r.group_values) for r in by_team.rows] == [
        {"labels.team": "search", "labels.env": "prod"}
    ]
    # The batch is one of the search project's: the ads project sees none of it.
    assert not (await usage_of(stubs, ADS_TOKEN, "b1", [])).rows
    # Prometheus counts the batch's requests as the process that metered them saw them.
    assert (
        REGISTRY.get_sample_value(
            "gateway_generate_requests_total",
            {
                "model": FLASH,
                "method": "BatchGenerateContent",
                "status": "OK",
                "label_team": "search",
            },
        )
        or 0
    ) >= 3


async def test_the_labels_each_request_gets_are_sent_upstream(
    stubs: dict[str, Any], batch_emulator: EmulatorHandle, http: aiohttp.ClientSession
) -> None:
    request = batch_request(("one", {"run": "b2"}), ("two", {"run": "b2", "env": "dev"}))
    await stubs["generative"].BatchGenerateContent(request, metadata=bearer(SEARCH_TOKEN))
    sent = await last_upstream_request(http, batch_emulator)
    assert sent["path"].endswith(":batchGenerateContent")
    inlined = sent["body"]["batch"]["inputConfig"]["requests"]["requests"]
    assert [item["request"]["labels"] for item in inlined] == [
        {"env": "prod", "run": "b2", "team": "search"},
        {"env": "dev", "run": "b2", "team": "search"},  # the request's own label wins
    ]
    assert "authorization" not in sent["headers"]


async def test_reading_a_done_batch_again_meters_it_once(
    stubs: dict[str, Any], gateway: Gateway, batch_emulator: EmulatorHandle, store_url: str
) -> None:
    request = batch_request(("again", {"run": "b3"}), ("and again", {"run": "b3"}))
    done = await run_batch(stubs, request, SEARCH_TOKEN)
    operations = stubs["operations"]
    for _ in range(2):
        await operations.GetOperation(
            operations_pb2.GetOperationRequest(name=done.name), metadata=bearer(SEARCH_TOKEN)
        )
    listed = await operations.ListOperations(
        operations_pb2.ListOperationsRequest(name="batches", page_size=100),
        metadata=bearer(SEARCH_TOKEN),
    )
    assert done.name in {op.name for op in listed.operations}
    # A second gateway on the same store (another replica) reading the same batch.
    replica = await start_gateway(settings(batch_emulator, store_url))
    try:
        async with grpc.aio.insecure_channel(replica.target) as channel:
            await operations_pb2_grpc.OperationsStub(channel).GetOperation(
                operations_pb2.GetOperationRequest(name=done.name), metadata=bearer(SEARCH_TOKEN)
            )
    finally:
        await replica.stop(0)
    result = await usage_of(stubs, SEARCH_TOKEN, "b3", [])
    assert result.totals.request_count == 2
    async with gateway.store.connect() as conn:
        metered = await conn.scalar(
            sa.select(BatchMeter.metered_time).where(BatchMeter.name == done.name)
        )
    assert metered is not None


async def test_failed_requests_of_a_batch_count_as_errors_without_tokens(
    stubs: dict[str, Any], batch_emulator: EmulatorHandle
) -> None:
    # The emulator answers a prompt holding [[fault:429]] with that error (fault injection).
    request = batch_request(("fine", {"run": "b4"}), ("slow down [[fault:429]]", {"run": "b4"}))
    done = await run_batch(stubs, request, SEARCH_TOKEN)
    answers = batch_output(done).inlined_responses.inlined_responses
    assert answers[1].error.code == grpc.StatusCode.RESOURCE_EXHAUSTED.value[0]
    result = await usage_of(stubs, SEARCH_TOKEN, "b4", ["status"])
    rows = {row.group_values["status"]: row for row in result.rows}
    assert rows["OK"].request_count == 1 and rows["OK"].tokens.total > 0
    limited = rows["RESOURCE_EXHAUSTED"]
    assert limited.request_count == limited.error_count == 1
    assert limited.tokens.total == 0


async def kept_batches(gateway: Gateway) -> int:
    async with gateway.store.connect() as conn:
        return int(await conn.scalar(sa.select(sa.func.count()).select_from(BatchMeter)) or 0)


async def test_bad_labels_in_a_batch_are_refused_before_upstream(
    stubs: dict[str, Any], batch_emulator: EmulatorHandle, gateway: Gateway
) -> None:
    before = len(batch_emulator.app[BATCHES_KEY].batches)
    kept_before = await kept_batches(gateway)
    request = batch_request(("fine", {"run": "b5"}), ("bad", {"Team": "x", "run": "b5"}))
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stubs["generative"].BatchGenerateContent(request, metadata=bearer(SEARCH_TOKEN))
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    status = rpc_status.from_call(caught.value)
    assert status is not None
    bad = error_details_pb2.BadRequest()
    assert status.details[0].Unpack(bad)
    fields = [v.field for v in bad.field_violations]
    assert fields == ["batch.input_config.requests.requests[1].request.labels[Team]"]
    assert len(batch_emulator.app[BATCHES_KEY].batches) == before
    assert await kept_batches(gateway) == kept_before


async def test_with_recording_off_batches_are_neither_kept_nor_metered(
    batch_emulator: EmulatorHandle, fresh_url: FreshUrl
) -> None:
    gw = await start_gateway(settings(batch_emulator, await fresh_url(), record_usage=False))
    try:
        async with grpc.aio.insecure_channel(gw.target) as channel:
            stubs = stubs_on(channel)
            await run_batch(stubs, batch_request(("off", {"run": "b6"})), SEARCH_TOKEN)
        async with gw.store.connect() as conn:
            for table in (BatchMeter, UsageEventRow):
                count = await conn.scalar(sa.select(sa.func.count()).select_from(table))
                assert count == 0
    finally:
        await gw.stop(0)


async def test_a_batch_run_while_the_gateway_was_down_is_metered_when_read(
    stubs: dict[str, Any], batch_emulator: EmulatorHandle, store_url: str
) -> None:
    """The batch goes on upstream whatever becomes of the gateway that submitted it."""
    first = await start_gateway(settings(batch_emulator, store_url))
    try:
        async with grpc.aio.insecure_channel(first.target) as channel:
            operation = await generative_service_pb2_grpc.GenerativeServiceStub(
                channel
            ).BatchGenerateContent(
                batch_request(("later", {"run": "b7"})), metadata=bearer(ADS_TOKEN)
            )
    finally:
        await first.stop(0)
    await asyncio.sleep(0.5)  # the batch ends meanwhile
    done = await stubs["operations"].GetOperation(
        operations_pb2.GetOperationRequest(name=operation.name), metadata=bearer(ADS_TOKEN)
    )
    assert done.done
    result = await usage_of(stubs, ADS_TOKEN, "b7", ["caller", "method"])
    assert [(dict(r.group_values), r.request_count) for r in result.rows] == [
        ({"caller": "bidder", "method": "BatchGenerateContent"}, 1)
    ]


async def test_stripped_labels_stay_out_of_the_batch_sent_but_in_its_usage(
    batch_emulator: EmulatorHandle, fresh_url: FreshUrl, http: aiohttp.ClientSession
) -> None:
    gw = await start_gateway(settings(batch_emulator, await fresh_url(), strip_labels=True))
    try:
        async with grpc.aio.insecure_channel(gw.target) as channel:
            stubs = stubs_on(channel)
            operation = await stubs["generative"].BatchGenerateContent(
                batch_request(("quiet", {"run": "b8"})), metadata=bearer(SEARCH_TOKEN)
            )
            sent = await last_upstream_request(http, batch_emulator)
            inlined = sent["body"]["batch"]["inputConfig"]["requests"]["requests"]
            assert "labels" not in inlined[0]["request"]
            await stubs["operations"].WaitOperation(
                operations_pb2.WaitOperationRequest(name=operation.name),
                metadata=bearer(SEARCH_TOKEN),
                timeout=30,
            )
            result = await usage_of(stubs, SEARCH_TOKEN, "b8", ["labels.team"])
        assert [(dict(r.group_values), r.request_count) for r in result.rows] == [
            ({"labels.team": "search"}, 1)
        ]
    finally:
        await gw.stop(0)


async def test_a_batch_nobody_reads_is_metered_by_the_sweeper(
    batch_emulator: EmulatorHandle, fresh_url: FreshUrl
) -> None:
    gw = await start_gateway(
        settings(batch_emulator, await fresh_url(), batch_meter_interval_s=0.2)
    )
    try:
        async with grpc.aio.insecure_channel(gw.target) as channel:
            stubs = stubs_on(channel)
            await stubs["generative"].BatchGenerateContent(
                batch_request(("unread", {"run": "b9"}), ("also unread", {"run": "b9"})),
                metadata=bearer(ADS_TOKEN),
            )
            # Nobody reads the batch: the sweeper does, once it has ended (0.3 s).
            for _ in range(100):
                result = await usage_of(stubs, ADS_TOKEN, "b9", ["caller"])
                if result.rows:
                    break
                await asyncio.sleep(0.1)
        assert [(dict(r.group_values), r.request_count) for r in result.rows] == [
            ({"caller": "bidder"}, 2)  # the submitting caller's, not the sweeper's
        ]
    finally:
        await gw.stop(0)


async def upstream_reads(emulator: EmulatorHandle, names: list[str]) -> dict[str, int]:
    """How many times the emulator was asked for each of `names` (GET batches/{id})."""
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{emulator.url}/_emulator/requests") as response:
            requests = await response.json()
    paths = [r["path"] for r in requests if r["method"] == "GET"]
    return {name: sum(path.endswith(f"/{name}") for path in paths) for name in names}


async def test_replicas_sweeping_at_once_read_each_batch_once_per_interval(
    batch_emulator: EmulatorHandle, fresh_url: FreshUrl
) -> None:
    """Two replicas on one store sweep at the same moment: each batch is read once, by one of
    them, and by neither again until its claim (one interval) has run out."""
    url = await fresh_url()
    # A 60 s interval: the replicas' own rounds do not start within the test; it runs them.
    replicas = [
        await start_gateway(settings(batch_emulator, url, batch_meter_interval_s=60))
        for _ in range(2)
    ]
    batch_emulator.app[BATCHES_KEY].seconds = 600.0  # not done: read each round
    try:
        async with grpc.aio.insecure_channel(replicas[0].target) as channel:
            stubs = stubs_on(channel)
            names = [
                (
                    await stubs["generative"].BatchGenerateContent(
                        batch_request((f"swept {i}", {"run": "b11"})), metadata=bearer(ADS_TOKEN)
                    )
                ).name
                for i in range(5)
            ]
        sweepers = [gw.batch_sweeper for gw in replicas]
        assert sweepers[0] is not None and sweepers[1] is not None
        before = await upstream_reads(batch_emulator, names)
        counts = await asyncio.gather(*(sweeper.sweep() for sweeper in sweepers))
        assert sum(counts) == len(names)
        after = await upstream_reads(batch_emulator, names)
        assert {name: after[name] - before[name] for name in names} == dict.fromkeys(names, 1)
        # Claimed until the next round: neither replica reads them again now.
        assert await asyncio.gather(*(sweeper.sweep() for sweeper in sweepers)) == [0, 0]
        # A claim that has run out (its replica stopped, say): the next round reads the batch.
        async with replicas[1].store.begin() as conn:
            await conn.execute(
                sa.update(BatchMeter)
                .where(BatchMeter.name == names[0])
                .values(read_after=datetime.now(UTC) - timedelta(seconds=1))
            )
        assert await sweepers[1].sweep() == 1
        assert (await upstream_reads(batch_emulator, names))[names[0]] == after[names[0]] + 1
    finally:
        batch_emulator.app[BATCHES_KEY].seconds = 0.3
        for gw in replicas:
            await gw.stop(0)


async def test_a_batch_deleted_before_it_was_read_is_left_unmetered(
    batch_emulator: EmulatorHandle, fresh_url: FreshUrl
) -> None:
    gw = await start_gateway(settings(batch_emulator, await fresh_url(), batch_meter_interval_s=0))
    try:
        async with grpc.aio.insecure_channel(gw.target) as channel:
            stubs = stubs_on(channel)
            kept = await stubs["generative"].BatchGenerateContent(
                batch_request(("kept", {"run": "b10"})), metadata=bearer(ADS_TOKEN)
            )
            deleted = await stubs["generative"].BatchGenerateContent(
                batch_request(("deleted", {"run": "b10"})), metadata=bearer(ADS_TOKEN)
            )
            await stubs["operations"].DeleteOperation(
                operations_pb2.DeleteOperationRequest(name=deleted.name),
                metadata=bearer(ADS_TOKEN),
            )
            sweeper = gw.batch_sweeper
            assert sweeper is not None
            gone_before = SEEN.labels("gone")._value.get()
            assert await sweeper.sweep() == 2  # both read; the deleted one is marked gone
            assert SEEN.labels("gone")._value.get() == gone_before + 1
            for _ in range(100):  # the other is read each round until it has ended
                if await sweeper.sweep() == 0:
                    break
                await asyncio.sleep(0.1)
            result = await usage_of(stubs, ADS_TOKEN, "b10", [])
        assert result.totals.request_count == 1
        async with gw.store.connect() as conn:
            marked = await conn.execute(sa.select(BatchMeter.name, BatchMeter.metered_time))
            assert {name: when is not None for name, when in marked} == {
                kept.name: True,
                deleted.name: True,
            }
    finally:
        await gw.stop(0)


async def test_in_pass_through_mode_no_sweeper_reads_batches(
    batch_emulator: EmulatorHandle, fresh_url: FreshUrl
) -> None:
    """Without a key of its own, the gateway would fail every read: it does not try."""
    gw = await start_gateway(settings(batch_emulator, await fresh_url(), pass_through_api_key=True))
    try:
        assert gw.batch_sweeper is None
    finally:
        await gw.stop(0)
    gw = await start_gateway(settings(batch_emulator, await fresh_url()))
    try:
        assert gw.batch_sweeper is not None
    finally:
        await gw.stop(0)
