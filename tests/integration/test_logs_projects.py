"""Request logs per project (SQLite, PostgreSQL): a caller reaches only its own project's logs,
settings and tail; the log limit under both policies; a store outage fails no call; a
graceful shutdown writes every log it holds."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest
from prometheus_client import REGISTRY

from gemini_gateway.client.gateway_client import text_request
from gemini_gateway.emulator.runner import EmulatorHandle
from gemini_gateway.generated.gemini.gateway.v1 import logs_pb2, logs_pb2_grpc
from gemini_gateway.generated.google.ai.generativelanguage.v1beta import (
    generative_service_pb2_grpc,
)
from gemini_gateway.server.app import Gateway, start_gateway
from gemini_gateway.server.config import (
    CallerConfig,
    ProjectConfig,
    ProjectLoggingConfig,
    Settings,
)
from gemini_gateway.server.identity import token_sha256
from tests.postgres import PostgresAdmin, require
from tests.store.support import FreshUrl

MODEL = "models/gemini-2.5-flash"
SLOW = "slow [[chunks:3]] [[chunk_delay_ms:100]]"
TOKENS = {"search": "search-token", "ads": "ads-token", "small": "small-token"}


def bearer(project: str) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {TOKENS[project]}"),)


def project(name: str, **logging: Any) -> ProjectConfig:
    return ProjectConfig(
        callers=[CallerConfig(name=f"{name}-app", token_sha256=token_sha256(TOKENS[name]))],
        logging=ProjectLoggingConfig(**logging),
    )


@pytest.fixture(scope="module")
async def gateway(fresh_url: FreshUrl, emulator: EmulatorHandle) -> AsyncIterator[Gateway]:
    # Logging is off gateway-wide and on per project, by configuration.
    gw = await start_gateway(
        Settings(
            upstream="emulator",
            upstream_url=emulator.url,
            port=0,
            store_url=await fresh_url(),
            logging_enabled=False,
            projects={
                "search": project("search", enabled=True),
                "ads": project("ads", enabled=True),
                "small": project("small", enabled=True, max_logs=2),
            },
        )
    )
    yield gw
    await gw.stop(0)


@pytest.fixture
def logs(channel: grpc.aio.Channel) -> logs_pb2_grpc.LogServiceStub:
    return logs_pb2_grpc.LogServiceStub(channel)


async def call(
    generative: generative_service_pb2_grpc.GenerativeServiceStub, who: str, prompt: str
) -> None:
    await generative.GenerateContent(text_request(MODEL, prompt), metadata=bearer(who))


async def listed(
    gateway: Gateway, logs: logs_pb2_grpc.LogServiceStub, who: str, **fields: Any
) -> logs_pb2.ListLogsResponse:
    await gateway.recorder.flush()
    return await logs.ListLogs(logs_pb2.ListLogsRequest(**fields), metadata=bearer(who))


async def settings(logs: logs_pb2_grpc.LogServiceStub, who: str) -> logs_pb2.LoggingSettings:
    return await logs.GetLoggingSettings(
        logs_pb2.GetLoggingSettingsRequest(name=f"projects/{who}/loggingSettings"),
        metadata=bearer(who),
    )


async def test_each_project_sees_only_its_own_logs(
    gateway: Gateway,
    generative: generative_service_pb2_grpc.GenerativeServiceStub,
    logs: logs_pb2_grpc.LogServiceStub,
) -> None:
    await call(generative, "search", "search's secret question")
    (mine,) = (await listed(gateway, logs, "search", filter='"secret"')).logs
    assert mine.name.startswith("projects/search/logs/") and mine.caller == "search-app"
    assert (await listed(gateway, logs, "ads", filter='"secret"')).logs == []

    ads = bearer("ads")
    refused = {
        "ListLogs": logs.ListLogs(logs_pb2.ListLogsRequest(parent="projects/search"), metadata=ads),
        "GetLog": logs.GetLog(logs_pb2.GetLogRequest(name=mine.name), metadata=ads),
        "DeleteLogs by name": logs.DeleteLogs(
            logs_pb2.DeleteLogsRequest(names=[mine.name]), metadata=ads
        ),
        "DeleteLogs by parent": logs.DeleteLogs(
            logs_pb2.DeleteLogsRequest(parent="projects/search", all=True), metadata=ads
        ),
        "GetLoggingSettings": logs.GetLoggingSettings(
            logs_pb2.GetLoggingSettingsRequest(name="projects/search/loggingSettings"),
            metadata=ads,
        ),
        "UpdateLoggingSettings": logs.UpdateLoggingSettings(
            logs_pb2.UpdateLoggingSettingsRequest(
                settings=logs_pb2.LoggingSettings(
                    name="projects/search/loggingSettings", enabled=False
                )
            ),
            metadata=ads,
        ),
    }
    for name, refusal in refused.items():
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await refusal
        assert caught.value.code() == grpc.StatusCode.PERMISSION_DENIED, name
    tail = logs.TailLogs(logs_pb2.TailLogsRequest(parent="projects/search"), metadata=ads)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await tail.read()
    assert caught.value.code() == grpc.StatusCode.PERMISSION_DENIED

    # Deleting everything of its own leaves the other project's logs alone.
    await logs.DeleteLogs(logs_pb2.DeleteLogsRequest(all=True), metadata=ads)
    assert [log.name for log in (await listed(gateway, logs, "search")).logs] == [mine.name]
    assert (await settings(logs, "search")).enabled is True
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await logs.ListLogs(logs_pb2.ListLogsRequest())
    assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED


async def test_a_tail_receives_nothing_of_another_project(
    gateway: Gateway,
    generative: generative_service_pb2_grpc.GenerativeServiceStub,
    logs: logs_pb2_grpc.LogServiceStub,
) -> None:
    tail = logs.TailLogs(logs_pb2.TailLogsRequest(), metadata=bearer("ads"))
    await tail.initial_metadata()
    try:
        await call(generative, "search", "for search only")
        await gateway.recorder.flush()
        await call(generative, "ads", "for ads")
        await gateway.recorder.flush()
        first = await asyncio.wait_for(tail.read(), 10)
        assert first.log.prompt_preview == "for ads"
        assert first.log.name.startswith("projects/ads/logs/")
    finally:
        tail.cancel()


async def test_the_limit_under_stop_logging_then_evict_oldest(
    gateway: Gateway,
    generative: generative_service_pb2_grpc.GenerativeServiceStub,
    logs: logs_pb2_grpc.LogServiceStub,
) -> None:
    small = bearer("small")
    for prompt in ("one", "two", "three"):
        await call(generative, "small", prompt)
    page = await listed(gateway, logs, "small")
    # As AI Studio: the first two are kept, the third is not stored and is counted.
    assert [log.prompt_preview for log in page.logs] == ["two", "one"]
    assert page.limit_reached and "delete" in page.notice.lower()
    state = await settings(logs, "small")
    assert (state.log_count, state.max_logs, state.limit_reached) == (2, 2, True)
    assert state.at_limit == logs_pb2.STOP_LOGGING
    assert state.skipped_at_limit_count == 1 and state.notice == page.notice

    changed = await logs.UpdateLoggingSettings(
        logs_pb2.UpdateLoggingSettingsRequest(
            settings=logs_pb2.LoggingSettings(
                name="projects/-/loggingSettings", at_limit=logs_pb2.EVICT_OLDEST
            )
        ),
        metadata=small,
    )
    assert changed.at_limit == logs_pb2.EVICT_OLDEST
    assert not changed.limit_reached and changed.notice == ""
    await call(generative, "small", "four")
    page = await listed(gateway, logs, "small")
    assert [log.prompt_preview for log in page.logs] == ["four", "two"]
    assert not page.limit_reached and page.notice == ""
    state = await settings(logs, "small")
    assert (state.log_count, state.evicted_count, state.skipped_at_limit_count) == (2, 1, 1)

    deleted = await logs.DeleteLogs(logs_pb2.DeleteLogsRequest(all=True), metadata=small)
    assert deleted.deleted_count == 2
    assert (await settings(logs, "small")).log_count == 0


def dropped() -> float:
    return sum(
        REGISTRY.get_sample_value("gateway_recorder_dropped_events_total", {"reason": reason})
        or 0.0
        for reason in ("queue_full", "store_error", "stopped")
    )


@pytest.mark.postgres
async def test_store_down_fails_no_call_and_counts_dropped_logs(
    emulator: EmulatorHandle, postgres: PostgresAdmin
) -> None:
    """The outage: the gateway's PostgreSQL database is dropped while it serves."""
    require(postgres)
    url = postgres.url(await postgres.create())
    gw = await start_gateway(
        Settings(
            upstream="emulator",
            upstream_url=emulator.url,
            port=0,
            store_url=url,
            logging_enabled=True,
        )
    )
    try:
        await postgres.drop(url.rsplit("/", 1)[1])  # the store goes away under the gateway
        before = dropped()
        async with grpc.aio.insecure_channel(gw.target) as channel:
            stub = generative_service_pb2_grpc.GenerativeServiceStub(channel)
            answers = await asyncio.gather(
                *(stub.GenerateContent(text_request(MODEL, f"call {i}")) for i in range(10))
            )
            chunks = [
                chunk async for chunk in stub.StreamGenerateContent(text_request(MODEL, "more"))
            ]
        assert all(answer.candidates for answer in answers) and chunks
        await gw.recorder.flush()
        assert dropped() - before == 2 * 11  # a usage event and a log of each call
    finally:
        await gw.stop(0)


