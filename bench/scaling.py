"""Scaling out: throughput with one and two gateway workers, and many streams opened at once.

Workers phase. Two gateways run side by side, `--workers 1` and `--workers 2`, with default
settings, and take turns (interleaved rounds, rotating order) under the same unary load at
concurrency 64. On a 2-core machine whatever generates the load and answers upstream competes
with the gateway for the cores, so both are made as cheap as the machine allows: the load comes
from h2load (nghttp2's C load generator, posting a prepared gRPC frame) and the upstream is
nginx returning the emulator's answer, captured once, as a fixed body. When either is not
installed the phase falls back to the bench's Python grpc.aio client or the emulator and says
so. The CPU time of each part is measured, so the report shows how much of the machine each
took and how much was left for the gateway. With a baseline checkout (`--baseline`), its
1- and 2-worker gateways run through the phase too and take their turns in the same rounds.

Many-streams phase. One gateway (one worker, an upstream pool larger than the count) gets
`count` streaming calls opened at once by `bench.many_streams`; the phase reports their
statuses and the gateway's peak resident memory.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import re
import resource
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass, field

import grpc

from bench import many_streams
from bench.many_streams import ManyStreamsResult, open_streams_at_once
from bench.measure import (
    LABELS,
    UNARY_PROMPT,
    BenchError,
    Progress,
    TargetData,
    concurrent_block,
)
from bench.processes import (
    CURRENT,
    MODEL,
    Checkout,
    Service,
    ServiceError,
    Services,
    find_tool,
    machine_busy_seconds,
    metric_samples,
    metric_sum,
    peak_rss_mib,
    rss_mib,
    tree_cpu,
    tree_cpu_seconds,
    wait_emulator_ready,
    wait_gateway_ready,
)
from gemini_gateway.client.gateway_client import response_text, text_request
from gemini_gateway.generated.google.ai.generativelanguage.v1beta import (
    generative_service_pb2_grpc,
)

GENERATE_METHOD = "/google.ai.generativelanguage.v1beta.GenerativeService/GenerateContent"
CALLS = "gateway_grpc_calls_total"
WRITTEN_EVENTS = "gateway_recorder_written_events_total"
DROPPED_EVENTS = "gateway_recorder_dropped_events_total"
WORKER_COUNTS = (1, 2)
# One worker with usage recording and request logging both on, and both off, measured in the
# same rounds as the default (recording only): the recording target judged where the gateway
# alone saturates the machine. Each with the recorder events a call makes.
REC_LOG_ON, REC_LOG_OFF = "rec+log", "rec+log off"
RECORDING_VARIANTS: dict[str, dict[str, bool]] = {
    REC_LOG_ON: {"logging": True},
    REC_LOG_OFF: {"record_usage": False},
}
EVENTS_PER_CALL: dict[int | str, int] = {REC_LOG_ON: 2, REC_LOG_OFF: 0}
# The Python fallback opens this many HTTP/2 connections: one would reach a single worker,
# since SO_REUSEPORT spreads connections, not calls.
PYTHON_CHANNELS = 16
SETTLE_S = 0.3
DRAIN_TIMEOUT_S = 10.0
# Streams of the many-streams phase: long enough that all of them are open at the same time.
MANY_CHUNKS = many_streams.DEFAULT_CHUNKS
MANY_CHUNK_DELAY_MS = many_streams.DEFAULT_CHUNK_DELAY_MS
_FINISHED = re.compile(rb"finished in ([\d.]+)(s|ms|us),")
_UNITS = {b"s": 1.0, b"ms": 1e-3, b"us": 1e-6}


# --- workers -----------------------------------------------------------------------------


@dataclass(frozen=True)
class WorkersBlock:
    """One block of unary calls at full concurrency against one gateway. CPU times are
    taken while the load ran, except `gateway_cpu_s`, which runs on until the gateway's
    recorder has written the block's events: all of what the calls cost it."""

    calls: int  # calls sent
    ok: int  # calls the gateway answered OK (its own counter)
    seconds: float  # the load's duration, as the load generator reports it
    wall_s: float  # the load's duration seen from the bench: the CPU times' window
    gateway_cpu_s: float  # parent and workers, the recorder's catch-up included
    worker_cpu_s: tuple[float, ...]  # each worker process while the load ran (N > 1)
    gateway_load_cpu_s: float  # parent and workers while the load ran
    load_cpu_s: float  # the load generator
    upstream_cpu_s: float  # nginx or the emulator
    machine_cpu_s: float  # every process on the machine


