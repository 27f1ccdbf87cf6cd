"""Server reflection under grpc.reflection.v1 and v1alpha, as grpcurl and buf curl use it."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import grpc
import pytest
from google.protobuf import descriptor_pb2
from grpc_reflection.v1alpha import reflection_pb2

from gemini_gateway.server.app import Gateway

pytestmark = pytest.mark.asyncio(loop_scope="session")

ROOT = Path(__file__).resolve().parents[2]
BUF = ROOT / "node_modules/.bin/buf"
PROTOCOLS = {"grpc-v1": "grpc.reflection.v1", "grpc-v1alpha": "grpc.reflection.v1alpha"}
SERVICES = {
    "google.ai.generativelanguage.v1.GenerativeService",
    "google.ai.generativelanguage.v1.ModelService",
    "google.ai.generativelanguage.v1beta.GenerativeService",
    "google.ai.generativelanguage.v1beta.ModelService",
    "google.longrunning.Operations",
    "gemini.gateway.v1.UsageService",
    "grpc.health.v1.Health",
    "grpc.reflection.v1.ServerReflection",
    "grpc.reflection.v1alpha.ServerReflection",
}


async def reflect(
    channel: grpc.aio.Channel, package: str, *requests: reflection_pb2.ServerReflectionRequest
) -> list[reflection_pb2.ServerReflectionResponse]:
    """One reflection stream under `package` (the two protocols' messages are the same)."""
    call = channel.stream_stream(
        f"/{package}.ServerReflection/ServerReflectionInfo",
        request_serializer=reflection_pb2.ServerReflectionRequest.SerializeToString,
        response_deserializer=reflection_pb2.ServerReflectionResponse.FromString,
    )
    return [response async for response in call(iter(requests))]


def files(
    response: reflection_pb2.ServerReflectionResponse,
) -> dict[str, descriptor_pb2.FileDescriptorProto]:
    found = {}
    for raw in response.file_descriptor_response.file_descriptor_proto:
        proto = descriptor_pb2.FileDescriptorProto.FromString(raw)
        found[proto.name] = proto
    return found


@pytest.mark.parametrize("package", PROTOCOLS.values())
async def test_each_protocol_lists_every_service(channel: grpc.aio.Channel, package: str) -> None:
    (response,) = await reflect(
        channel, package, reflection_pb2.ServerReflectionRequest(list_services="")
    )
    assert SERVICES <= {s.name for s in response.list_services_response.service}


@pytest.mark.parametrize("package", PROTOCOLS.values())
async def test_each_protocol_describes_the_v1_api_and_itself(
    channel: grpc.aio.Channel, package: str
) -> None:
    api, own = await reflect(
        channel,
        package,
        reflection_pb2.ServerReflectionRequest(
            file_containing_symbol="google.ai.generativelanguage.v1.GenerativeService"
        ),
        reflection_pb2.ServerReflectionRequest(
            file_containing_symbol=f"{package}.ServerReflection"
        ),
    )
    described = files(api)
    service = described["google/ai/generativelanguage/v1/generative_service.proto"]
    assert service.package == "google.ai.generativelanguage.v1"
    (request,) = [m for m in service.message_type if m.name == "GenerateContentRequest"]
    assert "labels" in [f.name for f in request.field]
    # Dependencies come along, so a client can build every type.
    assert "google/ai/generativelanguage/v1/content.proto" in described
    reflection_file = next(iter(files(own).values()))
    assert reflection_file.package == package
    assert [s.name for s in reflection_file.service] == ["ServerReflection"]


async def buf_curl(*args: str) -> tuple[int, str, str]:
    assert BUF.exists(), f"missing {BUF} (npm install)"
    process = await asyncio.create_subprocess_exec(
        BUF, "curl", "--protocol", "grpc", "--http2-prior-knowledge", *args,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    stdout, stderr = await asyncio.wait_for(process.communicate(), timeout=60)
    return process.returncode or 0, stdout.decode(), stderr.decode()


@pytest.mark.parametrize("protocol", PROTOCOLS)
async def test_buf_curl_lists_methods(gateway: Gateway, protocol: str) -> None:
    code, out, err = await buf_curl(
        "--reflect-protocol", protocol, "--list-methods", f"http://{gateway.target}"
    )
    assert code == 0, err
    methods = set(out.split())
    for version in ("v1", "v1beta"):
        for method in ("GenerateContent", "StreamGenerateContent", "CountTokens"):
            assert f"google.ai.generativelanguage.{version}.GenerativeService/{method}" in methods
        assert f"google.ai.generativelanguage.{version}.ModelService/ListModels" in methods
    assert "grpc.reflection.v1.ServerReflection/ServerReflectionInfo" in methods
    assert "grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo" in methods


async def test_buf_curl_calls_v1_with_v1_reflection(gateway: Gateway) -> None:
    body = {
        "model": "models/gemini-2.5-flash",
        "contents": [{"role": "user", "parts": [{"text": "hello from buf curl"}]}],
        "labels": {"team": "docs"},
    }
    code, out, err = await buf_curl(
        "--reflect-protocol", "grpc-v1", "--data", json.dumps(body),
        f"http://{gateway.target}/google.ai.generativelanguage.v1.GenerativeService/GenerateContent",
    )  # fmt: skip
    assert code == 0, err
    answer = json.loads(out)
    assert answer["candidates"][0]["content"]["parts"][0]["text"].startswith(
        "Echo: hello from buf curl"
    )
