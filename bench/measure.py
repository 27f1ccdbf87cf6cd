"""The measurements: unary latency, throughput and streaming, gateway vs direct, in rounds.

Every phase runs `rounds` times; in each round every target gets one block, and the order of
the targets rotates from round to round, so slow drift and bursts of noise on a shared
machine land on all of them alike. All samples are taken in this one client process.

After each block the bench pauses until the target's usage recorder has written every event
of its calls: a recorder's last batch is written up to a flush interval after the last call,
and would otherwise run during (and be charged to) the next target's block.
"""

from __future__ import annotations

import asyncio
import json
import re
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Protocol, TypeVar

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
# Every generate request carries labels, so label validation and handling are measured too.
LABELS = {"team": "bench", "env": "load"}
# Pause after each block: longer than the recorder's flush interval (0.2 s), so its last
# partial batch is written before the next block starts.
SETTLE_S = 0.25
# Throughput is taken between these shares of a block's completions: the steady state,
# without the ramp-up of the workers or the drain at the end, and without whatever a gateway
# defers past the block (its recorder's last batch), which a whole-block rate would miss.
STEADY_FROM, STEADY_TO = 0.1, 0.9
# Upper bound on waiting for a recorder to catch up; past it the run goes on (and the final
# store check reports what was lost).
DRAIN_TIMEOUT_S = 10.0
# One blank line ends an SSE event; accept both line endings.
_EVENT_END = re.compile(rb"\r\n\r\n|\n\n")

Progress = Callable[[str], None]
_T = TypeVar("_T")


class BenchError(RuntimeError):
    """A call returned something other than a well-formed answer."""


class Target(Protocol):
    name: str
    pid: int | None  # the gateway process, whose CPU time is sampled; None for direct
    calls: int  # generate calls started (unary and streaming), warm-up included
    streams: bool  # whether it takes part in the streaming phase
    # For a gateway that records usage: events its recorder has written or dropped so far.
    recorded: Callable[[], float] | None

    async def unary(self) -> None: ...

    async def stream(self) -> list[float]:
        """Seconds from call start to the arrival (parsed) of each chunk."""
        ...

    async def aclose(self) -> None: ...


def _body(prompt: str) -> bytes:
    # What the gateway sends upstream for the same request: contents and labels.
    contents = [{"role": "user", "parts": [{"text": prompt}]}]
    return json.dumps({"contents": contents, "labels": LABELS}).encode()


class DirectTarget:
    """REST straight to the emulator with one reused aiohttp session, parsing JSON and SSE."""

    def __init__(self, base_url: str, connections: int, *, streams: bool = True) -> None:
        self.name = "direct"
        self.pid: int | None = None
        self.calls = 0
        self.streams = streams
        self.recorded: Callable[[], float] | None = None
        model_url = f"{base_url}/v1beta/models/{MODEL}"
        self._unary_url = f"{model_url}:generateContent"
        self._stream_url = f"{model_url}:streamGenerateContent?alt=sse"
        self._unary_body = _body(UNARY_PROMPT)
        self._stream_body = _body(STREAM_PROMPT)
        self._headers = {"content-type": "application/json"}
        self._session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=connections))

    async def unary(self) -> None:
        self.calls += 1
        async with self._session.post(
            self._unary_url, data=self._unary_body, headers=self._headers
        ) as response:
            payload = await response.read()
            if response.status != 200:
                raise BenchError(f"HTTP {response.status}: {payload[:200]!r}")
        if not json.loads(payload).get("candidates"):
            raise BenchError("answer without candidates")

    async def stream(self) -> list[float]:
        self.calls += 1
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

    def __init__(
        self,
        name: str,
        target: str,
        pid: int,
        *,
        streams: bool = True,
        recorded: Callable[[], float] | None = None,
    ) -> None:
        self.name = name
        self.pid: int | None = pid
        self.calls = 0
        self.streams = streams
        self.recorded: Callable[[], float] | None = recorded
        self._client = GatewayClient(target)
        self._stub = self._client.generative
        self._health = health_pb2_grpc.HealthStub(self._client.channel)
        self._health_request = health_pb2.HealthCheckRequest()
        self._unary_request = text_request(MODEL, UNARY_PROMPT, labels=LABELS)
        self._stream_request = text_request(MODEL, STREAM_PROMPT, labels=LABELS)

    async def unary(self) -> None:
        self.calls += 1
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
        self.calls += 1
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
    throughput: list[tuple[int, float]] = field(default_factory=list)  # steady (calls, s)
    block_calls: list[int] = field(default_factory=list)  # successful calls per block
    cpu_s: list[float] = field(default_factory=list)  # gateway CPU per block, drain included
    streams: list[list[list[float]]] = field(default_factory=list)  # round -> call -> chunk
    errors: int = 0
    first_error: str | None = None
    rss_idle_mib: float | None = None
    rss_after_mib: float | None = None
    rss_peak_mib: float | None = None
    undrained: int = 0  # blocks after which the recorder had not caught up in time
    # The store check, gateways only: generate calls made, and what the gateway kept of them.
    calls: int = 0
    store_rows: int | None = None  # rows in usage_events after the gateway stopped
    labelled_rows: int | None = None  # of which carry the bench's labels
    log_rows: int | None = None  # rows in request_logs (gateways with request logging on)
    written_events: float | None = None  # gateway_recorder_written_events_total
    dropped_events: float | None = None  # gateway_recorder_dropped_events_total, all reasons

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


