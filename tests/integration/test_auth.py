"""Caller authentication on every RPC of every served service: UNAUTHENTICATED without a
known token (or client certificate), except health and reflection while they are open;
certificate subjects as identities over mutual TLS; pass-through keys without silent
fallback; development mode bound to loopback."""

from __future__ import annotations

import asyncio
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import grpc
import pytest
from google.protobuf import descriptor_pool
from google.protobuf.descriptor import MethodDescriptor
from grpc_health.v1 import health_pb2
from grpc_reflection.v1alpha import reflection_pb2
from prometheus_client import REGISTRY

from gemini_gateway.client.gateway_client import text_request
from gemini_gateway.emulator.runner import EmulatorHandle, start_emulator
from gemini_gateway.emulator.settings import EmulatorSettings
from gemini_gateway.generated.gemini.gateway.v1 import usage_pb2, usage_pb2_grpc
from gemini_gateway.generated.google.ai.generativelanguage.v1beta import (
    generative_service_pb2_grpc,
)
from gemini_gateway.server import startup
from gemini_gateway.server.app import Gateway, start_gateway
from gemini_gateway.server.config import CallerConfig, ProjectConfig, Settings
from gemini_gateway.server.identity import token_sha256
from gemini_gateway.server.reflection import SERVICE_NAMES as REFLECTION
from gemini_gateway.server.tenancy import HEALTH_SERVICES

pytestmark = pytest.mark.asyncio(loop_scope="session")

TOKEN = "auth-test-token"
OPEN = HEALTH_SERVICES | set(REFLECTION)
NO_CALLER = (grpc.StatusCode.UNAUTHENTICATED,)


def bearer(token: str) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {token}"),)


def projects() -> dict[str, ProjectConfig]:
    return {
        "team": ProjectConfig(callers=[CallerConfig(name="svc", token_sha256=token_sha256(TOKEN))])
    }


async def _gateway(emulator: EmulatorHandle, tmp: Path, **settings: object) -> Gateway:
    given: dict[str, object] = {
        "upstream": "emulator",
        "upstream_url": emulator.url,
        "port": 0,
        "store_url": f"sqlite+aiosqlite:///{tmp}/gw.db",
        **settings,
    }
    return await start_gateway(Settings(**given))  # type: ignore[arg-type]


