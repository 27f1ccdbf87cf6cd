"""The measurements: unary latency, throughput and streaming, gateway vs direct, in rounds.

Every phase runs `rounds` times; in each round every target gets one block, and the order of
the targets rotates from round to round, so slow drift and bursts of noise on a shared
machine land on all of them alike. All samples are taken in this one client process.
"""

from __future__ import annotations

import asyncio
import json
import re
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Protocol

import aiohttp
import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from bench.processes import MODEL, cpu_seconds
from gemini_gateway.client.gateway_client import GatewayClient, response_text, text_request

UNARY_PROMPT = "Say hello to the benchmark."
STREAM_CHUNKS = 10
STREAM_DELAY_MS = 20
STREAM_PROMPT = (
    f"[[chunks:{STREAM_CHUNKS}]] [[chunk_delay_ms:{STREAM_DELAY_MS}]] Tell the benchmark a story."
)
# One blank line ends an SSE event; accept both line endings.
_EVENT_END = re.compile(rb"\r\n\r\n|\n\n")

Progress = Callable[[str], None]


class BenchError(RuntimeError):
    """A call returned something other than a well-formed answer."""


class Target(Protocol):
    name: str
    pid: int | None  # the gateway process, whose CPU time is sampled; None for direct

    async def unary(self) -> None: ...

    async def stream(self) -> list[float]:
        """Seconds from call start to the arrival (parsed) of each chunk."""
        ...

    async def aclose(self) -> None: ...


def _body(prompt: str) -> bytes:
    return json.dumps({"contents": [{"role": "user", "parts": [{"text": prompt}]}]}).encode()


class DirectTarget:
    """REST straight to the emulator with one reused aiohttp session, parsing JSON and SSE."""

    def __init__(self, base_url: str, connections: int) -> None:
        self.name = "direct"
        self.pid = None
        model_url = f"{base_url}/v1beta/models/{MODEL}"
        self._unary_url = f"{model_url}:generateContent"
        self._stream_url = f"{model_url}:streamGenerateContent?alt=sse"
        self._unary_body = _body(UNARY_PROMPT)
        self._stream_body = _body(STREAM_PROMPT)
        self._headers = {"content-type": "application/json"}
        self._session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=connections))

    async def unary(self) -> None:
        async with self._session.post(
            self._unary_url, data=self._unary_body, headers=self._headers
        ) as response:
            payload = await response.read()
            if response.status != 200:
                raise BenchError(f"HTTP {response.status}: {payload[:200]!r}")
        if not json.loads(payload).get("candidates"):
            raise BenchError("answer without candidates")

    async def stream(self) -> list[float]:
        start = time.perf_counter()
        arrivals = []
        async with self._session.post(
            self._stream_url, data=self._stream_body, headers=self._headers
        ) as response:
            if response.status != 200:
                raise BenchError(f"HTTP {response.status}: {(await response.read())[:200]!r}")
            buffer = b""
            async for data in response.content.iter_any():
                buffer += data
                while match := _EVENT_END.search(buffer):
                    block, buffer = buffer[: match.start()], buffer[match.end() :]
                    payload = b"\n".join(
                        line[5:].lstrip()
                        for line in block.splitlines()
                        if line.startswith(b"data:")
                    )
                    if payload:
                        json.loads(payload)
                        arrivals.append(time.perf_counter() - start)
        return _checked(arrivals)

    async def aclose(self) -> None:
        await self._session.close()


class GatewayTarget:
    """The gateway through one reused grpc.aio channel; chunk times are taken as each
    deserialized message comes out of the call, the same point as the direct JSON parse."""

    def __init__(self, name: str, target: str, pid: int) -> None:
        self.name = name
        self.pid = pid
        self._client = GatewayClient(target)
        self._stub = self._client.generative
        self._health = health_pb2_grpc.HealthStub(self._client.channel)
        self._health_request = health_pb2.HealthCheckRequest()
        self._unary_request = text_request(MODEL, UNARY_PROMPT)
        self._stream_request = text_request(MODEL, STREAM_PROMPT)

    async def unary(self) -> None:
        response = await self._stub.GenerateContent(self._unary_request)
        if not response_text(response):
            raise BenchError("answer without text")

    async def health(self) -> None:
        """A gRPC round trip that never leaves the gateway: the floor under `unary`."""
        await self._health.Check(self._health_request)

    async def watch_first(self) -> None:
        """First message of Health.Watch: a server-streaming round trip that never leaves the
        gateway, the floor under the streaming time-to-first-chunk."""
        call = self._health.Watch(self._health_request)
        try:
            await call.read()
        finally:
            call.cancel()

    async def stream(self) -> list[float]:
        start = time.perf_counter()
        arrivals = []
        async for _chunk in self._stub.StreamGenerateContent(self._stream_request):
            arrivals.append(time.perf_counter() - start)
        return _checked(arrivals)

    async def aclose(self) -> None:
        await self._client.close()


def _checked(arrivals: list[float]) -> list[float]:
    if len(arrivals) != STREAM_CHUNKS:
        raise BenchError(f"stream had {len(arrivals)} chunks, expected {STREAM_CHUNKS}")
    return arrivals


