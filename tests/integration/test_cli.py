"""The README's commands: `gemini-gateway serve`, `emulator`, `generate` and `stream`."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

CLI = [sys.executable, "-m", "gemini_gateway.cli"]
REPO = Path(__file__).resolve().parents[2]
# The installed command, as `make serve` runs it: `serve` prints commands naming it.
SCRIPT = Path(sys.executable).with_name("gemini-gateway")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start(
    args: list[str],
    ready: str,
    *,
    command: list[str] = CLI,
    cwd: Path | None = None,
    env: dict[str, str] | None = None,
    seen: list[str] | None = None,
) -> subprocess.Popen:
    """Start a command and read its output until a line holds `ready` (lines go to `seen`)."""
    env = {**os.environ, **(env or {}), "PYTHONUNBUFFERED": "1"}
    process = subprocess.Popen(
        command + args,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
        cwd=cwd,
    )
    deadline = time.monotonic() + 30
    seen = [] if seen is None else seen
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


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, list[str]]]:
    """`serve` as `make serve` runs it, from the repository root: (target, printed lines)."""
    store = tmp_path_factory.mktemp("store") / "gateway.db"
    printed: list[str] = []
    process = _start(
        ["serve", "--emulator", "--port", "0", "--metrics-port", "0"],
        "  metrics: http://",
        command=[str(SCRIPT)] if SCRIPT.exists() else CLI,
        cwd=REPO,
        env={"GEMINI_GATEWAY_STORE_URL": f"sqlite+aiosqlite:///{store}"},
        seen=printed,
    )
    (listening,) = [line for line in printed if line.startswith("Gemini gRPC gateway listening")]
    target = re.search(r"listening on (\S+)", listening).group(1)
    yield target, [line.rstrip("\n") for line in printed]
    assert _stop(process) == 0


@pytest.fixture(scope="module")
def served_gateway(served: tuple[str, list[str]]) -> str:
    return served[0]


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


def test_serve_on_port_0_prints_the_bound_ports(served: tuple[str, list[str]]) -> None:
    target, printed = served
    assert not target.endswith(":0")
    (metrics,) = [line for line in printed if line.startswith("  metrics: ")]
    assert re.fullmatch(r"  metrics: http://127\.0\.0\.1:[1-9][0-9]*/metrics", metrics)
    assert any(
        re.search(r"metrics on http://127\.0\.0\.1:[1-9][0-9]*/metrics", line) for line in printed
    )


def _hint_commands(printed: list[str]) -> list[str]:
    """The commands `serve` suggests: the `try:` line and the indented lines after it."""
    start = next(i for i, line in enumerate(printed) if line.startswith("  try:  "))
    commands = [printed[start].removeprefix("  try:  ")]
    for line in printed[start + 1 :]:
        if not line.startswith("        "):
            break
        commands.append(line.strip())
    return commands


def test_printed_hint_runs_verbatim_from_the_repository_root(
    served: tuple[str, list[str]],
) -> None:
    if not (REPO / "node_modules" / ".bin" / "buf").exists():
        pytest.skip("buf is not installed here (make setup installs it)")
    if not SCRIPT.exists():
        pytest.skip("no installed gemini-gateway command beside this Python")
    target, printed = served
    generate, stream, list_methods, list_models = _hint_commands(printed)
    cli = os.path.relpath(SCRIPT, REPO) if SCRIPT.is_relative_to(REPO) else str(SCRIPT)
    assert generate == f"{cli} generate 'Hello' --target {target}"
    assert list_methods.startswith("npx buf curl ") and "--list-methods" in list_methods

    def run(command: str) -> str:
        result = subprocess.run(
            command, shell=True, cwd=REPO, capture_output=True, text=True, timeout=120
        )
        assert result.returncode == 0, f"{command}\n{result.stdout}\n{result.stderr}"
        return result.stdout

    assert run(generate).startswith("Echo: Hello")
    assert run(stream).startswith("Echo: Tell me a story")
    methods = run(list_methods).split()
    assert "google.ai.generativelanguage.v1beta.GenerativeService/GenerateContent" in methods
    assert "gemini.gateway.v1.UsageService/QueryUsage" in methods
    assert '"models/gemini-2.5-flash"' in run(list_models)


def test_metrics_endpoint(served: tuple[str, list[str]]) -> None:
    served_gateway, printed = served
    (metrics,) = [line for line in printed if line.startswith("  metrics: ")]
    assert _run("generate", "metrics please", "--target", served_gateway).returncode == 0
    with urllib.request.urlopen(metrics.removeprefix("  metrics: "), timeout=10) as page:
        text = page.read().decode()
    line = (
        'gateway_grpc_calls_total{code="OK",'
        'method="/google.ai.generativelanguage.v1beta.GenerativeService/GenerateContent"}'
    )
    assert line in text
