"""`gemini-gateway serve --workers N`: several gateway processes on one port, one supervisor.

The real command runs in a subprocess on loopback with its own store. Which worker answered a
call is read from the supervisor's /metrics (`gateway_worker_calls{pid}`), the pids from
/proc (the supervisor's children), so nothing in the gateway exists for the test alone.
Each call is made on a channel of its own subchannel pool: a new TCP connection each, which
the kernel hands to one worker or the other (SO_REUSEPORT hashes the connection).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import signal
import socket
import ssl
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

from gemini_gateway.client.gateway_client import text_request
from gemini_gateway.generated.google.ai.generativelanguage.v1beta import (
    generative_service_pb2_grpc,
)
from gemini_gateway.server import workers
from gemini_gateway.server.config import Settings
from tests.integration.served_command import CLI, ServedCommand, launch, stop, wait_ready

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="SO_REUSEPORT balancing: Linux")

GENERATE = "/google.ai.generativelanguage.v1beta.GenerativeService/GenerateContent"
MODEL = "gemini-2.5-flash"
CHANNELS = 16  # all on one worker by chance: 2 * 2**-16


@dataclass
class Served:
    process: subprocess.Popen[str]
    target: str
    metrics_url: str
    output: list[str] = field(default_factory=list)
    calls_made: int = 0


@contextlib.contextmanager
def socket_listening() -> Iterator[int]:
    """A loopback port another program listens on."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield sock.getsockname()[1]