@dataclass
class TargetData:
    """Raw samples of one target, kept per round so rounds can be compared."""

    latency_s: list[list[float]] = field(default_factory=list)
    health_s: list[list[float]] = field(default_factory=list)  # gateways only
    watch_s: list[list[float]] = field(default_factory=list)  # gateways only
    throughput: list[tuple[int, float]] = field(default_factory=list)  # (requests, seconds)
    cpu_s: list[float] = field(default_factory=list)  # gateway CPU per throughput block
    streams: list[list[list[float]]] = field(default_factory=list)  # round -> call -> chunk
    errors: int = 0
    first_error: str | None = None
    rss_idle_mib: float | None = None
    rss_after_mib: float | None = None
    rss_peak_mib: float | None = None

    def error(self, exc: BaseException) -> None:
        self.errors += 1
        if self.first_error is None:
            self.first_error = f"{type(exc).__name__}: {exc}"[:300]


@dataclass(frozen=True)
class Plan:
    rounds: int
    latency_requests: int  # per target, over all rounds
    throughput_requests: int  # per target, over all rounds
    streams: int  # per target, over all rounds
    concurrency: int
    warmup: int  # unary calls per target before measuring

    def per_round(self, total: int) -> int:
        return max(1, total // self.rounds)


# Errors a call may end with; anything else is a bug in the bench and should stop it.
_CALL_ERRORS = (BenchError, grpc.aio.AioRpcError, aiohttp.ClientError, ValueError, TimeoutError)


async def _latency_block(
    call: Callable[[], Awaitable[object]], count: int, data: TargetData
) -> list[float]:
    samples = []
    for _ in range(count):
        start = time.perf_counter()
        try:
            await call()
        except _CALL_ERRORS as exc:
            data.error(exc)
            continue
        samples.append(time.perf_counter() - start)
    return samples


async def _concurrent(
    call: Callable[[], Awaitable[object]], count: int, concurrency: int, data: TargetData
) -> tuple[int, float]:
    """`count` calls by `concurrency` workers; returns (successful calls, wall seconds)."""
    remaining = count
    done = 0

    async def worker() -> None:
        nonlocal remaining, done
        while remaining > 0:
            remaining -= 1
            try:
                await call()
            except _CALL_ERRORS as exc:
                data.error(exc)
            else:
                done += 1

    start = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return done, time.perf_counter() - start


async def _stream_block(target: Target, count: int, data: TargetData) -> list[list[float]]:
    calls = []
    watches = []
    for _ in range(count):
        try:
            calls.append(await target.stream())
        except _CALL_ERRORS as exc:
            data.error(exc)
        if isinstance(target, GatewayTarget):
            # After an idle pause like the stream's own, so both see the same wake-up cost.
            await asyncio.sleep(STREAM_DELAY_MS / 1000)
            watches += await _latency_block(target.watch_first, 1, data)
    if watches:
        data.watch_s.append(watches)
    return calls


def _rotated(targets: list[Target], shift: int) -> list[Target]:
    shift %= len(targets)
    return targets[shift:] + targets[:shift]


async def warm_up(targets: list[Target], plan: Plan, progress: Progress) -> None:
    """Open connections and touch every code path before anything is recorded."""
    progress(f"warm-up: {plan.warmup} unary, a c={plan.concurrency} burst, 3 streams each")
    scratch = TargetData()
    for target in targets:
        await _latency_block(target.unary, plan.warmup, scratch)
        if isinstance(target, GatewayTarget):
            await _latency_block(target.health, plan.warmup, scratch)
        await _concurrent(target.unary, plan.concurrency * 4, plan.concurrency, scratch)
        await _stream_block(target, 3, scratch)
    if scratch.errors:
        raise BenchError(f"warm-up failed {scratch.errors} times; first: {scratch.first_error}")


async def run_phases(
    targets: list[Target], plan: Plan, progress: Progress
) -> dict[str, TargetData]:
    """All three phases, each in interleaved rounds; returns the raw samples per target."""
    data = {target.name: TargetData() for target in targets}

    progress(f"unary latency, c=1: {plan.latency_requests} calls per target")
    count = plan.per_round(plan.latency_requests)
    for round_ in range(plan.rounds):
        for target in _rotated(targets, round_):
            target_data = data[target.name]
            target_data.latency_s.append(await _latency_block(target.unary, count, target_data))
            if isinstance(target, GatewayTarget):
                target_data.health_s.append(await _latency_block(target.health, count, target_data))

    progress(f"throughput, c={plan.concurrency}: {plan.throughput_requests} calls per target")
    for round_ in range(plan.rounds):
        for target in _rotated(targets, round_):
            cpu_before = cpu_seconds(target.pid) if target.pid else 0.0
            result = await _concurrent(
                target.unary,
                plan.per_round(plan.throughput_requests),
                plan.concurrency,
                data[target.name],
            )
            data[target.name].throughput.append(result)
            if target.pid:
                data[target.name].cpu_s.append(cpu_seconds(target.pid) - cpu_before)

    progress(
        f"streaming, c=1, {STREAM_CHUNKS} chunks {STREAM_DELAY_MS} ms apart: "
        f"{plan.streams} calls per target"
    )
    for round_ in range(plan.rounds):
        for target in _rotated(targets, round_):
            calls = await _stream_block(target, plan.per_round(plan.streams), data[target.name])
            data[target.name].streams.append(calls)
    return data
