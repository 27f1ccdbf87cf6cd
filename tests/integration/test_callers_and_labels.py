"""Callers, projects and default labels from configuration; labels stripped upstream; the
metrics' label allow-list; a store that goes down while calls run."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import aiohttp
import grpc
import pytest
from prometheus_client import REGISTRY

from gemini_gateway.client.gateway_client import text_request
from gemini_gateway.emulator.runner import EmulatorHandle
from gemini_gateway.generated.gemini.gateway.v1 import usage_pb2, usage_pb2_grpc
from gemini_gateway.generated.google.ai.generativelanguage.v1beta import (
    generative_service_pb2_grpc,
)
from gemini_gateway.server.app import Gateway, start_gateway
from gemini_gateway.server.config import CallerConfig, ProjectConfig, Settings
from gemini_gateway.server.identity import token_sha256
from tests.integration.conftest import last_upstream_request
from tests.postgres import PostgresAdmin, require

MODEL = "models/gemini-2.5-flash"
SEARCH_TOKEN = "search-frontend-token"
ADS_TOKEN = "ads-batch-token"


def bearer(token: str) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {token}"),)


@pytest.fixture(scope="module")
async def gateway(
    emulator: EmulatorHandle, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[Gateway]:
    settings = Settings(
        upstream="emulator",
        upstream_url=emulator.url,
        port=0,
        store_url=f"sqlite+aiosqlite:///{tmp_path_factory.mktemp('callers')}/gw.db",
        default_labels={"gateway": "gw-1", "env": "prod"},
        projects={
            "search": ProjectConfig(
                default_labels={"team": "search", "env": "staging"},
                callers=[
                    CallerConfig(
                        name="search-frontend",
                        token_sha256=token_sha256(SEARCH_TOKEN),
                        default_labels={"component": "frontend"},
                    )
                ],
            ),
            "ads": ProjectConfig(
                default_labels={f"d{i}": "x" for i in range(60)},
                callers=[CallerConfig(name="ads-batch", token_sha256=token_sha256(ADS_TOKEN))],
            ),
        },
    )
    gw = await start_gateway(settings)
    yield gw
    await gw.stop(0)


@pytest.fixture
def usage(channel: grpc.aio.Channel) -> usage_pb2_grpc.UsageServiceStub:
    return usage_pb2_grpc.UsageServiceStub(channel)


async def test_defaults_merge_under_the_calls_own_labels(
    generative: generative_service_pb2_grpc.GenerativeServiceStub,
    http: aiohttp.ClientSession,
    emulator: EmulatorHandle,
) -> None:
    await generative.GenerateContent(
        text_request(MODEL, "hi", {"component": "reranker", "run": "m1"}),
        metadata=bearer(SEARCH_TOKEN),
    )
    sent = await last_upstream_request(http, emulator)
    # gateway < project < caller < call: each level overrides the one before.
    assert sent["body"]["labels"] == {
        "gateway": "gw-1",
        "env": "staging",
        "team": "search",
        "component": "reranker",
        "run": "m1",
    }
    assert "authorization" not in sent["headers"]  # the caller's token stays here


async def test_usage_is_recorded_under_the_callers_project(
    gateway: Gateway,
    generative: generative_service_pb2_grpc.GenerativeServiceStub,
    usage: usage_pb2_grpc.UsageServiceStub,
) -> None:
    await generative.GenerateContent(
        text_request(MODEL, "hi", {"run": "m2"}), metadata=bearer(SEARCH_TOKEN)
    )
    assert gateway.recorder is not None
    await gateway.recorder.flush()
    answer = await usage.QueryUsage(
        usage_pb2.QueryUsageRequest(
            filter='labels.run = "m2"', group_by=["project", "caller", "labels.component"]
        ),
        metadata=bearer(SEARCH_TOKEN),
    )
    (row,) = answer.rows
    assert dict(row.group_values) == {
        "project": "search",
        "caller": "search-frontend",
        "labels.component": "frontend",
    }
    # The other project sees none of it.
    other = await usage.QueryUsage(
        usage_pb2.QueryUsageRequest(filter='labels.run = "m2"'), metadata=bearer(ADS_TOKEN)
    )
    assert other.totals.request_count == 0


async def test_merged_labels_are_validated_as_one_set(
    generative: generative_service_pb2_grpc.GenerativeServiceStub,
) -> None:
    # 2 gateway + 60 project defaults + 3 own labels = 65: over the limit although each
    # part is fine.
    own = {f"own{i}": "y" for i in range(3)}
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await generative.GenerateContent(text_request(MODEL, "hi", own), metadata=bearer(ADS_TOKEN))
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "65" in (caught.value.details() or "")
    await generative.GenerateContent(
        text_request(MODEL, "hi", {"own": "y"}), metadata=bearer(ADS_TOKEN)
    )


@pytest.mark.parametrize(
    ("metadata", "code"),
    [
        ((), grpc.StatusCode.UNAUTHENTICATED),
        (bearer("wrong-token"), grpc.StatusCode.UNAUTHENTICATED),
        ((("authorization", "Basic abc"),), grpc.StatusCode.UNAUTHENTICATED),
    ],
    ids=["missing", "unknown", "not bearer"],
)
async def test_unknown_callers_are_refused(
    generative: generative_service_pb2_grpc.GenerativeServiceStub,
    usage: usage_pb2_grpc.UsageServiceStub,
    metadata: tuple[tuple[str, str], ...],
    code: grpc.StatusCode,
) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await generative.GenerateContent(text_request(MODEL, "hi"), metadata=metadata)
    assert caught.value.code() == code
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await usage.QueryUsage(usage_pb2.QueryUsageRequest(), metadata=metadata)
    assert caught.value.code() == code


async def test_another_projects_usage_is_permission_denied(
    usage: usage_pb2_grpc.UsageServiceStub,
) -> None:
    search = bearer(SEARCH_TOKEN)
    calls = {
        "QueryUsage": lambda: usage.QueryUsage(
            usage_pb2.QueryUsageRequest(parent="projects/ads"), metadata=search
        ),
        "ListLabelKeys": lambda: usage.ListLabelKeys(
            usage_pb2.ListLabelKeysRequest(parent="projects/ads"), metadata=search
        ),
        "ListLabelValues": lambda: usage.ListLabelValues(
            usage_pb2.ListLabelValuesRequest(parent="projects/ads/labelKeys/team"),
            metadata=search,
        ),
    }
    for name, call in calls.items():
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await call()
        assert caught.value.code() == grpc.StatusCode.PERMISSION_DENIED, name
        assert "ads" in (caught.value.details() or "")
    # Its own project, by name, is fine.
    own = await usage.QueryUsage(
        usage_pb2.QueryUsageRequest(parent="projects/search"), metadata=search
    )
    assert own.totals.request_count >= 0


@pytest.fixture(scope="module")
async def stripping_gateway(
    emulator: EmulatorHandle, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[Gateway]:
    gw = await start_gateway(
        Settings(
            upstream="emulator",
            upstream_url=emulator.url,
            port=0,
            strip_labels=True,
            metrics_label_keys=["team"],
            store_url=f"sqlite+aiosqlite:///{tmp_path_factory.mktemp('strip')}/gw.db",
        )
    )
    yield gw
    await gw.stop(0)


async def test_strip_labels_keeps_them_local(
    stripping_gateway: Gateway, http: aiohttp.ClientSession, emulator: EmulatorHandle
) -> None:
    async with grpc.aio.insecure_channel(stripping_gateway.target) as channel:
        stub = generative_service_pb2_grpc.GenerativeServiceStub(channel)
        await stub.GenerateContent(text_request(MODEL, "hi", {"team": "search", "run": "s1"}))
        sent = await last_upstream_request(http, emulator)
        assert "labels" not in sent["body"]
        assert stripping_gateway.recorder is not None
        await stripping_gateway.recorder.flush()
        answer = await usage_pb2_grpc.UsageServiceStub(channel).QueryUsage(
            usage_pb2.QueryUsageRequest(filter='labels.run = "s1"', group_by=["labels.team"])
        )
        assert [(r.group_values["labels.team"], r.request_count) for r in answer.rows] == [
            ("search", 1)
        ]


async def test_metrics_carry_only_allowed_label_keys(stripping_gateway: Gateway) -> None:
    async with grpc.aio.insecure_channel(stripping_gateway.target) as channel:
        stub = generative_service_pb2_grpc.GenerativeServiceStub(channel)
        labels = {"team": "metrics-team", "request_id": "r-123"}
        answer = await stub.GenerateContent(text_request(MODEL, "hi", labels))
    sample = REGISTRY.get_sample_value(
        "gateway_generate_requests_total",
        {"model": MODEL, "method": "GenerateContent", "status": "OK", "label_team": "metrics-team"},
    )
    assert sample is not None and sample >= 1
    tokens = REGISTRY.get_sample_value(
        "gateway_generate_tokens_total",
        {"model": MODEL, "kind": "prompt", "label_team": "metrics-team"},
    )
    assert tokens is not None and tokens >= answer.usage_metadata.prompt_token_count
    for metric in REGISTRY.collect():
        for sample_ in metric.samples:
            assert "request_id" not in sample_.labels
            assert "r-123" not in sample_.labels.values()


@pytest.mark.postgres
async def test_store_down_fails_no_call_and_counts_drops(
    emulator: EmulatorHandle,
    postgres: PostgresAdmin,
) -> None:
    """The outage: the gateway's PostgreSQL database is dropped while it serves."""
    require(postgres)
    url = postgres.url(await postgres.create())
    gw = await start_gateway(
        Settings(upstream="emulator", upstream_url=emulator.url, port=0, store_url=url)
    )
    try:
        await postgres.drop(url.rsplit("/", 1)[1])  # the store goes away under the gateway

        def dropped() -> float:
            return sum(
                REGISTRY.get_sample_value(
                    "gateway_recorder_dropped_events_total", {"reason": reason}
                )
                or 0.0
                for reason in ("queue_full", "store_error", "stopped")
            )

        before = dropped()
        async with grpc.aio.insecure_channel(gw.target) as channel:
            stub = generative_service_pb2_grpc.GenerativeServiceStub(channel)
            answers = await asyncio.gather(
                *(stub.GenerateContent(text_request(MODEL, f"call {i}")) for i in range(20))
            )
        assert all(answer.candidates for answer in answers)
        assert gw.recorder is not None
        await gw.recorder.flush()
        assert dropped() - before == 20
    finally:
        await gw.stop(0)
