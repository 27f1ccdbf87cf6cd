"""`python -m bench.upstream_http2`: HTTP/2 to the upstream against the HTTP/1.1 pool.

One fixed-answer upstream, hypercorn serving a minimal ASGI app in its own process, that
speaks HTTP/1.1 and cleartext HTTP/2 (h2c, prior knowledge) on one port and answers with
the emulator's own unary answer and SSE stream (captured from it at the start). Three
clients, shaped as server/transports.py uses them (request, body read or streamed in
chunks, response closed), measured in this process, interleaved in rounds (the order
rotating):

- `aiohttp h1`: aiohttp's pooled ClientSession, HTTP/1.1 (the gateway's default);
- `httpx h1`: httpx.AsyncClient, HTTP/1.1 (`http_client = "httpx"`);
- `httpx h2`: httpx.AsyncClient(http1=False, http2=True), the `h2` package, connections
  multiplexing the calls, each as many as the server's SETTINGS_MAX_CONCURRENT_STREAMS
  allows (100 here, hypercorn's default and a common setting).

For unary calls and for streams (the events sent as fast as possible), at c=1 and c=64: the
client's CPU time per call (this process's, the upstream runs in another) and the p50 of a
call, medians over the rounds. Then 500 streams opened at once, each sending
`STREAM_EVENTS` events `STREAM_EVENT_GAP_MS` apart: how many connections each client
opened (the upstream counts distinct client ports) and how many streams ran at once, with
the pool at the gateway's default 256 and at 1,000. Last, the gateway's own pool slot
(ConnectionSlots: taken before each request, given back when its response closes) timed
alone here with timeit.

Cleartext on loopback: TLS, which Google's endpoints need, costs both protocols about the
same per byte, and HTTP/1.1 pays one handshake per connection where HTTP/2 pays one in all.

    python -m bench.upstream_http2 [--rounds 5] [--quick]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import json
import math
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import timeit
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import aiohttp
import httpx

from bench.processes import free_port

HOST = "127.0.0.1"
UNARY_PATH = "/v1beta/models/gemini-2.5-flash:generateContent"
STREAM_PATH = "/v1beta/models/gemini-2.5-flash:streamGenerateContent"
PROMPT = "Tell me a short story about a lighthouse keeper."
REQUEST_BODY = json.dumps({"contents": [{"role": "user", "parts": [{"text": PROMPT}]}]}).encode()
HEADERS = {"content-type": "application/json", "x-goog-api-key": "bench-key"}
VARIANTS = ("aiohttp h1", "httpx h1", "httpx h2")
CONCURRENCY = (1, 64)
# The many-streams test: 500 held open about two seconds each.
MANY_STREAMS = 500
STREAM_EVENTS = 10
STREAM_EVENT_GAP_MS = 200
POOL_SIZES = (256, 1000)
# Streams per HTTP/2 connection the upstream allows (hypercorn's default, a common setting).
H2_MAX_CONCURRENT_STREAMS = 100
START_TIMEOUT_S = 30.0


# --- the upstream: hypercorn in its own process ------------------------------------------


def make_app(unary: bytes, events: list[bytes]) -> Callable[..., Awaitable[None]]:
    """The fixed-answer ASGI app. Also `/_stats` (distinct client connections seen and the
    most streams open at once, since the last `/_reset`) and `/_reset`."""
    connections: set[tuple[str, int]] = set()
    versions: set[str] = set()
    streams = {"open": 0, "peak": 0}

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                elif message["type"] == "lifespan.shutdown":
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        if scope["type"] != "http":
            return
        while (await receive()).get("more_body"):
            pass
        path = scope["path"]
        if path.startswith("/_"):
            if path == "/_reset":
                connections.clear()
                versions.clear()
                streams["peak"] = streams["open"]
            stats = {"connections": len(connections), "peak": streams["peak"]}
            stats["versions"] = sorted(versions)  # type: ignore[assignment]
            await _send(send, 200, "application/json", json.dumps(stats).encode())
            return
        connections.add(tuple(scope["client"]))
        versions.add(scope["http_version"])
        if path != STREAM_PATH:
            await _send(send, 200, "application/json; charset=UTF-8", unary)
            return
        gap_s = 0.0
        for pair in scope["query_string"].decode().split("&"):
            if pair.startswith("gap_ms="):
                gap_s = int(pair[7:]) / 1000
        headers = [(b"content-type", b"text/event-stream")]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        streams["open"] += 1
        streams["peak"] = max(streams["peak"], streams["open"])
        try:
            for event in events:
                if gap_s:
                    await asyncio.sleep(gap_s)
                await send({"type": "http.response.body", "body": event, "more_body": True})
            await send({"type": "http.response.body", "body": b""})
        finally:
            streams["open"] -= 1

    return app


async def _send(send: Any, status: int, content_type: str, body: bytes) -> None:
    headers = [(b"content-type", content_type.encode()), (b"content-length", b"%d" % len(body))]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def serve(port: int, answers: Path) -> None:
    """Run the upstream (the `--serve` mode of this module, in its own process)."""
    from hypercorn.asyncio import serve as hypercorn_serve
    from hypercorn.config import Config

    unary = (answers / "unary.json").read_bytes()
    events = json.loads((answers / "events.json").read_text())
    config = Config()
    config.bind = [f"{HOST}:{port}"]
    config.accesslog = None
    config.loglevel = "WARNING"
    config.backlog = 4096
    config.keep_alive_timeout = 600
    # Connections kept for the whole run (hypercorn closes one after 1,000 requests).
    config.keep_alive_max_requests = 10**9
    config.h2_max_concurrent_streams = H2_MAX_CONCURRENT_STREAMS
    app = make_app(unary, [event.encode() for event in events])
    asyncio.run(hypercorn_serve(app, config))  # type: ignore[arg-type]


async def capture_answers(folder: Path, events_per_stream: int) -> None:
    """The emulator's unary answer and SSE stream (`events_per_stream` events), as files."""
    from gemini_gateway.emulator.runner import start_emulator

    emulator = await start_emulator()
    try:
        async with aiohttp.ClientSession() as session:
            async with session.post(
                f"{emulator.url}{UNARY_PATH}", data=REQUEST_BODY, headers=HEADERS
            ) as response:
                (folder / "unary.json").write_bytes(await response.read())
            prompt = f"[[chunks:{events_per_stream}]] {PROMPT}"
            body = {"contents": [{"role": "user", "parts": [{"text": prompt}]}]}
            async with session.post(
                f"{emulator.url}{STREAM_PATH}?alt=sse", json=body, headers=HEADERS
            ) as response:
                text = (await response.read()).decode()
    finally:
        await emulator.close()
    events = [f"{event}\r\n\r\n" for event in text.replace("\r\n", "\n").split("\n\n") if event]
    (folder / "events.json").write_text(json.dumps(events))


