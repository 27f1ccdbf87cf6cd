"""`python -m bench.many_streams`: N StreamGenerateContent calls opened at once through one
gateway worker, counted by status, with the gateway's peak memory.

"At once" means not ramped: the client creates every call in one pass of a loop, without
yielding to the event loop between them, so all N requests leave the client as fast as it
can write them (one grpc.aio channel by default: one HTTP/2 connection carrying N streams).
The streams last long enough (10 chunks 2 s apart by default, 18 s) that all N are live
together: on a busy 2-core machine the gateway takes several seconds to start 2,000 of them,
and streams of 2 s (chunks 200 ms apart) overlapped only ~600 at a time. The result's
`peak_live` says how many were live at once.

The target (issue 11): 2,000 streams opened at once through one worker end with 0 errors,
and the gateway's peak RSS (VmHWM) stays under 300 MB (286 MiB). The gateway's upstream pool is
HTTP/1.1 (one connection per live stream), so the gateway started here gets
max_connections >= N.

    python -m bench.many_streams [--count 2000] [--chunks 10] [--chunk-delay-ms 2000]
                                 [--channels 1]

`open_streams_at_once` measures against a gateway that is already running; the command
starts its own emulator and gateway around it.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from collections import Counter
from dataclasses import dataclass, field

import grpc

from bench.processes import (
    MODEL,
    Service,
    ServiceError,
    Services,
    peak_rss_mib,
    rss_mib,
    wait_emulator_ready,
    wait_gateway_ready,
)
from bench.stats import percentile
from gemini_gateway.client.gateway_client import text_request
from gemini_gateway.generated.google.ai.generativelanguage.v1beta import (
    generative_service_pb2_grpc,
)

TARGET_STREAMS = 2000
DEFAULT_COUNT = TARGET_STREAMS
DEFAULT_CHUNKS = 10
DEFAULT_CHUNK_DELAY_MS = 2000.0
# The 300 MB, in the MiB that /proc reports (300e6 / 2**20).
TARGET_PEAK_RSS_MIB = 286.1
# The streams' own duration plus this much: a call still unanswered then is an error
# (DEADLINE_EXCEEDED), not a hang of the whole run.
DEADLINE_MARGIN_S = 60.0
# Counted with the errors: a stream that ended OK but with fewer chunks than asked for.
INCOMPLETE = "INCOMPLETE"
# Each channel its own HTTP/2 connection: grpc shares one connection between channels with
# the same target and options unless each keeps its own subchannel pool.
CLIENT_OPTIONS = [("grpc.use_local_subchannel_pool", 1)]


@dataclass
class ManyStreamsResult:
    """What `count` streams opened at once did; times are seconds from the moment the first
    call was created."""

    count: int
    ok: int  # ended with status OK and every chunk
    errors: dict[str, int] = field(default_factory=dict)  # status name (or INCOMPLETE) -> calls
    create_s: float = 0.0  # for the client to create all the calls
    first_chunks_s: float = 0.0  # until every successful stream had its first chunk: all live
    finish_s: float = 0.0  # until the last call ended
    ttfc_p50_ms: float = float("nan")  # time to first chunk, over the streams that had one
    ttfc_p99_ms: float = float("nan")
    # Most streams between their first chunk and their end at one moment: `count` when the
    # streams last long enough that all were live together.
    peak_live: int = 0

    @property
    def error_count(self) -> int:
        return sum(self.errors.values())


@dataclass
class _Outcome:
    status: str  # grpc status name, INCOMPLETE, or an exception's class name
    first_chunk_s: float | None
    end_s: float


def _peak_live(outcomes: list[_Outcome]) -> int:
    """Most streams live at once, a stream being live from its first chunk to its end."""
    # At equal times an end sorts first (False < True): touching intervals do not overlap.
    events = sorted(
        (t, starts)
        for o in outcomes
        if o.first_chunk_s is not None
        for t, starts in ((o.first_chunk_s, True), (o.end_s, False))
    )
    live = peak = 0
    for _t, starts in events:
        live += 1 if starts else -1
        peak = max(peak, live)
    return peak


async def _read(call: grpc.aio.UnaryStreamCall, started: float, chunks: int) -> _Outcome:
    received = 0
    first: float | None = None
    try:
        async for _chunk in call:
            if first is None:
                first = time.perf_counter() - started
            received += 1
        status = "OK" if received == chunks else INCOMPLETE
    except grpc.aio.AioRpcError as exc:
        status = exc.code().name
    except Exception as exc:  # anything else is counted too, never lost in a traceback
        status = type(exc).__name__
    return _Outcome(status, first, time.perf_counter() - started)


async def open_streams_at_once(
    target: str,
    count: int,
    *,
    chunks: int = DEFAULT_CHUNKS,
    chunk_delay_ms: float = DEFAULT_CHUNK_DELAY_MS,
    channels: int = 1,
    timeout_s: float | None = None,
) -> ManyStreamsResult:
    """Open `count` StreamGenerateContent calls to the gateway at `target` (host:port) at
    once and read them all to the end.

    Every call asks the emulator upstream for `chunks` chunks `chunk_delay_ms` apart (prompt
    directives), so the gateway's upstream must be the emulator. The calls are spread over
    `channels` grpc.aio channels (one HTTP/2 connection each), connected before the clock
    starts, and all created in one pass without yielding to the event loop. Each call has a
    deadline of `timeout_s` (default: the stream's own duration plus 60 s).
    """
    if count < 1 or channels < 1:
        raise ValueError("count and channels must be at least 1")
    prompt = f"[[chunks:{chunks}]] [[chunk_delay_ms:{chunk_delay_ms:g}]] Tell many streams a story."
    request = text_request(MODEL, prompt)
    deadline_s = timeout_s or chunks * chunk_delay_ms / 1000 + DEADLINE_MARGIN_S
    opened = [grpc.aio.insecure_channel(target, options=CLIENT_OPTIONS) for _ in range(channels)]
    try:
        await asyncio.gather(*(channel.channel_ready() for channel in opened))
        stubs = [generative_service_pb2_grpc.GenerativeServiceStub(ch) for ch in opened]
        started = time.perf_counter()
        calls = [
            stubs[i % channels].StreamGenerateContent(request, timeout=deadline_s)
            for i in range(count)
        ]
        create_s = time.perf_counter() - started
        outcomes = await asyncio.gather(*(_read(call, started, chunks) for call in calls))
        finish_s = time.perf_counter() - started
    finally:
        await asyncio.gather(*(channel.close() for channel in opened))
    statuses = Counter(outcome.status for outcome in outcomes)
    ok = statuses.pop("OK", 0)
    firsts = [o.first_chunk_s for o in outcomes if o.status == "OK" and o.first_chunk_s is not None]
    ttfc_ms = [s * 1000 for o in outcomes if (s := o.first_chunk_s) is not None]
    return ManyStreamsResult(
        count=count,
        ok=ok,
        errors=dict(statuses.most_common()),
        create_s=create_s,
        first_chunks_s=max(firsts, default=float("nan")),
        finish_s=finish_s,
        ttfc_p50_ms=percentile(ttfc_ms, 50),
        ttfc_p99_ms=percentile(ttfc_ms, 99),
        peak_live=_peak_live(outcomes),
    )


def _start(services: Services, count: int) -> Service:
    emulator = services.start_emulator()
    wait_emulator_ready(emulator)
    # HTTP/1.1 upstream: every live stream holds one pooled connection.
    gateway = services.start_gateway(
        "gw many streams",
        "aiohttp",
        emulator.url,
        env={"GEMINI_GATEWAY_MAX_CONNECTIONS": str(max(count, 256))},
    )
    wait_gateway_ready(gateway)
    return gateway


def _report(result: ManyStreamsResult, baseline_mib: float, peak_mib: float) -> bool:
    errors = ", ".join(f"{name} {n}" for name, n in result.errors.items()) or "none"
    print(f"{result.count} streams opened at once: {result.ok} OK, errors: {errors}")
    print(
        f"  client created the calls in {result.create_s:.2f} s; every stream live after "
        f"{result.first_chunks_s:.2f} s; all ended after {result.finish_s:.2f} s"
    )
    print(
        f"  time to first chunk p50 {result.ttfc_p50_ms:.0f} ms, p99 {result.ttfc_p99_ms:.0f} ms;"
        f" at most {result.peak_live} of them live at once"
    )
    print(f"  gateway RSS {baseline_mib:.0f} MiB before, peak (VmHWM) {peak_mib:.0f} MiB")
    met = result.error_count == 0 and peak_mib < TARGET_PEAK_RSS_MIB
    figures = f"{result.error_count} errors, {peak_mib:.0f} MiB"
    target = (
        f"target: {TARGET_STREAMS} streams at once, 0 errors and peak RSS < "
        f"{TARGET_PEAK_RSS_MIB:g} MiB"
    )
    if result.count < TARGET_STREAMS:
        print(f"{target}: not judged ({result.count} streams in this run: {figures})")
        return result.error_count == 0
    print(f"{target}: {'met' if met else 'MISSED'} ({figures})")
    return met


async def _warm_up(target: str) -> None:
    # First calls pay for imports, the route table's caches and the first upstream connects.
    result = await open_streams_at_once(target, 20, chunks=2, chunk_delay_ms=0)
    if result.error_count:
        raise ServiceError(f"warm-up streams failed: {result.errors}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.many_streams", description=__doc__)
    parser.add_argument("--count", type=int, default=DEFAULT_COUNT)
    parser.add_argument("--chunks", type=int, default=DEFAULT_CHUNKS)
    parser.add_argument("--chunk-delay-ms", type=float, default=DEFAULT_CHUNK_DELAY_MS)
    parser.add_argument("--channels", type=int, default=1, help="grpc.aio channels (connections)")
    args = parser.parse_args(argv)
    try:
        with Services() as services:
            gateway = _start(services, args.count)
            asyncio.run(_warm_up(gateway.target))
            baseline = rss_mib(gateway.pid)
            result = asyncio.run(
                open_streams_at_once(
                    gateway.target,
                    args.count,
                    chunks=args.chunks,
                    chunk_delay_ms=args.chunk_delay_ms,
                    channels=args.channels,
                )
            )
            gateway.check_alive()
            met = _report(result, baseline, peak_rss_mib(gateway.pid))
    except ServiceError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0 if met else 1


if __name__ == "__main__":
    sys.exit(main())