async def test_graceful_shutdown_writes_every_log(
    emulator: EmulatorHandle, fresh_url: FreshUrl
) -> None:
    config = Settings(
        upstream="emulator",
        upstream_url=emulator.url,
        port=0,
        store_url=await fresh_url(),
        logging_enabled=True,
    )
    gw = await start_gateway(config)
    async with grpc.aio.insecure_channel(gw.target) as channel:
        stub = generative_service_pb2_grpc.GenerativeServiceStub(channel)
        slow = stub.StreamGenerateContent(text_request(MODEL, SLOW))
        await slow.read()  # in flight when the shutdown starts
        for i in range(5):
            await stub.GenerateContent(text_request(MODEL, f"call {i}"))
        stopping = asyncio.create_task(gw.stop(grace=5))
        rest = []
        while (chunk := await slow.read()) is not grpc.aio.EOF:
            rest.append(chunk)
        await stopping
    assert len(rest) == 2  # the drain let the stream finish

    again = await start_gateway(config)
    try:
        async with grpc.aio.insecure_channel(again.target) as channel:
            found = await logs_pb2_grpc.LogServiceStub(channel).ListLogs(logs_pb2.ListLogsRequest())
    finally:
        await again.stop(0)
    previews = sorted(log.prompt_preview for log in found.logs)
    assert previews == sorted([*(f"call {i}" for i in range(5)), SLOW])
    assert all(log.status.code == 0 for log in found.logs)