@contextlib.contextmanager
def upstream_process(answers: Path) -> Any:
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "bench.upstream_http2", "--serve", str(port), str(answers)],
        cwd=Path(__file__).resolve().parents[1],
    )
    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            with contextlib.suppress(OSError), socket.create_connection((HOST, port), 0.2):
                break
            if process.poll() is not None or time.monotonic() > deadline:
                raise SystemExit("the hypercorn upstream did not start")
            time.sleep(0.05)
        yield f"http://{HOST}:{port}", process.pid
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(5)
        except subprocess.TimeoutExpired:
            process.kill()


# --- the clients ---------------------------------------------------------------------------


class Client(Protocol):
    """One HTTP client as the gateway's transports use it: unary and streamed calls."""

    name: str

    async def unary(self, url: str) -> int: ...

    async def stream(self, url: str) -> int: ...

    async def aclose(self) -> None: ...


class AiohttpClient:
    def __init__(self, pool: int) -> None:
        self.name = "aiohttp h1"
        self._session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=pool, ttl_dns_cache=300),
            auto_decompress=True,
            skip_auto_headers=("content-type",),
        )

    async def unary(self, url: str) -> int:
        response = await self._session.request("POST", url, data=REQUEST_BODY, headers=HEADERS)
        try:
            return len(await response.read())
        finally:
            response.close()

    async def stream(self, url: str) -> int:
        response = await self._session.request("POST", url, data=REQUEST_BODY, headers=HEADERS)
        try:
            size = 0
            async for chunk in response.content.iter_any():
                size += len(chunk)
            return size
        finally:
            response.close()

    async def aclose(self) -> None:
        await self._session.close()