@dataclass
class WorkersData:
    load_generator: str
    upstream: str
    concurrency: int
    blocks: dict[int, list[WorkersBlock]] = field(default_factory=dict)  # workers -> blocks
    # Per round, the throughput of two CPU-bound Python processes over one's on this machine,
    # measured before the phase: how far two whole cores scale here (machine_scaling).
    machine_scaling: list[float] = field(default_factory=list)
    # One worker, recording variants (RECORDING_VARIANTS) -> blocks
    variants: dict[str, list[WorkersBlock]] = field(default_factory=dict)
    dropped_events: dict[int | str, float] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    first_error: str | None = None

    @property
    def failed(self) -> int:
        every = [*self.blocks.values(), *self.variants.values()]
        return sum(b.calls - b.ok for blocks in every for b in blocks)


# A CPU-bound Python loop that prints how long it ran: the same work in one process, then in
# two at once, says how well this machine runs two busy processes side by side.
_SPIN = (
    "import time\n"
    "start = time.perf_counter()\n"
    "x = 0\n"
    "for i in range(3_000_000):\n"
    "    x += i * i % 7\n"
    "print(time.perf_counter() - start)\n"
)
MACHINE_ROUNDS = 8


def _spin_seconds(processes: int) -> float:
    """The mean time `processes` copies of the loop took, started together."""
    children = [
        subprocess.Popen([sys.executable, "-c", _SPIN], stdout=subprocess.PIPE, text=True)
        for _ in range(processes)
    ]
    times = [float(child.communicate(timeout=60)[0]) for child in children]
    return sum(times) / len(times)


def machine_scaling(rounds: int = MACHINE_ROUNDS) -> list[float]:
    """Per round, the throughput of two CPU-bound processes running at once over one alone
    (2.0: two whole cores; below, the machine itself takes a share, whatever runs on it)."""
    ratios = []
    for _ in range(rounds):
        alone = _spin_seconds(1)
        together = _spin_seconds(2)
        ratios.append(2 * alone / together)
    return ratios


def _frame(message: bytes) -> bytes:
    """A gRPC length-prefixed message, uncompressed."""
    return b"\x00" + len(message).to_bytes(4, "big") + message


def _generate_calls(gateway: Service) -> tuple[float, float, float]:
    """(generate calls answered OK, generate calls finished, events written or dropped)."""
    samples = metric_samples(gateway)
    ok = samples.get(f'{CALLS}{{code="OK",method="{GENERATE_METHOD}"}}', 0.0)
    finished = sum(v for k, v in samples.items() if k.startswith(CALLS) and GENERATE_METHOD in k)
    recorded = metric_sum(samples, WRITTEN_EVENTS) + metric_sum(samples, DROPPED_EVENTS)
    return ok, finished, recorded


async def _settle(gateway: Service, events_per_call: int = 1) -> None:
    """Until the gateway's recorder has written (or dropped) the events of every finished
    call (`events_per_call` each: 0 with recording off, 2 with logging on as well)."""
    await asyncio.sleep(SETTLE_S)
    deadline = time.monotonic() + DRAIN_TIMEOUT_S
    while time.monotonic() < deadline:
        _ok, finished, recorded = _generate_calls(gateway)
        if recorded >= finished * events_per_call:
            return
        await asyncio.sleep(0.05)


@dataclass(frozen=True)
class LoadRun:
    seconds: float
    cpu_s: float
    error: str | None = None