def _children(pid: int) -> list[int]:
    """The processes whose parent is `pid`, from /proc."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
            found.append(int(entry.name))
    return sorted(found)


def _samples(url: str, name: str) -> list[tuple[dict[str, str], float]]:
    text = urllib.request.urlopen(url, timeout=5).read().decode()
    return [
        (sample.labels, sample.value)
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == name
    ]


def _generate_calls(url: str) -> float:
    samples = _samples(url, "gateway_grpc_calls_total")
    return sum(value for labels, value in samples if labels == {"method": GENERATE, "code": "OK"})


def _settled(read: object, expected: object, timeout: float = 5) -> object:
    """read() once it equals `expected` (a worker counts a call just after answering it)."""
    deadline = time.monotonic() + timeout
    while (value := read()) != expected and time.monotonic() < deadline:  # type: ignore[operator]
        time.sleep(0.05)
    return value


def _channel(target: str) -> grpc.aio.Channel:
    return grpc.aio.insecure_channel(target, options=[("grpc.use_local_subchannel_pool", 1)])


async def _generate_on_new_connections(target: str, count: int) -> None:
    async def one(i: int) -> None:
        async with _channel(target) as channel:
            stub = generative_service_pb2_grpc.GenerativeServiceStub(channel)
            response = await stub.GenerateContent(text_request(MODEL, f"call {i}"), timeout=10)
            assert response.candidates[0].content.parts[0].text.startswith(f"Echo: call {i}")

    await asyncio.gather(*(one(i) for i in range(count)))


def _workers_env(folder: Path, **settings: str) -> dict[str, str]:
    env = {
        **os.environ,
        "PYTHONUNBUFFERED": "1",
        "GEMINI_GATEWAY_STORE_URL": f"sqlite+aiosqlite:///{folder / 'gateway.db'}",
        **settings,
    }
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    return env


def _serve_workers(
    folder: Path, *args: str, last_line: str = "  workers: ", **settings: str
) -> ServedCommand:
    """`serve --emulator --workers 2 --port 0 ARGS`, once its banner's last line (`last_line`:
    `  limits: ` when a limit is set) has been read."""
    served = launch(
        ["serve", "--emulator", "--workers", "2", "--port", "0", *args],
        _workers_env(folder, **settings),
        folder,
        ready_when=lambda line: line.startswith(last_line),
    )
    wait_ready(served, 40)
    return served


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    command = _serve_workers(tmp_path_factory.mktemp("workers"), "--metrics-port", "0")
    text = command.text
    metrics_url = re.search(r"^  metrics: (\S+)", text, re.MULTILINE).group(1)  # type: ignore[union-attr]
    yield Served(command.process, command.target, metrics_url, command.output)
    if command.process.poll() is None:
        command.process.kill()
        command.process.wait()


def test_both_workers_answer_and_the_metrics_add_up(served: Served) -> None:
    pids = _children(served.process.pid)
    assert len(pids) == 2
    assert f"(pids {pids[0]}, {pids[1]})" in "".join(served.output)
    asyncio.run(_generate_on_new_connections(served.target, CHANNELS))
    served.calls_made += CHANNELS

    # The supervisor's /metrics: the calls of both workers, summed ...
    assert _settled(lambda: _generate_calls(served.metrics_url), CHANNELS) == CHANNELS
    # ... and per worker, each of which served some.
    per_worker = {
        int(labels["pid"]): value
        for labels, value in _samples(served.metrics_url, "gateway_worker_calls")
    }
    assert sorted(per_worker) == pids
    assert all(value > 0 for value in per_worker.values()), per_worker
    assert sum(per_worker.values()) == CHANNELS
    assert _samples(served.metrics_url, "gateway_workers") == [({}, 2.0)]


def test_every_worker_reports_serving(served: Served) -> None:
    async def check() -> list[int]:
        async def one() -> int:
            async with _channel(served.target) as channel:
                stub = health_pb2_grpc.HealthStub(channel)
                return (await stub.Check(health_pb2.HealthCheckRequest(), timeout=5)).status

        return await asyncio.gather(*(one() for _ in range(CHANNELS)))

    assert set(asyncio.run(check())) == {health_pb2.HealthCheckResponse.SERVING}


def test_a_killed_worker_is_replaced(served: Served) -> None:
    before = _children(served.process.pid)
    os.kill(before[0], signal.SIGKILL)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        now = _children(served.process.pid)
        if len(now) == 2 and before[0] not in now:
            break
        time.sleep(0.1)
    assert len(now) == 2 and before[0] not in now and before[1] in now, (before, now)
    assert _settled(lambda: _samples(served.metrics_url, "gateway_workers"), [({}, 2.0)]) == [
        ({}, 2.0)
    ]
    asyncio.run(_generate_on_new_connections(served.target, CHANNELS))
    served.calls_made += CHANNELS

    # The dead worker's calls stay in the totals; its per-worker series is gone.
    total = served.calls_made
    assert _settled(lambda: _generate_calls(served.metrics_url), total) == total
    pids = {
        int(labels["pid"]) for labels, _ in _samples(served.metrics_url, "gateway_worker_calls")
    }
    assert before[0] not in pids and pids <= set(now)
    assert _samples(served.metrics_url, "gateway_worker_restarts_total") == [({}, 1.0)]
    assert re.search(
        rf"worker \d \(pid {before[0]}\) was killed by SIGKILL", "".join(served.output)
    )


def test_sigterm_drains_every_worker_and_exits_0(served: Served) -> None:
    """Streams in flight on both workers finish; then the supervisor exits 0."""
    pids = _children(served.process.pid)
    prompt = "drain me [[chunks:4]] [[chunk_delay_ms:250]]"

    async def stream_then_sigterm() -> list[int]:
        async def one(first: asyncio.Event) -> int:
            async with _channel(served.target) as channel:
                stub = generative_service_pb2_grpc.GenerativeServiceStub(channel)
                chunks = 0
                async for _chunk in stub.StreamGenerateContent(
                    text_request(MODEL, prompt), timeout=15
                ):
                    chunks += 1
                    first.set()
                return chunks

        firsts = [asyncio.Event() for _ in range(CHANNELS)]
        streams = [asyncio.create_task(one(first)) for first in firsts]
        await asyncio.wait_for(asyncio.gather(*(first.wait() for first in firsts)), 10)
        served.process.send_signal(signal.SIGTERM)
        return await asyncio.gather(*streams)

    started = time.monotonic()
    assert asyncio.run(stream_then_sigterm()) == [4] * CHANNELS
    assert served.process.wait(timeout=15) == 0
    assert time.monotonic() - started < 5 + 5  # shutdown_grace_s, and some
    assert not any(Path(f"/proc/{pid}").exists() for pid in pids)


# --- per-project limits, kept by the workers together ----------------------------------------

LIMITED = 12  # requests per minute: one comes back every 5 s, far longer than the calls take
HELD_STREAMS = 12  # all on one worker by chance: 2 * 2**-12
HOLD = "hold [[chunks:400]] [[chunk_delay_ms:50]]"  # 20 s, ended by the test long before


async def _generate_codes(target: str, count: int) -> list[grpc.StatusCode]:
    """The status of `count` generate calls, each on a connection of its own."""

    async def one(i: int) -> grpc.StatusCode:
        async with _channel(target) as channel:
            stub = generative_service_pb2_grpc.GenerativeServiceStub(channel)
            try:
                await stub.GenerateContent(text_request(MODEL, f"call {i}"), timeout=10)
            except grpc.aio.AioRpcError as exc:
                return exc.code()
            return grpc.StatusCode.OK

    return await asyncio.gather(*(one(i) for i in range(count)))


def test_the_workers_keep_a_projects_requests_per_minute_together(tmp_path: Path) -> None:
    command = _serve_workers(
        tmp_path,
        "--metrics-port",
        "0",
        last_line="  limits: ",
        GEMINI_GATEWAY_REQUESTS_PER_MINUTE=str(LIMITED),
    )
    try:
        assert "  limits: kept by the 2 workers together\n" in command.output, command.text
        metrics_url = re.search(r"^  metrics: (\S+)", command.text, re.MULTILINE).group(1)  # type: ignore[union-attr]
        codes = asyncio.run(_generate_codes(command.target, 2 * LIMITED))
        assert codes.count(grpc.StatusCode.OK) == LIMITED, codes
        assert codes.count(grpc.StatusCode.RESOURCE_EXHAUSTED) == LIMITED, codes
        # Both workers answered: kept apart, each would have let up to LIMITED through.
        per_worker = _settled(
            lambda: sum(v for _, v in _samples(metrics_url, "gateway_worker_calls")), 2 * LIMITED
        )
        assert per_worker == 2 * LIMITED
        served_by = [v for _, v in _samples(metrics_url, "gateway_worker_calls")]
        assert len(served_by) == 2 and all(served_by), served_by
    finally:
        stop(command, 30)


def test_a_killed_workers_calls_in_flight_are_forgotten(tmp_path: Path) -> None:
    """max_concurrent_calls counts the calls of every worker; those of a worker that died
    free their slots once the supervisor has seen it die."""
    command = _serve_workers(
        tmp_path, last_line="  limits: ", GEMINI_GATEWAY_MAX_CONCURRENT_CALLS=str(HELD_STREAMS)
    )
    target = command.target

    async def hold(channel: grpc.aio.Channel, started: asyncio.Event) -> grpc.StatusCode:
        stub = generative_service_pb2_grpc.GenerativeServiceStub(channel)
        try:
            async for _chunk in stub.StreamGenerateContent(text_request(MODEL, HOLD), timeout=30):
                started.set()
        except grpc.aio.AioRpcError as exc:
            return exc.code()
        return grpc.StatusCode.OK

    async def scenario() -> None:
        channels = [_channel(target) for _ in range(2 * HELD_STREAMS)]
        try:
            starts = [asyncio.Event() for _ in range(HELD_STREAMS)]
            streams = [
                asyncio.create_task(hold(channel, started))
                for channel, started in zip(channels, starts, strict=False)
            ]
            await asyncio.wait_for(asyncio.gather(*(s.wait() for s in starts)), 15)
            assert await _generate_codes(target, 1) == [grpc.StatusCode.RESOURCE_EXHAUSTED]

            before = _children(command.process.pid)
            os.kill(before[0], signal.SIGKILL)
            await asyncio.wait(streams, timeout=10, return_when=asyncio.FIRST_COMPLETED)
            await asyncio.sleep(0.5)  # the rest of the killed worker's streams end too
            lost = [stream for stream in streams if stream.done()]
            assert all(s.result() == grpc.StatusCode.UNAVAILABLE for s in lost)
            assert 0 < len(lost) < HELD_STREAMS, len(lost)
            deadline = time.monotonic() + 20
            while (now := _children(command.process.pid)) == before or len(now) < 2:
                assert time.monotonic() < deadline, now
                await asyncio.sleep(0.1)

            # The dead worker's slots are free again, and only those.
            starts = [asyncio.Event() for _ in lost]
            again = [
                asyncio.create_task(hold(channel, started))
                for channel, started in zip(channels[HELD_STREAMS:], starts, strict=False)
            ]
            await asyncio.wait_for(asyncio.gather(*(s.wait() for s in starts)), 15)
            assert await _generate_codes(target, 1) == [grpc.StatusCode.RESOURCE_EXHAUSTED]
            for task in streams + again:
                task.cancel()
            await asyncio.gather(*streams, *again, return_exceptions=True)
        finally:
            for channel in channels:
                await channel.close()

    try:
        asyncio.run(scenario())
    finally:
        stop(command, 30)


# --- start-up errors --------------------------------------------------------------------------


def test_a_taken_port_is_one_line_from_the_supervisor(tmp_path: Path) -> None:
    with socket_listening() as port:
        result = subprocess.run(
            [*CLI, "serve", "--workers", "2", "--port", str(port)],
            capture_output=True,
            text=True,
            timeout=30,
            cwd=tmp_path,
            env={
                **os.environ,
                "GEMINI_GATEWAY_STORE_URL": f"sqlite+aiosqlite:///{tmp_path / 'g.db'}",
            },
        )
    assert result.returncode == 1, result.stderr
    assert result.stderr.splitlines() == [
        f"error: the gateway cannot listen on 127.0.0.1:{port}: the address is already in use",
        "  pick another port: --port N, PORT=N make serve, or --port 0 for any free port",
    ]
    assert not (tmp_path / "g.db").exists()  # refused before the store or any worker


async def test_gives_up_on_a_worker_that_keeps_dying(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A worker that serves once, then dies at every start: the supervisor stops, and says so."""
    monkeypatch.setattr(workers, "RESTART_DELAY_S", 0.001)

    class Exited:
        pid = 4_000_000
        returncode = 3

        async def wait(self) -> int:
            return 3

    spawned = 0

    async def spawn(index: int) -> object:
        nonlocal spawned
        spawned += 1
        if spawned == 1:
            return Exited()
        raise workers._WorkerFailed(index, 4_000_000 + spawned, "exited with status 3")

    supervisor = workers.Supervisor(Settings(), 1, 1, None, str(tmp_path), CollectorRegistry())
    monkeypatch.setattr(supervisor, "_spawn", spawn)
    assert await supervisor.start() == [4_000_000]
    await asyncio.wait_for(supervisor.stopping.wait(), 5)
    await supervisor.stop(0)
    assert spawned == workers.MAX_START_FAILURES
    assert supervisor.problem is not None
    assert supervisor.problem.lines[0] == (
        f"gateway worker 1 keeps dying: {workers.MAX_START_FAILURES} times in a row within "
        "10 s of starting (last: it exited with status 3); stopped the gateway"
    )


