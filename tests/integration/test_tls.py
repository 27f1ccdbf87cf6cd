"""TLS and mutual TLS on the gRPC listener, and on the web console beside it."""

from __future__ import annotations

import ssl
import tempfile
from pathlib import Path

import aiohttp
import grpc
import pytest

from gemini_gateway.client.gateway_client import GatewayClient, response_text, text_request
from gemini_gateway.generated.google.ai.generativelanguage.v1beta import generative_service_pb2_grpc
from gemini_gateway.server.app import banner, start_gateway
from gemini_gateway.server.config import CallerConfig, ProjectConfig, Settings
from gemini_gateway.server.identity import token_sha256

pytestmark = pytest.mark.asyncio(loop_scope="session")


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


def _console_sockets() -> set[Path]:
    """The folders of the Unix sockets the consoles beside TLS call their gateways on."""
    return set(Path(tempfile.gettempdir()).glob("gemini-gateway-console-*"))


def _https(pki: Path, client_certificate: bool = False) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=pki / "ca.crt")
    if client_certificate:
        context.load_cert_chain(pki / "client.crt", pki / "client.key")
    return context


async def test_the_console_serves_https_beside_tls(pki: Path, emulator) -> None:
    """With TLS on the gRPC port the console serves HTTPS with the same certificate, and its
    JSON face reaches the gateway (on a Unix socket of its own, removed when it stops)."""
    sockets = _console_sockets()
    gw = await start_gateway(
        Settings(
            upstream="emulator", upstream_url=emulator.url, port=0, console_port=0,
            tls_cert_file=pki / "server.crt", tls_key_file=pki / "server.key",
        )
    )  # fmt: skip
    try:
        assert gw.console is not None
        base = gw.console.url
        assert base.startswith("https://127.0.0.1:")
        assert f"console: {base}" in banner(gw)
        assert len(_console_sockets() - sockets) == 1
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=_https(pki))) as http:
            async with http.get(base + "/") as page:
                assert page.status == 200 and "<html" in (await page.text()).lower()
            async with http.get(base + "/console/info") as info:
                assert (await info.json())["development"] is True
            # Forwarded upstream through the gateway (the console lists tuned models so).
            async with http.get(base + "/v1beta/models") as models:
                assert models.status == 200
                assert (await models.json())["models"]
            async with http.get(base + "/v1/projects/-/loggingSettings") as settings:
                assert (await settings.json())["name"] == "projects/default/loggingSettings"
        async with aiohttp.ClientSession() as plain:  # plain HTTP is not served
            with pytest.raises(aiohttp.ClientError):
                async with plain.get(base.replace("https://", "http://") + "/console/info"):
                    pass
    finally:
        await gw.stop(0)
    assert _console_sockets() == sockets


async def test_the_console_beside_mutual_tls_asks_for_a_client_certificate(
    pki: Path, emulator
) -> None:
    """With mutual TLS the console, like the gRPC port, takes only clients whose certificate
    the CA signed; the caller is still known by its bearer token."""
    caller = CallerConfig(name="web", token_sha256=token_sha256("console-token"))
    gw = await start_gateway(
        Settings(
            upstream="emulator", upstream_url=emulator.url, port=0, console_port=0,
            tls_cert_file=pki / "server.crt", tls_key_file=pki / "server.key",
            tls_client_ca_file=pki / "ca.crt",
            projects={"web": ProjectConfig(callers=[caller])},
        )
    )  # fmt: skip
    assert gw.console is not None
    settings_url = gw.console.url + "/v1/projects/-/loggingSettings"
    token = {"Authorization": "Bearer console-token"}
    try:
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=_https(pki))) as http:
            with pytest.raises(aiohttp.ClientError):  # the handshake fails
                async with http.get(settings_url, headers=token):
                    pass
        with_cert = aiohttp.TCPConnector(ssl=_https(pki, client_certificate=True))
        async with aiohttp.ClientSession(connector=with_cert) as http:
            async with http.get(settings_url, headers=token) as known:
                assert known.status == 200
                assert (await known.json())["name"] == "projects/web/loggingSettings"
            async with http.get(settings_url) as stranger:
                assert stranger.status == 401
    finally:
        await gw.stop(0)