class H2Load:
    """h2load posting one prepared gRPC frame: `concurrency` connections, one call each at a
    time, so the kernel spreads them over the workers like separate clients."""

    def __init__(self, binary: str, services: Services, concurrency: int) -> None:
        self.name = "h2load"
        self._binary = binary
        self._concurrency = concurrency
        self._frame_path = services.folder / "generate-content.grpc"
        request = text_request(MODEL, UNARY_PROMPT, labels=LABELS)
        self._frame_path.write_bytes(_frame(request.SerializeToString()))

    async def run(self, target: str, count: int) -> LoadRun:
        command = [
            self._binary,
            f"--requests={count}",
            f"--clients={self._concurrency}",
            "--max-concurrent-streams=1",
            "--threads=1",
            f"--data={self._frame_path}",
            "--header=content-type: application/grpc",
            "--header=te: trailers",
            f"http://{target}{GENERATE_METHOD}",
        ]
        # h2load is the only child that ends during the block, so the growth of the
        # children's rusage is its CPU time.
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        start = time.perf_counter()
        process = await asyncio.create_subprocess_exec(
            *command, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT
        )
        output, _ = await process.communicate()
        wall = time.perf_counter() - start
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        cpu = after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime
        if process.returncode != 0:
            return LoadRun(wall, cpu, f"h2load exited with {process.returncode}: {output[-300:]!r}")
        finished = _FINISHED.search(output)
        seconds = float(finished[1]) * _UNITS[finished[2]] if finished else wall
        return LoadRun(seconds, cpu)


class PythonLoad:
    """The bench's grpc.aio client: `concurrency` tasks over several connections."""

    def __init__(self, concurrency: int) -> None:
        self.name = f"Python grpc.aio client, {PYTHON_CHANNELS} connections"
        self._concurrency = concurrency
        self._request = text_request(MODEL, UNARY_PROMPT, labels=LABELS)
        self._channels: dict[str, list[grpc.aio.Channel]] = {}

    def _stubs(self, target: str) -> list[generative_service_pb2_grpc.GenerativeServiceAsyncStub]:
        if target not in self._channels:
            # A local subchannel pool: otherwise channels to one target share one connection.
            options = [("grpc.use_local_subchannel_pool", 1)]
            self._channels[target] = [
                grpc.aio.insecure_channel(target, options=options) for _ in range(PYTHON_CHANNELS)
            ]
        return [
            generative_service_pb2_grpc.GenerativeServiceStub(c) for c in self._channels[target]
        ]

    async def run(self, target: str, count: int) -> LoadRun:
        stubs = itertools.cycle(self._stubs(target))
        errors = TargetData()

        async def call() -> None:
            response = await next(stubs).GenerateContent(self._request)
            if not response_text(response):
                raise BenchError("answer without text")

        before = time.process_time()
        block = await concurrent_block(call, count, self._concurrency, errors)
        cpu = time.process_time() - before
        # The steady-state rate, as for the main table: a Python client ramps up slowly.
        seconds = block.steady_s / block.steady_calls * count if block.steady_calls else 0.0
        return LoadRun(seconds, cpu, errors.first_error)

    async def aclose(self) -> None:
        for channels in self._channels.values():
            for channel in channels:
                await channel.close()


def _emulator_answer(emulator: Service) -> bytes:
    """The emulator's answer to the bench's unary request, for nginx to return as it is."""
    url = f"{emulator.url}/v1beta/models/{MODEL}:generateContent"
    contents = [{"role": "user", "parts": [{"text": UNARY_PROMPT}]}]
    body = json.dumps({"contents": contents, "labels": LABELS}).encode()
    request = urllib.request.Request(url, body, {"content-type": "application/json"})
    with urllib.request.urlopen(request, timeout=10) as response:
        return bytes(response.read())