def test_workers_must_not_be_negative(tmp_path: Path) -> None:
    result = subprocess.run(
        [*CLI, "serve", "--workers", "-1"], capture_output=True, text=True, timeout=30, cwd=tmp_path
    )
    assert result.returncode == 2, result.stderr
    assert "--workers" in result.stderr.splitlines()[0]


# --- TLS, and the console beside it ----------------------------------------------------------


def test_the_workers_serve_the_console_over_https_beside_tls(tmp_path: Path, pki: Path) -> None:
    """Each worker serves the console on the shared port with the gateway's certificate, and
    its face reaches that worker's gRPC server (on its own Unix socket)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        console_port = probe.getsockname()[1]
    command = _serve_workers(
        tmp_path,
        "--tls-cert", str(pki / "server.crt"), "--tls-key", str(pki / "server.key"),
        "--console-port", str(console_port),
    )  # fmt: skip
    try:
        url = f"https://127.0.0.1:{console_port}/"
        assert f"  console: {url}\n" in command.output, command.text
        context = ssl.create_default_context(cafile=pki / "ca.crt")
        for _ in range(6):  # new connections, spread over both workers
            with urllib.request.urlopen(
                url + "v1/projects/-/loggingSettings", context=context
            ) as answer:
                assert json.load(answer)["name"] == "projects/default/loggingSettings"
    finally:
        stop(command)
