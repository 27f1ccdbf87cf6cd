"""TLS and mutual TLS on the gRPC listener."""

from __future__ import annotations

import subprocess
from pathlib import Path

import grpc
import pytest

from gemini_gateway.client.gateway_client import GatewayClient, response_text, text_request
from gemini_gateway.generated.google.ai.generativelanguage.v1beta import generative_service_pb2_grpc
from gemini_gateway.server.app import start_gateway
from gemini_gateway.server.config import Settings

pytestmark = pytest.mark.asyncio(loop_scope="session")


def _openssl(*args: str) -> None:
    subprocess.run(["openssl", *args], check=True, capture_output=True)


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A CA, a server certificate for 127.0.0.1/localhost, and a client certificate."""
    d = tmp_path_factory.mktemp("pki")
    _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=test-ca",
             "-keyout", str(d / "ca.key"), "-out", str(d / "ca.crt"))  # fmt: skip
    (d / "san.ext").write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
    for name in ("server", "client"):
        _openssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", f"/CN={name}",
                 "-keyout", str(d / f"{name}.key"), "-out", str(d / f"{name}.csr"))  # fmt: skip
        _openssl("x509", "-req", "-in", str(d / f"{name}.csr"), "-CA", str(d / "ca.crt"),
                 "-CAkey", str(d / "ca.key"), "-CAcreateserial", "-days", "1",
                 "-extfile", str(d / "san.ext"), "-out", str(d / f"{name}.crt"))  # fmt: skip
    return d


async def test_tls_listener(pki: Path, emulator) -> None:
    gw = await start_gateway(
        Settings(
            upstream="emulator", upstream_url=emulator.url, port=0,
            tls_cert_file=pki / "server.crt", tls_key_file=pki / "server.key",
        )
    )  # fmt: skip
    try:
        ca = (pki / "ca.crt").read_bytes()
        async with GatewayClient(gw.target, root_certificates=ca) as client:
            answer = await client.generate(text_request("gemini-2.5-flash", "over tls"))
            assert response_text(answer).startswith("Echo: over tls")
        async with grpc.aio.insecure_channel(gw.target) as plain:
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await plain.unary_unary("/grpc.health.v1.Health/Check")(b"", timeout=2)
            assert info.value.code() is grpc.StatusCode.UNAVAILABLE
    finally:
        await gw.stop(0)


async def test_mutual_tls_requires_a_client_certificate(pki: Path, emulator) -> None:
    gw = await start_gateway(
        Settings(
            upstream="emulator", upstream_url=emulator.url, port=0,
            tls_cert_file=pki / "server.crt", tls_key_file=pki / "server.key",
            tls_client_ca_file=pki / "ca.crt",
        )
    )  # fmt: skip
    ca = (pki / "ca.crt").read_bytes()
    request = text_request("gemini-2.5-flash", "mtls")
    try:
        with_cert = grpc.ssl_channel_credentials(
            root_certificates=ca,
            private_key=(pki / "client.key").read_bytes(),
            certificate_chain=(pki / "client.crt").read_bytes(),
        )
        async with grpc.aio.secure_channel(gw.target, with_cert) as channel:
            stub = generative_service_pb2_grpc.GenerativeServiceStub(channel)
            assert (await stub.GenerateContent(request)).candidates
        async with GatewayClient(gw.target, root_certificates=ca) as no_cert:
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await no_cert.generate(request, timeout=5)
            assert info.value.code() is grpc.StatusCode.UNAVAILABLE
    finally:
        await gw.stop(0)