@pytest.fixture(scope="module")
async def guarded(
    emulator: EmulatorHandle, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[Gateway]:
    """Callers configured; health and reflection open (the defaults)."""
    gw = await _gateway(emulator, tmp_path_factory.mktemp("guarded"), projects=projects())
    yield gw
    await gw.stop(0)


@pytest.fixture(scope="module")
async def closed(
    emulator: EmulatorHandle, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[Gateway]:
    """Callers configured; health and reflection need a token too."""
    gw = await _gateway(
        emulator,
        tmp_path_factory.mktemp("closed"),
        projects=projects(),
        open_health=False,
        open_reflection=False,
    )
    yield gw
    await gw.stop(0)


async def served_methods(channel: grpc.aio.Channel) -> list[MethodDescriptor]:
    """Every method of every service the gateway serves, as its reflection lists them."""
    call = channel.stream_stream(
        "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo",
        request_serializer=reflection_pb2.ServerReflectionRequest.SerializeToString,
        response_deserializer=reflection_pb2.ServerReflectionResponse.FromString,
    )
    request = reflection_pb2.ServerReflectionRequest(list_services="")
    (response,) = [r async for r in call(iter([request]), metadata=bearer(TOKEN))]
    names = [service.name for service in response.list_services_response.service]
    pool = descriptor_pool.Default()
    return [method for name in names for method in pool.FindServiceByName(name).methods]


async def status_of(
    channel: grpc.aio.Channel, method: MethodDescriptor, metadata: tuple = ()
) -> grpc.StatusCode:
    """The status of a call of `method` with an empty request (default fields)."""
    path = f"/{method.containing_service.full_name}/{method.name}"
    try:
        if method.client_streaming:
            call = channel.stream_stream(path)(iter([b""]), metadata=metadata, timeout=5)
            async for _ in call:
                pass
        elif method.server_streaming:
            stream = channel.unary_stream(path)(b"", metadata=metadata, timeout=5)
            async for _ in stream:
                break  # one message is enough: the call was let in
            stream.cancel()
        else:
            await channel.unary_unary(path)(b"", metadata=metadata, timeout=5)
    except grpc.aio.AioRpcError as exc:
        return exc.code()
    return grpc.StatusCode.OK


async def test_every_rpc_needs_a_caller_except_open_health_and_reflection(
    guarded: Gateway,
) -> None:
    async with grpc.aio.insecure_channel(guarded.target) as channel:
        methods = await served_methods(channel)
        services = {method.containing_service.full_name for method in methods}
        assert {
            "google.ai.generativelanguage.v1beta.GenerativeService",
            "google.ai.generativelanguage.v1beta.ModelService",
            "google.ai.generativelanguage.v1.GenerativeService",
            "google.longrunning.Operations",
            "gemini.gateway.v1.OperationWatchService",
            "gemini.gateway.v1.UsageService",
            "gemini.gateway.v1.LogService",
            "gemini.gateway.v1.DatasetService",
            "gemini.gateway.v1.RunService",
            *OPEN,
        } <= services
        assert len(methods) > 50
        statuses = await asyncio.gather(*(status_of(channel, m) for m in methods))
        unknown_token = await asyncio.gather(
            *(status_of(channel, m, bearer("not-a-token")) for m in methods)
        )
        for method, status, with_unknown in zip(methods, statuses, unknown_token, strict=True):
            if method.containing_service.full_name in OPEN:
                assert status not in NO_CALLER, method.full_name
            else:
                assert status in NO_CALLER, (method.full_name, status)
                assert with_unknown in NO_CALLER, (method.full_name, with_unknown)


async def test_closed_health_and_reflection_need_a_token(closed: Gateway) -> None:
    async with grpc.aio.insecure_channel(closed.target) as channel:
        methods = await served_methods(channel)  # with a token: let in
        for method in methods:
            if method.containing_service.full_name in OPEN:
                assert await status_of(channel, method) in NO_CALLER, method.full_name
        check = channel.unary_unary(
            "/grpc.health.v1.Health/Check",
            request_serializer=health_pb2.HealthCheckRequest.SerializeToString,
            response_deserializer=health_pb2.HealthCheckResponse.FromString,
        )
        answer = await check(health_pb2.HealthCheckRequest(), metadata=bearer(TOKEN))
        assert answer.status == health_pb2.HealthCheckResponse.SERVING


async def test_refusals_are_counted_and_cost_no_upstream_call(
    guarded: Gateway, emulator: EmulatorHandle
) -> None:
    method = "/google.ai.generativelanguage.v1beta.GenerativeService/GenerateContent"
    labels = {"method": method, "code": "UNAUTHENTICATED"}
    before = REGISTRY.get_sample_value("gateway_grpc_calls_total", labels) or 0.0
    marker = "auth-refused-marker"
    async with grpc.aio.insecure_channel(guarded.target) as channel:
        stub = generative_service_pb2_grpc.GenerativeServiceStub(channel)
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await stub.GenerateContent(text_request("gemini-2.5-flash", marker))
        assert info.value.code() is grpc.StatusCode.UNAUTHENTICATED
        assert "authorization: Bearer" in (info.value.details() or "")
        answer = await stub.GenerateContent(
            text_request("gemini-2.5-flash", "let in"), metadata=bearer(TOKEN)
        )
        assert answer.candidates
    for _ in range(200):
        if (REGISTRY.get_sample_value("gateway_grpc_calls_total", labels) or 0) > before:
            break
        await asyncio.sleep(0.01)
    assert REGISTRY.get_sample_value("gateway_grpc_calls_total", labels) == before + 1
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{emulator.url}/_emulator/requests") as response:
            bodies = [str(entry["body"]) for entry in await response.json()]
    assert not [body for body in bodies if marker in body]


# --- development mode -------------------------------------------------------------------------


async def test_development_mode_refuses_a_public_address_without_the_flag(
    emulator: EmulatorHandle,
) -> None:
    with pytest.raises(startup.StartupError) as info:
        await start_gateway(Settings(upstream_url=emulator.url, host="0.0.0.0", port=0))
    assert "allow_unauthenticated" in info.value.message
    assert "--allow-unauthenticated" in (info.value.hint or "")


# --- pass-through -----------------------------------------------------------------------------


async def test_pass_through_falls_back_to_the_gateway_key_only_when_configured(
    tmp_path: Path,
) -> None:
    upstream = await start_emulator(EmulatorSettings(api_key="the-key"))
    strict = await _gateway(upstream, tmp_path / "s", upstream="gemini", api_key="the-key",
                            pass_through_api_key=True)  # fmt: skip
    lenient = await _gateway(upstream, tmp_path / "l", upstream="gemini", api_key="the-key",
                             pass_through_api_key=True,
                             pass_through_fallback_to_gateway_key=True)  # fmt: skip
    try:
        for gateway, expected in ((strict, grpc.StatusCode.UNAUTHENTICATED), (lenient, None)):
            async with grpc.aio.insecure_channel(gateway.target) as channel:
                stub = generative_service_pb2_grpc.GenerativeServiceStub(channel)
                request = text_request("gemini-2.5-flash", "keyless")
                if expected is None:
                    assert (await stub.GenerateContent(request)).candidates
                else:
                    with pytest.raises(grpc.aio.AioRpcError) as info:
                        await stub.GenerateContent(request)
                    assert info.value.code() is expected
                own = await stub.GenerateContent(request, metadata=(("x-goog-api-key", "the-key"),))
                assert own.candidates
    finally:
        await strict.stop(0)
        await lenient.stop(0)
        await upstream.close()


# --- client certificates (mutual TLS) ---------------------------------------------------------

ADS_SUBJECT = "/O=Example Corp/OU=ads/CN=ads-batch"


def _openssl(*args: str) -> None:
    subprocess.run(["openssl", *args], check=True, capture_output=True)


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A CA, a server certificate for 127.0.0.1, and client certificates `ads` (a known
    subject) and `stranger`."""
    d = tmp_path_factory.mktemp("pki")
    _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=ca",
             "-keyout", str(d / "ca.key"), "-out", str(d / "ca.crt"))  # fmt: skip
    (d / "san.ext").write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
    subjects = {"server": "/CN=server", "ads": ADS_SUBJECT, "stranger": "/CN=stranger"}
    for name, subject in subjects.items():
        _openssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", subject,
                 "-keyout", str(d / f"{name}.key"), "-out", str(d / f"{name}.csr"))  # fmt: skip
        _openssl("x509", "-req", "-in", str(d / f"{name}.csr"), "-CA", str(d / "ca.crt"),
                 "-CAkey", str(d / "ca.key"), "-CAcreateserial", "-days", "1",
                 "-extfile", str(d / "san.ext"), "-out", str(d / f"{name}.crt"))  # fmt: skip
    return d


def _client(pki: Path, target: str, name: str) -> grpc.aio.Channel:
    credentials = grpc.ssl_channel_credentials(
        (pki / "ca.crt").read_bytes(),
        (pki / f"{name}.key").read_bytes(),
        (pki / f"{name}.crt").read_bytes(),
    )
    return grpc.aio.secure_channel(target, credentials)


async def test_a_client_certificate_subject_identifies_its_caller(
    pki: Path, emulator: EmulatorHandle, tmp_path: Path
) -> None:
    gw = await _gateway(
        emulator,
        tmp_path,
        tls_cert_file=pki / "server.crt",
        tls_key_file=pki / "server.key",
        tls_client_ca_file=pki / "ca.crt",
        projects={
            **projects(),
            "ads": ProjectConfig(callers=[CallerConfig(name="batch", tls_subject=ADS_SUBJECT)]),
        },
    )
    try:
        async with _client(pki, gw.target, "ads") as channel:
            stub = generative_service_pb2_grpc.GenerativeServiceStub(channel)
            assert (await stub.GenerateContent(text_request("gemini-2.5-flash", "mtls"))).candidates
            # The gateway's own services know the caller from its certificate too.
            usage = usage_pb2_grpc.UsageServiceStub(channel)
            await usage.QueryUsage(usage_pb2.QueryUsageRequest(parent="projects/ads"))
            with pytest.raises(grpc.aio.AioRpcError) as other:
                await usage.QueryUsage(usage_pb2.QueryUsageRequest(parent="projects/team"))
            assert other.value.code() is grpc.StatusCode.PERMISSION_DENIED
            # A token, when sent, decides: the team's caller over the ads certificate.
            await usage.QueryUsage(
                usage_pb2.QueryUsageRequest(parent="projects/team"), metadata=bearer(TOKEN)
            )
        async with _client(pki, gw.target, "stranger") as channel:
            stub = generative_service_pb2_grpc.GenerativeServiceStub(channel)
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await stub.GenerateContent(text_request("gemini-2.5-flash", "who am I"))
            assert info.value.code() is grpc.StatusCode.UNAUTHENTICATED
            assert "CN=stranger" in (info.value.details() or "")
            health = channel.unary_unary("/grpc.health.v1.Health/Check")
            await health(b"")  # open: no caller needed
    finally:
        await gw.stop(0)