class HttpxClient:
    def __init__(self, pool: int, http2: bool) -> None:
        self.name = "httpx h2" if http2 else "httpx h1"
        self._client = httpx.AsyncClient(
            http1=not http2,
            http2=http2,
            limits=httpx.Limits(max_connections=pool, max_keepalive_connections=pool),
            timeout=httpx.Timeout(600),
        )

    async def _open(self, url: str) -> httpx.Response:
        request = self._client.build_request("POST", url, content=REQUEST_BODY, headers=HEADERS)
        return await self._client.send(request, stream=True)

    async def unary(self, url: str) -> int:
        response = await self._open(url)
        try:
            size = 0
            async for chunk in response.aiter_bytes():
                size += len(chunk)
            return size
        finally:
            await response.aclose()

    async def stream(self, url: str) -> int:
        return await self.unary(url)  # the same reading, chunk by chunk

    async def aclose(self) -> None:
        await self._client.aclose()


def make_client(variant: str, pool: int) -> Client:
    if variant == "aiohttp h1":
        return AiohttpClient(pool)
    return HttpxClient(pool, http2=variant == "httpx h2")


# --- measuring -------------------------------------------------------------------------------


@dataclass
class Figures:
    """Per (variant, kind, concurrency): each round's CPU µs per call and p50 ms."""

    cpu_us: dict[tuple[str, str, int], list[float]] = field(default_factory=dict)
    p50_ms: dict[tuple[str, str, int], list[float]] = field(default_factory=dict)

    def add(self, key: tuple[str, str, int], cpu_us: float, p50_ms: float) -> None:
        self.cpu_us.setdefault(key, []).append(cpu_us)
        self.p50_ms.setdefault(key, []).append(p50_ms)


async def run_batch(
    call: Callable[[], Awaitable[int]], calls: int, concurrency: int
) -> tuple[float, float]:
    """`calls` calls, `concurrency` at a time: (client CPU µs per call, p50 ms)."""
    latencies: list[float] = []
    per_worker = calls // concurrency

    async def worker() -> None:
        for _ in range(per_worker):
            started = time.perf_counter()
            await call()
            latencies.append(time.perf_counter() - started)

    cpu = time.process_time()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    cpu = time.process_time() - cpu
    return cpu / len(latencies) * 1e6, statistics.median(latencies) * 1000


async def measure_calls(base: str, rounds: int, calls: dict[str, int], figures: Figures) -> None:
    clients = {variant: make_client(variant, POOL_SIZES[0]) for variant in VARIANTS}
    unary_url = f"{base}{UNARY_PATH}"
    stream_url = f"{base}{STREAM_PATH}?alt=sse"
    try:
        for client in clients.values():  # warm: connections open, code paths loaded
            await run_batch(functools.partial(client.unary, unary_url), 64, 64)
            await run_batch(functools.partial(client.stream, stream_url), 64, 64)
        for round_number in range(rounds):
            order = VARIANTS[round_number % 3 :] + VARIANTS[: round_number % 3]
            for kind in ("unary", "stream"):
                for concurrency in CONCURRENCY:
                    for variant in order:
                        client = clients[variant]
                        url = unary_url if kind == "unary" else stream_url
                        method = client.unary if kind == "unary" else client.stream
                        count = calls[kind] * (8 if concurrency > 1 else 1)
                        cpu_us, p50 = await run_batch(
                            functools.partial(method, url), count, concurrency
                        )
                        figures.add((variant, kind, concurrency), cpu_us, p50)
            print(f"  round {round_number + 1}/{rounds} done", file=sys.stderr)
    finally:
        for client in clients.values():
            await client.aclose()


async def _stats(base: str, reset: bool = False) -> dict[str, Any]:
    async with aiohttp.ClientSession() as session:
        async with session.get(f"{base}/{'_reset' if reset else '_stats'}") as response:
            return dict(await response.json())


async def measure_many_streams(base: str, variant: str, pool: int) -> dict[str, Any]:
    """MANY_STREAMS slow streams opened at once through one client with this pool size."""
    client = make_client(variant, pool)
    url = f"{base}{STREAM_PATH}?alt=sse&gap_ms={STREAM_EVENT_GAP_MS}"
    try:
        await _stats(base, reset=True)
        started = time.perf_counter()
        sizes = await asyncio.gather(*(client.stream(url) for _ in range(MANY_STREAMS)))
        took = time.perf_counter() - started
    finally:
        await client.aclose()
    stats = await _stats(base)
    assert all(sizes), "a stream came back empty"
    return {"took_s": took, **stats}