async def _workers_block(
    load: H2Load | PythonLoad,
    gateway: Service,
    upstream: Service,
    count: int,
    data: WorkersData,
    events_per_call: int = 1,
) -> WorkersBlock:
    ok_before, _, _ = _generate_calls(gateway)
    gateway_before, upstream_before = tree_cpu(gateway.pid), tree_cpu_seconds(upstream.pid)
    machine_before, start = machine_busy_seconds(), time.perf_counter()
    run = await load.run(gateway.target, count)
    wall = time.perf_counter() - start
    machine = machine_busy_seconds() - machine_before
    gateway_during, upstream_during = tree_cpu(gateway.pid), tree_cpu_seconds(upstream.pid)
    await _settle(gateway, events_per_call)
    gateway_after = tree_cpu_seconds(gateway.pid)
    ok_after, _, _ = _generate_calls(gateway)
    if run.error and data.first_error is None:
        data.first_error = run.error
    # A worker restarted during the block is left out of the split rather than miscounted.
    workers = tuple(
        cpu - gateway_before[pid]
        for pid, cpu in gateway_during.items()
        if pid != gateway.pid and pid in gateway_before
    )
    return WorkersBlock(
        calls=count,
        ok=int(ok_after - ok_before),
        seconds=run.seconds,
        wall_s=wall,
        gateway_cpu_s=gateway_after - sum(gateway_before.values()),
        worker_cpu_s=workers,
        gateway_load_cpu_s=sum(gateway_during.values()) - sum(gateway_before.values()),
        load_cpu_s=run.cpu_s,
        upstream_cpu_s=upstream_during - upstream_before,
        machine_cpu_s=machine,
    )


