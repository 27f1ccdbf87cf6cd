"""Labels and usage through a real gateway, the emulator and a real store (SQLite, PostgreSQL).

Each test tags its calls with a label value of its own (`run`), so the shared store of the
module answers for that test's calls only.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import aiohttp
import grpc
import pytest
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from gemini_gateway.client.gateway_client import text_request
from gemini_gateway.emulator.runner import EmulatorHandle
from gemini_gateway.generated.gemini.gateway.v1 import usage_pb2, usage_pb2_grpc
from gemini_gateway.generated.google.ai.generativelanguage.v1beta import (
    generative_service_pb2_grpc,
)
from gemini_gateway.server.app import Gateway, start_gateway
from gemini_gateway.server.config import Settings
from gemini_gateway.server.pricing import LONG_PROMPT_TOKENS, PriceTable, TokenSums
from tests.integration.conftest import emulator_stats
from tests.store.support import FreshUrl

MODEL = "models/gemini-2.5-flash"


@pytest.fixture(scope="module")
async def gateway(fresh_url: FreshUrl, emulator: EmulatorHandle) -> AsyncIterator[Gateway]:
    gw = await start_gateway(
        Settings(
            upstream="emulator",
            upstream_url=emulator.url,
            port=0,
            store_url=await fresh_url(),
            metrics_label_keys=["team"],
        )
    )
    yield gw
    await gw.stop(0)


@pytest.fixture
def usage(channel: grpc.aio.Channel) -> usage_pb2_grpc.UsageServiceStub:
    return usage_pb2_grpc.UsageServiceStub(channel)


async def query(
    gateway: Gateway,
    usage: usage_pb2_grpc.UsageServiceStub,
    run: str,
    group_by: list[str],
    **fields: object,
) -> usage_pb2.QueryUsageResponse:
    assert gateway.recorder is not None
    await gateway.recorder.flush()
    request = usage_pb2.QueryUsageRequest(
        filter=f'labels.run = "{run}"', group_by=group_by, **fields
    )
    return await usage.QueryUsage(request)


def violations(error: grpc.aio.AioRpcError) -> dict[str, str]:
    status = rpc_status.from_call(error)
    assert status is not None
    (detail,) = status.details
    bad_request = error_details_pb2.BadRequest()
    assert detail.Unpack(bad_request)
    return {v.field: v.description for v in bad_request.field_violations}


# --- label rules -----------------------------------------------------------------------

ACCEPTED = {
    "plain": {"team": "search", "env": "prod"},
    "empty value": {"team": ""},
    "digits dashes underscores": {"cost-center_2": "cc-42_x"},
    "international letters": {"équipe": "recherche", "日本": "東京", "команда": "поиск"},
    "63-character key and value": {"k" * 63: "v" * 63},
    "63 characters, 126 bytes": {"é" * 63: "é" * 63},
    "64 labels": {f"k{i}": str(i) for i in range(63)},  # + the test's own `run` label
}


@pytest.mark.parametrize("labels", ACCEPTED.values(), ids=ACCEPTED.keys())
async def test_labels_reach_upstream_exactly(
    generative: generative_service_pb2_grpc.GenerativeServiceStub,
    http: aiohttp.ClientSession,
    emulator: EmulatorHandle,
    run: str,
    labels: dict[str, str],
) -> None:
    sent = {**labels, "run": run}
    await generative.GenerateContent(text_request(MODEL, "hello", sent))
    async with http.get(f"{emulator.url}/_emulator/requests") as response:
        received = [r["body"].get("labels") for r in await response.json() if r["body"]]
    assert sent in received


REJECTED = {
    "65 labels": (
        {f"k{i}": "v" for i in range(64)},
        "labels",
        "at most 64",
    ),
    "64-character key": ({"k" * 64: "v"}, "labels[" + "k" * 40, "63"),
    "64-character value": ({"team": "v" * 64}, "labels[team]", "63"),
    "space and punctuation": ({"Bad Key!": "x"}, "labels[Bad Key!]", "lowercase"),
    "empty key": ({"": "x"}, "labels[]", "empty"),
    "uppercase": ({"Team": "x"}, "labels[Team]", "lowercase"),
    "uppercase value": ({"team": "Search"}, "labels[team]", "lowercase"),
    "key starts with a digit": ({"1team": "x"}, "labels[1team]", "start"),
    "key starts with a dash": ({"-team": "x"}, "labels[-team]", "start"),
    "uppercase international letter": ({"équipe": "É"}, "labels[équipe]", "lowercase"),
}


@pytest.mark.parametrize(("labels", "field", "words"), REJECTED.values(), ids=list(REJECTED.keys()))
@pytest.mark.parametrize("streaming", [False, True], ids=["unary", "stream"])
async def test_bad_labels_are_rejected_before_upstream(
    generative: generative_service_pb2_grpc.GenerativeServiceStub,
    http: aiohttp.ClientSession,
    emulator: EmulatorHandle,
    gateway: Gateway,
    usage: usage_pb2_grpc.UsageServiceStub,
    run: str,
    labels: dict[str, str],
    field: str,
    words: str,
    streaming: bool,
) -> None:
    before = (await emulator_stats(http, emulator))["started"]
    request = text_request(MODEL, "hello", {**labels, "run": run})
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        if streaming:
            async for _ in generative.StreamGenerateContent(request):
                pass
        else:
            await generative.GenerateContent(request)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    found = violations(caught.value)
    (matching,) = [name for name in found if name.startswith(field)]
    assert words in found[matching]
    assert len(found) == 1  # one violation per bad label
    assert (await emulator_stats(http, emulator))["started"] == before
    answer = await query(gateway, usage, run, [])
    assert answer.totals.request_count == 0


@pytest.mark.parametrize(
    "labels",
    [
        {f"key{i}": "x" * 5000 for i in range(1000)},
        {"日本語" * 30 + str(i): "É" * 70 for i in range(80)},  # percent-encoded: 3x the bytes
    ],
    ids=["ascii", "international"],
)
async def test_many_huge_labels_are_one_short_error(
    generative: generative_service_pb2_grpc.GenerativeServiceStub, labels: dict[str, str]
) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await generative.GenerateContent(text_request(MODEL, "hello", labels))
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    found = violations(caught.value)
    assert "labels" in found and str(len(labels)) in found["labels"]
    assert "more violations, not listed" in found[""]
    assert len((caught.value.details() or "").encode()) < 2000


async def test_tuned_model_calls_are_validated_too(
    generative: generative_service_pb2_grpc.GenerativeServiceStub,
) -> None:
    request = text_request("tunedModels/does-not-matter", "hello", {"Bad": "x"})
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await generative.GenerateContent(request)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert list(violations(caught.value)) == ["labels[Bad]"]


# --- usage rows ------------------------------------------------------------------------


async def test_unary_call_is_recorded_with_tokens_and_cost(
    gateway: Gateway,
    generative: generative_service_pb2_grpc.GenerativeServiceStub,
    usage: usage_pb2_grpc.UsageServiceStub,
    run: str,
) -> None:
    answer = await generative.GenerateContent(
        text_request(MODEL, "count my tokens please", {"team": "search", "run": run})
    )
    tokens = answer.usage_metadata
    result = await query(gateway, usage, run, ["labels.team", "model", "method", "status"])
    (row,) = result.rows
    assert dict(row.group_values) == {
        "labels.team": "search",
        "model": MODEL,
        "method": "GenerateContent",
        "status": "OK",
    }
    assert (row.request_count, row.error_count, row.incomplete_count) == (1, 0, 0)
    assert row.tokens.prompt == tokens.prompt_token_count > 0
    assert row.tokens.candidates == tokens.candidates_token_count > 0
    assert row.tokens.total == tokens.total_token_count
    expected = PriceTable.load().cost(
        MODEL,
        tokens.prompt_token_count > LONG_PROMPT_TOKENS,
        TokenSums(
            prompt=tokens.prompt_token_count,
            candidates=tokens.candidates_token_count,
            cached=tokens.cached_content_token_count,
            thoughts=tokens.thoughts_token_count,
            tool_use=tokens.tool_use_prompt_token_count,
        ),
    )
    assert row.estimated_cost == pytest.approx(expected) and expected > 0
    assert result.totals.request_count == 1
    assert result.price_table.currency == "USD" and result.price_table.read_on


async def test_streamed_call_is_recorded_from_its_last_chunk(
    gateway: Gateway,
    generative: generative_service_pb2_grpc.GenerativeServiceStub,
    usage: usage_pb2_grpc.UsageServiceStub,
    run: str,
) -> None:
    chunks = [
        chunk
        async for chunk in generative.StreamGenerateContent(
            text_request(MODEL, "a story [[chunks:4]]", {"run": run})
        )
    ]
    assert len(chunks) == 4
    last = chunks[-1].usage_metadata
    result = await query(gateway, usage, run, ["method", "status"])
    (row,) = result.rows
    assert dict(row.group_values) == {"method": "StreamGenerateContent", "status": "OK"}
    assert row.incomplete_count == 0
    assert row.tokens.total == last.total_token_count > 0
    assert row.tokens.candidates == last.candidates_token_count


async def test_failed_call_is_recorded_as_an_error(
    gateway: Gateway,
    generative: generative_service_pb2_grpc.GenerativeServiceStub,
    usage: usage_pb2_grpc.UsageServiceStub,
    run: str,
) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await generative.GenerateContent(text_request(MODEL, "[[fault:429]]", {"run": run}))
    assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    result = await query(gateway, usage, run, ["status"])
    (row,) = result.rows
    assert dict(row.group_values) == {"status": "RESOURCE_EXHAUSTED"}
    assert (row.request_count, row.error_count, row.tokens.total) == (1, 1, 0)


async def test_cut_short_stream_is_recorded_incomplete(
    gateway: Gateway,
    generative: generative_service_pb2_grpc.GenerativeServiceStub,
    usage: usage_pb2_grpc.UsageServiceStub,
    run: str,
) -> None:
    seen = 0
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        async for _ in generative.StreamGenerateContent(
            text_request(MODEL, "story [[chunks:5]] [[fault:disconnect]]", {"run": run})
        ):
            seen += 1
    assert seen == 1
    assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
    result = await query(gateway, usage, run, ["status"])
    (row,) = result.rows
    assert dict(row.group_values) == {"status": "UNAVAILABLE"}
    assert (row.request_count, row.error_count, row.incomplete_count) == (1, 1, 1)


async def test_cancelled_stream_is_recorded_cancelled(
    gateway: Gateway,
    generative: generative_service_pb2_grpc.GenerativeServiceStub,
    usage: usage_pb2_grpc.UsageServiceStub,
    run: str,
) -> None:
    call = generative.StreamGenerateContent(
        text_request(MODEL, "story [[chunks:10]] [[chunk_delay_ms:200]]", {"run": run})
    )
    await call.read()
    call.cancel()
    for _ in range(100):  # the gateway notices the cancellation on its own time
        result = await query(gateway, usage, run, ["status"])
        if result.rows:
            break
        await asyncio.sleep(0.05)
    (row,) = result.rows
    assert dict(row.group_values) == {"status": "CANCELLED"}
    assert (row.request_count, row.incomplete_count) == (1, 1)


async def test_grouping_by_two_label_keys_model_and_day(
    gateway: Gateway,
    generative: generative_service_pb2_grpc.GenerativeServiceStub,
    usage: usage_pb2_grpc.UsageServiceStub,
    run: str,
) -> None:
    calls = [
        ({"team": "search", "env": "prod"}, "models/gemini-2.5-flash"),
        ({"team": "search", "env": "prod"}, "models/gemini-2.5-flash"),
        ({"team": "search", "env": "dev"}, "models/gemini-2.5-pro"),
        ({"team": "ads"}, "models/gemini-2.5-flash"),
        ({}, "models/gemini-2.5-flash"),
    ]
    for labels, model in calls:
        await generative.GenerateContent(text_request(model, "hi", {**labels, "run": run}))

    two_keys = await query(gateway, usage, run, ["labels.team", "labels.env"])
    counts = {
        (row.group_values["labels.team"], row.group_values["labels.env"]): row.request_count
        for row in two_keys.rows
    }
    assert counts == {
        ("search", "prod"): 2,
        ("search", "dev"): 1,
        ("ads", "(none)"): 1,
        ("(none)", "(none)"): 1,
    }
    assert two_keys.totals.request_count == 5
    assert two_keys.totals.estimated_cost == pytest.approx(
        sum(row.estimated_cost for row in two_keys.rows)
    )

    by_model = await query(gateway, usage, run, ["model"])
    assert {r.group_values["model"]: r.request_count for r in by_model.rows} == {
        "models/gemini-2.5-flash": 4,
        "models/gemini-2.5-pro": 1,
    }
    # Same tokens cost more on Pro than on Flash: rows come most expensive first.
    assert by_model.rows[0].estimated_cost >= by_model.rows[1].estimated_cost

    today = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    by_day = await query(
        gateway, usage, run, ["labels.team"], time_bucket=usage_pb2.TIME_BUCKET_DAY
    )
    assert {row.bucket_start_time.ToDatetime(tzinfo=UTC) for row in by_day.rows} == {today}
    assert sum(row.request_count for row in by_day.rows) == 5

    filtered = await usage.QueryUsage(
        usage_pb2.QueryUsageRequest(
            filter=f'labels.run = "{run}" AND labels.team = "search" AND model != '
            '"models/gemini-2.5-pro"',
            group_by=["labels.env"],
        )
    )
    assert [(r.group_values["labels.env"], r.request_count) for r in filtered.rows] == [("prod", 2)]

    keys = await usage.ListLabelKeys(usage_pb2.ListLabelKeysRequest())
    assert {"team", "env", "run"} <= {item.key for item in keys.label_keys}
    values = await usage.ListLabelValues(
        usage_pb2.ListLabelValuesRequest(parent="projects/default/labelKeys/env")
    )
    assert {"prod", "dev"} <= {item.value for item in values.label_values}


async def test_time_range_excludes_calls_outside_it(
    gateway: Gateway,
    generative: generative_service_pb2_grpc.GenerativeServiceStub,
    usage: usage_pb2_grpc.UsageServiceStub,
    run: str,
) -> None:
    await generative.GenerateContent(text_request(MODEL, "hi", {"run": run}))
    now = datetime.now(UTC)
    request = usage_pb2.QueryUsageRequest(filter=f'labels.run = "{run}"')
    request.start_time.FromDatetime(now - timedelta(days=2))
    request.end_time.FromDatetime(now - timedelta(days=1))
    assert gateway.recorder is not None
    await gateway.recorder.flush()
    assert (await usage.QueryUsage(request)).totals.request_count == 0
    request.end_time.FromDatetime(now + timedelta(minutes=1))
    assert (await usage.QueryUsage(request)).totals.request_count == 1


BAD_QUERIES = {
    "unknown group key": {"group_by": ["colour"]},
    "bad label key": {"group_by": ["labels.Bad Key"]},
    "six group keys": {"group_by": ["model", "method", "status", "caller", "project", "labels.a"]},
    "filter syntax": {"filter": 'model = "x" AND ('},
    "unknown filter field": {"filter": 'colour = "red"'},
    "page token of nothing": {"page_token": "not-a-token"},
    "negative page size": {"page_size": -1},
    "parent of another shape": {"parent": "folders/1"},
}


@pytest.mark.parametrize("fields", BAD_QUERIES.values(), ids=BAD_QUERIES.keys())
async def test_bad_queries_are_invalid_argument(
    usage: usage_pb2_grpc.UsageServiceStub, fields: dict[str, object]
) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await usage.QueryUsage(usage_pb2.QueryUsageRequest(**fields))  # type: ignore[arg-type]
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "Error" not in (caught.value.details() or "")  # no Python class names


async def test_paging_walks_every_group_once(
    gateway: Gateway,
    generative: generative_service_pb2_grpc.GenerativeServiceStub,
    usage: usage_pb2_grpc.UsageServiceStub,
    run: str,
) -> None:
    for i in range(5):
        await generative.GenerateContent(text_request(MODEL, "hi", {"run": run, "n": str(i)}))
    assert gateway.recorder is not None
    await gateway.recorder.flush()
    seen: list[str] = []
    token = ""
    while True:
        page = await usage.QueryUsage(
            usage_pb2.QueryUsageRequest(
                filter=f'labels.run = "{run}"', group_by=["labels.n"], page_size=2,
                page_token=token,
            )
        )  # fmt: skip
        assert len(page.rows) <= 2
        seen += [row.group_values["labels.n"] for row in page.rows]
        assert page.totals.request_count == 5
        token = page.next_page_token
        if not token:
            break
    assert sorted(seen) == ["0", "1", "2", "3", "4"]
