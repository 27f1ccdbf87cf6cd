"""Per-project limits through a real gateway and the emulator: concurrency, requests and
tokens per minute, each project on its own, and what a refused caller gets (status,
RetryInfo, QuotaFailure) and what the metrics count."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any
from unittest import mock

import aiohttp
import grpc
import pytest
from google.rpc import error_details_pb2, status_pb2
from prometheus_client import REGISTRY

from gemini_gateway.client.gateway_client import text_request
from gemini_gateway.emulator.runner import EmulatorHandle
from gemini_gateway.generated.google.ai.generativelanguage.v1beta import (
    generative_service_pb2,
    generative_service_pb2_grpc,
    model_service_pb2,
    model_service_pb2_grpc,
)
from gemini_gateway.server.app import Gateway, start_gateway
from gemini_gateway.server.config import CallerConfig, ProjectConfig, Settings
from gemini_gateway.server.identity import CallerDirectory, token_sha256
from gemini_gateway.server.limits import LimitsInterceptor
from tests.integration.conftest import emulator_stats

MODEL = "models/gemini-2.0-flash"  # no thinking: 31 tokens for "Hello"
GENERATE = "/google.ai.generativelanguage.v1beta.GenerativeService/GenerateContent"
SLOW_MS = 1500


# --- a gateway with the limits interceptor -----------------------------------------------


def with_interceptor(server_factory: Any, interceptor: grpc.aio.ServerInterceptor) -> Any:
    """grpc.aio.server, with `interceptor` put in the chain app.py gives: after the
    CallerInterceptor when there is one (callers are checked first), else after the first
    (the MetricsInterceptor, which must stay outermost to count what the others answer)."""

    def server(*args: Any, interceptors: Any = (), **kwargs: Any) -> grpc.aio.Server:
        chain = list(interceptors)
        if not any(isinstance(each, LimitsInterceptor) for each in chain):  # not wired yet
            names = [type(each).__name__ for each in chain]
            at = names.index("CallerInterceptor") + 1 if "CallerInterceptor" in names else 1
            chain.insert(at, interceptor)
        kwargs["interceptors"] = chain
        return server_factory(*args, **kwargs)

    return server


async def start_limited_gateway(settings: Settings) -> Gateway:
    """start_gateway with the LimitsInterceptor in its interceptor chain.

    Until app.py wires it (`LimitsInterceptor(settings, callers, routes)` after the
    MetricsInterceptor and the CallerInterceptor), this test-only patch adds it to the
    grpc.aio.server app.py creates, for that one start; a chain that has one already (app.py
    wires it) is left as it is.
    """
    limits = LimitsInterceptor(settings, CallerDirectory(settings))
    with mock.patch.object(grpc.aio, "server", with_interceptor(grpc.aio.server, limits)):
        return await start_gateway(settings)


def caller(project: str) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer token-of-{project}"),)


def project(name: str, **limits: int) -> ProjectConfig:
    callers = [CallerConfig(name=f"{name}-svc", token_sha256=token_sha256(f"token-of-{name}"))]
    return ProjectConfig(callers=callers, **limits)  # type: ignore[arg-type]


def gateway_settings(emulator: EmulatorHandle, store: str, **fields: Any) -> Settings:
    return Settings(
        upstream="emulator",
        upstream_url=emulator.url,
        port=0,
        store_url=f"sqlite+aiosqlite:///{store}/gw.db",
        record_usage=False,
        **fields,
    )


# --- what a refused call carries ---------------------------------------------------------


def refusal(exc: grpc.aio.AioRpcError) -> tuple[float, error_details_pb2.QuotaFailure.Violation]:
    """(RetryInfo's delay in seconds, the QuotaFailure's violation) of RESOURCE_EXHAUSTED."""
    assert exc.code() is grpc.StatusCode.RESOURCE_EXHAUSTED, exc
    trailers = dict(exc.trailing_metadata() or ())
    status = status_pb2.Status.FromString(trailers["grpc-status-details-bin"])
    assert status.code == grpc.StatusCode.RESOURCE_EXHAUSTED.value[0]
    assert status.message == exc.details()
    retry, quota = error_details_pb2.RetryInfo(), error_details_pb2.QuotaFailure()
    assert status.details[0].Unpack(retry) and status.details[1].Unpack(quota)
    (violation,) = quota.violations
    delay_ms = retry.retry_delay.ToNanoseconds() // 1_000_000
    # gRPC's own pushback trailer says the same, for clients with a gRPC retry policy.
    assert trailers["grpc-retry-pushback-ms"] == str(delay_ms)
    return delay_ms / 1000, violation


def sample(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


async def wait_until(condition: Callable[[], Awaitable[bool]], timeout_s: float = 5.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not await condition():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.02)


async def upstream_open(http: aiohttp.ClientSession, emulator: EmulatorHandle) -> int:
    return int((await emulator_stats(http, emulator))["open"])


# --- one gateway, a project per limit ----------------------------------------------------


@pytest.fixture(scope="module")
async def gateway(
    emulator: EmulatorHandle, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[Gateway]:
    settings = gateway_settings(
        emulator,
        str(tmp_path_factory.mktemp("limits")),
        reserved_pool_share=0,  # each project on its own limits only
        projects={
            "capped": project("capped", max_concurrent_calls=2),
            "rpm": project("rpm", requests_per_minute=3),
            "tpm": project("tpm", tokens_per_minute=40),
            "free": project("free"),
        },
    )
    gw = await start_limited_gateway(settings)
    yield gw
    await gw.stop(0)


@pytest.fixture
def models(channel: grpc.aio.Channel) -> model_service_pb2_grpc.ModelServiceStub:
    return model_service_pb2_grpc.ModelServiceStub(channel)


async def test_concurrency_limit_refuses_the_call_over_it(
    generative: generative_service_pb2_grpc.GenerativeServiceStub,
    emulator: EmulatorHandle,
    http: aiohttp.ClientSession,
) -> None:
    as_capped = caller("capped")
    idle = await upstream_open(http, emulator)  # other tests' leftovers, if any
    refused_before = sample(
        "gateway_limit_rejections_total", project="capped", limit="max_concurrent_calls"
    )
    calls_before = sample("gateway_grpc_calls_total", method=GENERATE, code="RESOURCE_EXHAUSTED")
    # Two slow calls hold the project's two slots: a unary call and a stream.
    slow = [
        asyncio.ensure_future(
            generative.GenerateContent(
                text_request(MODEL, f"[[fault:headers_delay:{SLOW_MS}]] slow"), metadata=as_capped
            )
        ),
        asyncio.ensure_future(
            _read_stream(
                generative.StreamGenerateContent(
                    text_request(MODEL, f"[[fault:headers_delay:{SLOW_MS}]] slow stream"),
                    metadata=as_capped,
                )
            )
        ),
    ]
    await wait_until(lambda: _at_least(upstream_open(http, emulator), idle + 2))
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await generative.GenerateContent(text_request(MODEL, "Hello"), metadata=as_capped)
    delay, violation = refusal(refused.value)
    assert 0 < delay <= SLOW_MS / 1000
    assert violation.subject == "projects/capped"
    assert violation.quota_id == "max_concurrent_calls"
    assert violation.quota_metric == "projects.capped.max_concurrent_calls"
    assert violation.quota_value == 2
    message = refused.value.details() or ""
    assert "'capped'" in message and "2 concurrent upstream calls" in message
    assert "retry in" in message
    # A stream over the limit is refused the same way, before any message.
    with pytest.raises(grpc.aio.AioRpcError) as refused_stream:
        await _read_stream(
            generative.StreamGenerateContent(text_request(MODEL, "Hello"), metadata=as_capped)
        )
    assert refusal(refused_stream.value)[1].quota_id == "max_concurrent_calls"
    # Another project is not held back, and a caller without a token is still unknown.
    await generative.GenerateContent(text_request(MODEL, "Hello"), metadata=caller("free"))
    with pytest.raises(grpc.aio.AioRpcError) as unknown:
        await generative.GenerateContent(text_request(MODEL, "Hello"))
    assert unknown.value.code() is grpc.StatusCode.UNAUTHENTICATED

    await asyncio.gather(*slow)  # the slow calls were never disturbed
    await generative.GenerateContent(text_request(MODEL, "Hello"), metadata=as_capped)
    assert (
        sample("gateway_limit_rejections_total", project="capped", limit="max_concurrent_calls")
        == refused_before + 2
    )
    # The metrics interceptor counts the refusal as the status the caller saw.
    assert (
        sample("gateway_grpc_calls_total", method=GENERATE, code="RESOURCE_EXHAUSTED")
        == calls_before + 1
    )


async def _read_stream(call: Any) -> list[Any]:
    return [chunk async for chunk in call]


async def _at_least(count: Awaitable[int], wanted: int) -> bool:
    return await count >= wanted


async def test_requests_per_minute_counts_every_forwarded_call(
    generative: generative_service_pb2_grpc.GenerativeServiceStub,
    models: model_service_pb2_grpc.ModelServiceStub,
) -> None:
    as_rpm = caller("rpm")
    await models.ListModels(model_service_pb2.ListModelsRequest(), metadata=as_rpm)
    count = generative_service_pb2.CountTokensRequest(model=MODEL)
    count.contents.add().parts.add(text="Hello")
    await generative.CountTokens(count, metadata=as_rpm)
    await generative.GenerateContent(text_request(MODEL, "Hello"), metadata=as_rpm)
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await generative.CountTokens(count, metadata=as_rpm)
    delay, violation = refusal(refused.value)
    assert 15 < delay <= 20  # one request every 20 s
    assert violation.quota_id == "requests_per_minute"
    assert violation.quota_value == 3
    assert "3 requests per minute" in (refused.value.details() or "")
    # The other projects are not affected.
    await generative.CountTokens(count, metadata=caller("free"))
    assert (
        sample("gateway_limit_rejections_total", project="free", limit="requests_per_minute") == 0
    )


async def test_tokens_per_minute_are_counted_after_each_call(
    generative: generative_service_pb2_grpc.GenerativeServiceStub,
) -> None:
    as_tpm = caller("tpm")
    # 40 tokens a minute: the first call is admitted and uses 31.
    first = await generative.GenerateContent(text_request(MODEL, "Hello"), metadata=as_tpm)
    assert first.usage_metadata.total_token_count == 31
    # A stream is admitted with 9 left; its last chunk reports the same 31: 22 in debt.
    chunks = await _read_stream(
        generative.StreamGenerateContent(text_request(MODEL, "Hello"), metadata=as_tpm)
    )
    assert chunks[-1].usage_metadata.total_token_count == 31
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await generative.GenerateContent(text_request(MODEL, "Hello"), metadata=as_tpm)
    delay, violation = refusal(refused.value)
    # From -22 back to 1 token at 40 a minute: about 34 s (less the time the test took).
    assert 25 < delay <= 35
    assert violation.quota_id == "tokens_per_minute"
    assert violation.quota_metric == "projects.tpm.tokens_per_minute"
    # Calls that use no tokens are not refused for them.
    count = generative_service_pb2.CountTokensRequest(model=MODEL)
    count.contents.add().parts.add(text="Hello")
    await generative.CountTokens(count, metadata=as_tpm)
    # Other projects' tokens are their own.
    await generative.GenerateContent(text_request(MODEL, "Hello"), metadata=caller("free"))


# --- development mode, waiting for a slot ------------------------------------------------


async def test_development_mode_limits_the_default_project_and_waits_for_a_slot(
    emulator: EmulatorHandle, tmp_path_factory: pytest.TempPathFactory
) -> None:
    settings = gateway_settings(
        emulator,
        str(tmp_path_factory.mktemp("limits-dev")),
        max_concurrent_calls=1,
        limit_wait_s=5.0,
        requests_per_minute=3,
    )
    gw = await start_limited_gateway(settings)
    try:
        async with grpc.aio.insecure_channel(gw.target) as channel:
            stub = generative_service_pb2_grpc.GenerativeServiceStub(channel)
            slow = asyncio.ensure_future(
                stub.GenerateContent(text_request(MODEL, "[[fault:headers_delay:500]] slow"))
            )
            await asyncio.sleep(0.1)
            started = time.monotonic()
            # The slot is taken: this call waits for it rather than being refused.
            await stub.GenerateContent(text_request(MODEL, "Hello"))
            assert time.monotonic() - started >= 0.2
            await slow
            await stub.GenerateContent(text_request(MODEL, "Hello"))
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await stub.GenerateContent(text_request(MODEL, "Hello"))
            delay, violation = refusal(refused.value)
            assert 15 < delay <= 20
            assert violation.subject == "projects/default"
            assert violation.quota_metric == "requests_per_minute"  # the gateway-wide setting
    finally:
        await gw.stop(0)