def workers_phase(
    services: Services,
    emulator: Service,
    *,
    rounds: int,
    requests: int,
    concurrency: int,
    progress: Progress,
    baseline: Checkout | None = None,
) -> tuple[WorkersData, WorkersData | None]:
    """Throughput and CPU of one and two workers, and of one worker with recording and
    logging on and off (RECORDING_VARIANTS), `requests` calls per block; with a `baseline`,
    the same for its gateways, in the same rounds (same load and upstream)."""
    h2load, nginx = find_tool("h2load"), find_tool("nginx")
    notes = []
    if nginx:
        upstream = services.start_fixed_upstream(nginx, _emulator_answer(emulator))
        wait_emulator_ready(upstream)
        upstream_name = "nginx, a fixed answer"
    else:
        upstream, upstream_name = emulator, "the emulator"
        notes.append("nginx not found: the upstream is the emulator (apt-get install nginx-light)")
    load: H2Load | PythonLoad = (
        H2Load(h2load, services, concurrency) if h2load else PythonLoad(concurrency)
    )
    if not h2load:
        notes.append(
            "h2load not found: the load comes from the bench's Python client, which takes "
            "a large share of the cores (apt-get install nghttp2-client)"
        )
    checkouts = {"": CURRENT, **({"-before": baseline} if baseline else {})}
    progress("workers: how two CPU-bound processes scale on this machine")
    scaling = machine_scaling()
    # One gateway per checkout and worker count, and per recording variant (one worker), all
    # running through the phase.
    gateways: dict[tuple[str, int | str], Service] = {}
    for suffix, checkout in checkouts.items():
        for n in WORKER_COUNTS:
            gateways[suffix, n] = services.start_gateway(
                f"gw-{n}-workers{suffix}", "aiohttp", upstream.url, workers=n, checkout=checkout
            )
        for variant, options in RECORDING_VARIANTS.items():
            name = "gw-1-worker-" + variant.replace("+", "-").replace(" ", "-") + suffix
            gateways[suffix, variant] = services.start_gateway(
                name,
                "aiohttp",
                upstream.url,
                workers=1,
                checkout=checkout,
                logging=options.get("logging", False),
                record_usage=options.get("record_usage", True),
            )
    for gateway in gateways.values():
        wait_gateway_ready(gateway)
    results = {
        suffix: WorkersData(
            load.name,
            upstream_name,
            concurrency,
            {n: [] for n in WORKER_COUNTS},
            machine_scaling=scaling,
            notes=list(notes),
        )
        for suffix in checkouts
    }
    progress(
        f"workers, c={concurrency}: {requests} calls per block, {rounds} rounds, load from "
        f"{load.name}, upstream {upstream_name}" + (", before and after" if baseline else "")
    )
    keys = list(gateways)

    async def measure() -> None:
        try:
            for (suffix, key), gateway in gateways.items():  # warm-up: pools, code paths
                data = results[suffix]
                warm = await _workers_block(
                    load,
                    gateway,
                    upstream,
                    max(500, requests // 4),
                    data,
                    EVENTS_PER_CALL.get(key, 1),
                )
                if warm.ok != warm.calls or data.first_error:
                    raise BenchError(
                        f"workers warm-up: {warm.calls - warm.ok} of {warm.calls} calls to "
                        f"{gateway.name} failed; first error: {data.first_error}"
                    )
            # The order rotates from round to round.
            for round_ in range(rounds):
                shift = round_ % len(keys)
                for suffix, key in keys[shift:] + keys[:shift]:
                    data = results[suffix]
                    block = await _workers_block(
                        load,
                        gateways[suffix, key],
                        upstream,
                        requests,
                        data,
                        EVENTS_PER_CALL.get(key, 1),
                    )
                    if isinstance(key, int):
                        data.blocks[key].append(block)
                    else:
                        data.variants.setdefault(key, []).append(block)
        finally:
            if isinstance(load, PythonLoad):
                await load.aclose()

    asyncio.run(measure())
    for (suffix, key), gateway in gateways.items():
        gateway.check_alive()
        results[suffix].dropped_events[key] = metric_sum(metric_samples(gateway), DROPPED_EVENTS)
        services.stop(gateway)
    if upstream is not emulator:
        services.stop(upstream)
    return results[""], results.get("-before")


# --- many streams at once ----------------------------------------------------------------


@dataclass
class ManyStreamsData:
    count: int
    result: ManyStreamsResult
    rss_idle_mib: float  # after a warm-up of a few streams
    rss_peak_mib: float  # VmHWM after all the streams ended


def many_streams_phase(
    services: Services,
    emulator: Service,
    count: int,
    progress: Progress,
    checkout: Checkout = CURRENT,
    name: str = "gw-many-streams",
) -> ManyStreamsData:
    """`count` streams opened at once through one worker of `checkout`'s gateway; statuses
    and peak RSS."""
    progress(
        f"{count} streams opened at once through one worker ({name}), {MANY_CHUNKS} chunks "
        f"{MANY_CHUNK_DELAY_MS:g} ms apart"
    )
    # HTTP/1.1 upstream: one connection per live stream, so the pool must hold them all.
    pool = {"GEMINI_GATEWAY_MAX_CONNECTIONS": str(max(count, 256))}
    gateway = services.start_gateway(name, "aiohttp", emulator.url, env=pool, checkout=checkout)
    wait_gateway_ready(gateway)

    async def measure() -> tuple[ManyStreamsResult, float]:
        # A few short streams first: imports, caches and the first upstream connections.
        warm = await open_streams_at_once(gateway.target, 20, chunks=2, chunk_delay_ms=0)
        if warm.error_count:
            raise BenchError(f"many-streams warm-up failed: {warm.errors}")
        idle = rss_mib(gateway.pid)
        result = await open_streams_at_once(
            gateway.target, count, chunks=MANY_CHUNKS, chunk_delay_ms=MANY_CHUNK_DELAY_MS
        )
        return result, idle

    result, idle = asyncio.run(measure())
    gateway.check_alive()
    data = ManyStreamsData(count, result, idle, peak_rss_mib(gateway.pid))
    code = services.stop(gateway)
    if code != 0:
        raise ServiceError(f"{gateway.name} exited with code {code}:\n{gateway.log_tail()}")
    return data
