"""The console port of a started gateway: its files, its JSON face, /console/info, the banner,
and when `serve` opens it by default."""

from __future__ import annotations

import socket

import aiohttp
import pytest

from gemini_gateway.emulator.runner import EmulatorHandle
from gemini_gateway.server.app import banner, start_gateway
from gemini_gateway.server.config import CallerConfig, ProjectConfig, Settings
from gemini_gateway.server.console import DEFAULT_CONSOLE_PORT, with_console_default
from gemini_gateway.server.identity import token_sha256


async def test_a_console_port_serves_the_console_and_the_json_face(
    emulator: EmulatorHandle, http: aiohttp.ClientSession
) -> None:
    gateway = await start_gateway(
        Settings(port=0, console_port=0, upstream="emulator", upstream_url=emulator.url)
    )
    try:
        assert gateway.console is not None
        base = gateway.console.url.rstrip("/")
        assert f"console: {gateway.console.url}" in banner(gateway)
        async with http.get(base + "/") as page:
            assert page.status == 200
            assert "<html" in (await page.text()).lower()
        async with http.get(base + "/console/info") as info:
            assert await info.json() == {
                "development": True,
                "host": "127.0.0.1",
                "project": "default",
            }
        async with http.get(base + "/v1/projects/-/loggingSettings") as settings:
            assert (await settings.json())["name"] == "projects/default/loggingSettings"
        # The forwarded model service is on the face too (the console lists tuned models).
        async with http.get(base + "/v1beta/models") as models:
            assert (await models.json())["models"]
    finally:
        await gateway.stop(0)
    assert gateway.console is not None
    with pytest.raises(aiohttp.ClientConnectionError):
        async with http.get(gateway.console.url):
            pass


async def test_no_console_port_no_console(emulator: EmulatorHandle) -> None:
    gateway = await start_gateway(Settings(port=0, upstream="emulator", upstream_url=emulator.url))
    try:
        assert gateway.console is None
        assert "console:" not in banner(gateway)
    finally:
        await gateway.stop(0)


def _port_is_free(port: int) -> bool:
    with socket.socket() as probe:
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def test_serve_opens_the_console_by_default_in_development_on_loopback() -> None:
    development = Settings(host="127.0.0.1")
    expected = DEFAULT_CONSOLE_PORT if _port_is_free(DEFAULT_CONSOLE_PORT) else None
    assert with_console_default(development).console_port == expected
    # TLS does not change it (the console then serves HTTPS); explicit ports win; other
    # addresses or identities leave it off.
    with_tls = Settings(host="127.0.0.1", tls_cert_file="c.pem", tls_key_file="k.pem")
    assert with_console_default(with_tls).console_port == expected
    assert with_console_default(Settings(console_port=9999)).console_port == 9999
    assert with_console_default(Settings(host="0.0.0.0")).console_port is None
    caller = CallerConfig(name="svc", token_sha256=token_sha256("t"))
    production = Settings(projects={"p": ProjectConfig(callers=[caller])})
    assert with_console_default(production).console_port is None


def test_a_taken_default_port_is_skipped_with_a_warning(caplog: pytest.LogCaptureFixture) -> None:
    with socket.socket() as holder:
        holder.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 0)
        try:
            holder.bind(("127.0.0.1", DEFAULT_CONSOLE_PORT))
        except OSError:
            pass  # taken already: the same case
        holder.listen()
        assert with_console_default(Settings(host="127.0.0.1")).console_port is None
    assert "no web console" in caplog.text