@dataclass(frozen=True)
class Block:
    calls: int  # successful calls
    steady_calls: int  # of which completed between STEADY_FROM and STEADY_TO
    steady_s: float  # the time those took


async def concurrent_block(
    call: Callable[[], Awaitable[object]], count: int, concurrency: int, data: TargetData
) -> Block:
    """`count` calls by `concurrency` workers."""
    remaining = count
    completions: list[float] = []

    async def worker() -> None:
        nonlocal remaining
        while remaining > 0:
            remaining -= 1
            try:
                await call()
            except _CALL_ERRORS as exc:
                data.error(exc)
            else:
                completions.append(time.perf_counter())

    start = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    done = len(completions)
    first, last = int(done * STEADY_FROM), int(done * STEADY_TO) - 1
    if last - first < 10:  # too few calls for a window: the whole block
        return Block(done, done, (completions[-1] if completions else start) - start)
    return Block(done, last - first, completions[last] - completions[first])


async def _stream_block(target: Target, count: int, data: TargetData) -> list[list[float]]:
    calls = []
    watches: list[float] = []
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


async def settle(target: Target, data: TargetData) -> None:
    """Pause after a block; for a recording gateway, until its recorder has caught up."""
    await asyncio.sleep(SETTLE_S)
    if target.recorded is None:
        return
    deadline = time.monotonic() + DRAIN_TIMEOUT_S
    while target.recorded() < target.calls:
        if time.monotonic() > deadline:
            data.undrained += 1
            return
        await asyncio.sleep(0.05)


def rotated(targets: list[_T], round_: int) -> list[_T]:
    """The targets' order in a round: shifted by one from round to round."""
    shift = round_ % len(targets)
    return targets[shift:] + targets[:shift]


Order = Callable[[list[Target], int], list[Target]]


async def warm_up(targets: list[Target], plan: Plan, progress: Progress) -> None:
    """Open connections and touch every code path before anything is recorded."""
    streams = ", 3 streams" if any(target.streams for target in targets) else ""
    progress(f"warm-up: {plan.warmup} unary, a c={plan.concurrency} burst{streams} each")
    scratch = TargetData()
    for target in targets:
        await _latency_block(target.unary, plan.warmup, scratch)
        if isinstance(target, GatewayTarget):
            await _latency_block(target.health, plan.warmup, scratch)
        await concurrent_block(target.unary, plan.concurrency * 4, plan.concurrency, scratch)
        if target.streams:
            await _stream_block(target, 3, scratch)
        await settle(target, scratch)
    if scratch.undrained:
        raise BenchError(f"a usage recorder did not catch up within {DRAIN_TIMEOUT_S:.0f}s")
    if scratch.errors:
        raise BenchError(f"warm-up failed {scratch.errors} times; first: {scratch.first_error}")


async def run_phases(
    targets: list[Target], plan: Plan, progress: Progress, order: Order = rotated
) -> dict[str, TargetData]:
    """All three phases, each in interleaved rounds, the targets taking their turns in
    `order(targets, round)`; returns the raw samples per target."""
    data = {target.name: TargetData() for target in targets}

    progress(f"unary latency, c=1: {plan.latency_requests} calls per target")
    count = plan.per_round(plan.latency_requests)
    for round_ in range(plan.rounds):
        for target in order(targets, round_):
            target_data = data[target.name]
            target_data.latency_s.append(await _latency_block(target.unary, count, target_data))
            if isinstance(target, GatewayTarget):
                target_data.health_s.append(await _latency_block(target.health, count, target_data))
            await settle(target, target_data)

    progress(f"throughput, c={plan.concurrency}: {plan.throughput_requests} calls per target")
    for round_ in range(plan.rounds):
        for target in order(targets, round_):
            cpu_before = cpu_seconds(target.pid) if target.pid else 0.0
            block = await concurrent_block(
                target.unary,
                plan.per_round(plan.throughput_requests),
                plan.concurrency,
                data[target.name],
            )
            data[target.name].throughput.append((block.steady_calls, block.steady_s))
            data[target.name].block_calls.append(block.calls)
            # CPU until the recorder has written the block's events: all of the block's cost.
            await settle(target, data[target.name])
            if target.pid:
                data[target.name].cpu_s.append(cpu_seconds(target.pid) - cpu_before)

    streaming = [target for target in targets if target.streams]
    if not streaming:
        return data
    progress(
        f"streaming, c=1, {STREAM_CHUNKS} chunks {STREAM_DELAY_MS} ms apart: "
        f"{plan.streams} calls per target"
    )
    for round_ in range(plan.rounds):
        for target in order(streaming, round_):
            calls = await _stream_block(target, plan.per_round(plan.streams), data[target.name])
            data[target.name].streams.append(calls)
            await settle(target, data[target.name])
    return data