class _NoGauge:
    def inc(self) -> None:
        pass

    def dec(self) -> None:
        pass


def time_pool_slot() -> tuple[float, float]:
    """µs per call of the gateway's pool slot, taken and given back, with its in-use gauge
    and with the gauge swapped for one that does nothing (best of 7, alternating)."""
    from gemini_gateway.server import transports

    slots = transports.ConnectionSlots(256, 1.0)
    clock = time.monotonic

    def one() -> None:
        slots.take_nowait()
        slots.give_back(clock())

    number = 200_000
    gauge = transports.CONNECTIONS_IN_USE
    best = {True: math.inf, False: math.inf}
    try:
        for _ in range(7):
            for with_gauge in (True, False):
                transports.CONNECTIONS_IN_USE = gauge if with_gauge else _NoGauge()  # type: ignore[assignment]
                took = timeit.timeit(one, number=number) / number * 1e6
                best[with_gauge] = min(best[with_gauge], took)
    finally:
        transports.CONNECTIONS_IN_USE = gauge
    return best[True], best[False]


# --- the report ------------------------------------------------------------------------------


def report(
    figures: Figures,
    many: dict[tuple[str, int], dict[str, Any]],
    slot: tuple[float, float],
    rounds: int,
) -> str:
    lines = [
        f"# upstream HTTP/2 vs HTTP/1.1 ({rounds} rounds, medians; {os.cpu_count()} cores)",
        "",
        "| client | kind | c | client CPU µs/call | vs aiohttp h1 | p50 ms |",
        "|---|---|---|---|---|---|",
    ]
    for kind in ("unary", "stream"):
        for concurrency in CONCURRENCY:
            base = statistics.median(figures.cpu_us[("aiohttp h1", kind, concurrency)])
            for variant in VARIANTS:
                key = (variant, kind, concurrency)
                cpu = statistics.median(figures.cpu_us[key])
                p50 = statistics.median(figures.p50_ms[key])
                lines.append(
                    f"| {variant} | {kind} | {concurrency} | {cpu:,.0f} | {cpu / base:.2f} | "
                    f"{p50:.2f} |"
                )
    lines += [
        "",
        f"{MANY_STREAMS} streams at once ({STREAM_EVENTS} events {STREAM_EVENT_GAP_MS} ms "
        "apart each):",
        "",
        "| client | pool | connections | most streams at once | all done in s | protocol |",
        "|---|---|---|---|---|---|",
    ]
    for (variant, pool), stats in many.items():
        lines.append(
            f"| {variant} | {pool} | {stats['connections']} | {stats['peak']} | "
            f"{stats['took_s']:.1f} | {', '.join(stats['versions'])} |"
        )
    lines += [
        "",
        f"Pool slot (ConnectionSlots take + give back): {slot[0]:.2f} µs per call with the "
        f"in-use gauge, {slot[1]:.2f} µs without it.",
    ]
    return "\n".join(lines)


async def run(rounds: int, quick: bool) -> str:
    calls = {"unary": 100 if quick else 300, "stream": 40 if quick else 120}
    with tempfile.TemporaryDirectory(prefix="bench-h2-") as folder:
        answers = Path(folder)
        await capture_answers(answers, events_per_stream=STREAM_EVENTS)
        with upstream_process(answers) as (base, _pid):
            figures = Figures()
            await measure_calls(base, rounds, calls, figures)
            many: dict[tuple[str, int], dict[str, Any]] = {}
            for pool in POOL_SIZES:
                for variant in VARIANTS:
                    many[(variant, pool)] = await measure_many_streams(base, variant, pool)
                    print(f"  {MANY_STREAMS} streams: {variant}, pool {pool} done", file=sys.stderr)
    return report(figures, many, time_pool_slot(), rounds)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.upstream_http2")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--quick", action="store_true", help="fewer calls per round")
    parser.add_argument("--serve", nargs=2, metavar=("PORT", "ANSWERS"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.serve:
        serve(int(args.serve[0]), Path(args.serve[1]))
        return
    runner: Callable[[Coroutine[Any, Any, str]], str] = asyncio.run
    with contextlib.suppress(ImportError):
        import uvloop  # the gateway's event loop (server/workers.py)

        runner = uvloop.run
    print(runner(run(args.rounds, args.quick)))


if __name__ == "__main__":
    main()
