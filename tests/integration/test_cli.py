"""The README's commands: `gemini-gateway serve`, `emulator`, `generate` and `stream`."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator

import pytest

CLI = [sys.executable, "-m", "gemini_gateway.cli"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start(args: list[str], ready: str) -> subprocess.Popen:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    process = subprocess.Popen(
        CLI + args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env
    )
    deadline = time.monotonic() + 30
    seen = []
    while time.monotonic() < deadline:
        line = process.stdout.readline()
        if not line and process.poll() is not None:
            break
        seen.append(line)
        if ready in line:
            return process
    process.kill()
    raise AssertionError(f"{args} did not start:\n{''.join(seen)}")


def _stop(process: subprocess.Popen) -> int:
    process.send_signal(signal.SIGTERM)
    try:
        return process.wait(timeout=15)
    except subprocess.TimeoutExpired:
        process.kill()
        raise


METRICS_PORT = _free_port()


@pytest.fixture(scope="module")
def served_gateway() -> Iterator[str]:
    port = _free_port()
    process = _start(
        ["serve", "--emulator", "--port", str(port), "--metrics-port", str(METRICS_PORT)],
        "listening on",
    )
    yield f"127.0.0.1:{port}"
    assert _stop(process) == 0


def _run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(CLI + list(args), capture_output=True, text=True, timeout=60)


def test_generate_through_served_gateway(served_gateway: str) -> None:
    result = _run(
        "generate", "hello from the cli", "--target", served_gateway, "--label", "team=cli"
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("Echo: hello from the cli")
    assert "tokens" in result.stderr


def test_stream_through_served_gateway(served_gateway: str) -> None:
    result = _run("stream", "stream from the cli [[chunks:4]]", "--target", served_gateway)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("Echo: stream from the cli")
    assert "4 chunks" in result.stderr


def test_errors_print_the_grpc_status(served_gateway: str) -> None:
    result = _run("generate", "[[fault:429]]", "--target", served_gateway)
    assert result.returncode == 1
    assert "RESOURCE_EXHAUSTED" in result.stderr


def test_bad_label_is_a_usage_error(served_gateway: str) -> None:
    result = _run("generate", "hi", "--target", served_gateway, "--label", "novalue")
    assert result.returncode == 2
    assert "key=value" in result.stderr


def test_standalone_emulator_as_upstream() -> None:
    emulator_port, gateway_port = _free_port(), _free_port()
    emulator = _start(["emulator", "--port", str(emulator_port)], "listening")
    try:
        gateway = _start(
            [
                "serve", "--upstream", f"http://127.0.0.1:{emulator_port}",
                "--port", str(gateway_port), "--api-key", "k",
            ],
            "listening on",
        )  # fmt: skip
        try:
            result = _run("generate", "via standalone", "--target", f"127.0.0.1:{gateway_port}")
            assert result.returncode == 0, result.stderr
            assert result.stdout.startswith("Echo: via standalone")
        finally:
            assert _stop(gateway) == 0
    finally:
        _stop(emulator)


def test_metrics_endpoint(served_gateway: str) -> None:
    assert _run("generate", "metrics please", "--target", served_gateway).returncode == 0
    with urllib.request.urlopen(f"http://127.0.0.1:{METRICS_PORT}/metrics", timeout=10) as page:
        text = page.read().decode()
    line = (
        'gateway_grpc_calls_total{code="OK",'
        'method="/google.ai.generativelanguage.v1beta.GenerativeService/GenerateContent"}'
    )
    assert line in text
