"""`python -m bench.limits`: what caller authentication and per-project limits add to a call.

Gateways against one emulator, each its own process, measured with unary GenerateContent
calls at c=1, interleaved call by call (each gateway in turn, the order rotating), in
rounds:

- `off`: development mode (no callers, no limits): the gateway as app.py builds it;
- `off, token sent`: the same, its calls carrying a bearer token it does not check: what
  carrying a token costs the client and the transport, apart from checking it;
- `off + interceptor`: the same with the LimitsInterceptor in the interceptor chain and
  nothing to limit (it hands every handler back unchanged). Left out once app.py wires the
  interceptor itself: `off` is then this;
- `auth`: two projects with callers, every call with a bearer token, no limits;
- `auth + limits`: the same with every limit on for the calling project (concurrency,
  requests and tokens per minute, all far above what the bench reaches) and the pool
  reserve of two projects.

The target (issue 8): `auth + limits` adds at most 0.05 ms to the unary p50 of `off`. The
gateways' CPU time per call (every thread's run time, from /proc/<pid>/task/*/schedstat,
over each round, idle moments included) is shown too. Usage recording is off in all of
them (it is the same work in each, and its batches would add noise). A second table times
the LimitsInterceptor alone in this process (a handler that does nothing, best of 5), the
limits' own cost without the noise of processes sharing a machine.

    python -m bench.limits [--requests 6000] [--rounds 30] [--quick] [--markdown PATH]
"""

from __future__ import annotations

import argparse
import asyncio
import inspect
import logging
import os
import platform
import signal
import sys
import tempfile
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from importlib.metadata import version
from pathlib import Path
from typing import Any
from unittest import mock

import grpc
from rich.console import Console

from bench.measure import (
    BenchError,
    GatewayTarget,
    TargetData,
    _latency_block,
    rotated,
)
from bench.processes import (
    HOST,
    Service,
    ServiceError,
    Services,
    free_port,
    wait_emulator_ready,
    wait_gateway_ready,
)
from bench.report import Report, TableData, markdown, print_report
from bench.stats import percentile
from gemini_gateway.client.gateway_client import response_text
from gemini_gateway.server.identity import token_sha256

TARGET_ADDED_P50_MS = 0.05
TOKEN = "bench-limits-caller-token"
OTHER_TOKEN = "bench-limits-other-token"
# The child process's switch: chain the LimitsInterceptor in (until app.py does).
INTERCEPTOR_ENV = "BENCH_LIMITS_INTERCEPTOR"
FULL = {"requests": 6000, "rounds": 30}
QUICK = {"requests": 600, "rounds": 4}
OFF = "off"
TOKEN_SENT = "off, token sent"


@dataclass(frozen=True)
class Variant:
    name: str
    auth: bool
    limits: bool
    interceptor: bool  # chained in by the child when app.py does not wire it
    token: bool = False  # calls carry the bearer token even without auth

    @property
    def sends_token(self) -> bool:
        return self.auth or self.token


VARIANTS = (
    Variant(OFF, auth=False, limits=False, interceptor=False),
    Variant(TOKEN_SENT, auth=False, limits=False, interceptor=False, token=True),
    Variant("off + interceptor", auth=False, limits=False, interceptor=True),
    Variant("auth", auth=True, limits=False, interceptor=True),
    Variant("auth + limits", auth=True, limits=True, interceptor=True),
)
ON = VARIANTS[-1].name


def config_toml(variant: Variant) -> str:
    """The gateway's configuration file: projects and callers, and limits if on."""
    if not variant.auth:
        return ""
    lines = [f"reserved_pool_share = {0.5 if variant.limits else 0}", "", "[projects.bench]"]
    if variant.limits:
        lines += [
            "max_concurrent_calls = 64",
            "requests_per_minute = 10000000",
            "tokens_per_minute = 1000000000",
        ]
    lines += [
        "[[projects.bench.callers]]",
        'name = "bench"',
        f'token_sha256 = "{token_sha256(TOKEN)}"',
        "",
        "[projects.other]",
        "[[projects.other.callers]]",
        'name = "other"',
        f'token_sha256 = "{token_sha256(OTHER_TOKEN)}"',
    ]
    return "\n".join(lines) + "\n"


# --- the gateway process ------------------------------------------------------------------


def _add_limits_interceptor() -> None:
    """Until app.py wires the LimitsInterceptor, add it to the grpc.aio.server app.py
    creates (this process starts one gateway): after the CallerInterceptor when there is
    one, else after the first interceptor (the MetricsInterceptor)."""
    from gemini_gateway.server.config import Settings
    from gemini_gateway.server.identity import CallerDirectory
    from gemini_gateway.server.limits import LimitsInterceptor

    if interceptor_wired():
        return
    settings = Settings()
    limits = LimitsInterceptor(settings, CallerDirectory(settings))
    server_factory = grpc.aio.server

    def server(*args: Any, interceptors: Any = (), **kwargs: Any) -> Any:
        chain = list(interceptors)
        names = [type(each).__name__ for each in chain]
        at = names.index("CallerInterceptor") + 1 if "CallerInterceptor" in names else 1
        chain.insert(at, limits)
        kwargs["interceptors"] = chain
        return server_factory(*args, **kwargs)

    mock.patch.object(grpc.aio, "server", server).start()


async def _serve() -> None:
    from gemini_gateway.server.app import start_gateway
    from gemini_gateway.server.config import Settings

    if os.environ.get(INTERCEPTOR_ENV) == "1":
        _add_limits_interceptor()
    gateway = await start_gateway(Settings())
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    print(f"gateway listening on {gateway.target}", flush=True)
    await stop.wait()
    await gateway.stop()


def interceptor_wired() -> bool:
    """Whether app.py builds its server with the LimitsInterceptor itself."""
    from gemini_gateway.server import app

    return "LimitsInterceptor(" in inspect.getsource(app)


def start_gateway(services: Services, variant: Variant, emulator: Service, folder: Path) -> Service:
    name = "-".join("".join(c if c.isalnum() else " " for c in variant.name).split())
    config = folder / f"{name}.toml"
    config.write_text(config_toml(variant))
    port = free_port()
    env = {
        "GEMINI_GATEWAY_CONFIG": str(config),
        "GEMINI_GATEWAY_HOST": HOST,
        "GEMINI_GATEWAY_PORT": str(port),
        "GEMINI_GATEWAY_UPSTREAM_URL": emulator.url,
        "GEMINI_GATEWAY_STORE_URL": f"sqlite+aiosqlite:///{folder / name}.db",
        "GEMINI_GATEWAY_RECORD_USAGE": "false",
        "GEMINI_GATEWAY_LOG_LEVEL": "WARNING",
        INTERCEPTOR_ENV: "1" if variant.interceptor else "0",
    }
    return services._spawn(name, ["-m", "bench.limits", "--serve"], port, env)


# --- measuring ----------------------------------------------------------------------------


def cpu_ns(pid: int) -> int:
    """CPU time of all the process's threads, in nanoseconds (schedstat: no clock ticks)."""
    total = 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            total += int((task / "schedstat").read_text().split()[0])
        except (OSError, ValueError, IndexError):
            pass  # a thread that just ended
    return total


class CallerTarget(GatewayTarget):
    """GatewayTarget whose calls carry a caller's bearer token (or none)."""

    def __init__(self, name: str, target: str, pid: int, token: str | None) -> None:
        super().__init__(name, target, pid, streams=False)
        self._metadata = (("authorization", f"Bearer {token}"),) if token else None

    async def unary(self) -> None:
        self.calls += 1
        response = await self._stub.GenerateContent(self._unary_request, metadata=self._metadata)
        if not response_text(response):
            raise BenchError("answer without text")


async def measure(
    gateways: dict[Variant, Service], requests: int, rounds: int, warmup: int, progress: Any
) -> dict[str, TargetData]:
    targets = [
        CallerTarget(v.name, gw.target, gw.pid, TOKEN if v.sends_token else None)
        for v, gw in gateways.items()
    ]
    data = {target.name: TargetData() for target in targets}
    try:
        progress(f"warm-up: {warmup} calls each")
        scratch = TargetData()
        for target in targets:
            await _latency_block(target.unary, warmup, scratch)
        if scratch.errors:
            raise BenchError(f"warm-up failed {scratch.errors} times: {scratch.first_error}")
        per_round = max(1, requests // rounds)
        progress(f"unary latency, c=1: {per_round * rounds} calls per gateway in {rounds} rounds")
        for round_ in range(rounds):
            samples: dict[str, list[float]] = {target.name: [] for target in targets}
            cpu_before = {target.name: cpu_ns(target.pid or 0) for target in targets}
            for i in range(per_round):
                # Call by call, each gateway in turn (the order rotating): drift and bursts
                # of noise fall on all of them alike.
                for member in rotated(list(targets), round_ + i):
                    samples[member.name] += await _latency_block(member.unary, 1, data[member.name])
            for target in targets:
                target_data = data[target.name]
                target_data.latency_s.append(samples[target.name])
                target_data.cpu_s.append((cpu_ns(target.pid or 0) - cpu_before[target.name]) / 1e9)
                target_data.block_calls.append(len(samples[target.name]))
    finally:
        for target in targets:
            await target.aclose()
    return data


# --- the interceptor alone, in this process ---------------------------------------------

INTERCEPTOR_CALLS = 20_000
INTERCEPTOR_REPEATS = 5


async def _interceptor_us(interceptor: Any, metadata: tuple[tuple[str, str], ...]) -> float:
    """Best-of-N µs per call that the interceptor adds to choosing and running a handler
    (the handler itself does nothing: what is left is the interceptor's own work)."""
    from gemini_gateway.generated.google.ai.generativelanguage.v1beta import (
        generative_service_pb2,
    )

    answer = generative_service_pb2.GenerateContentResponse()
    answer.usage_metadata.total_token_count = 31

    async def behaviour(request: Any, context: Any) -> Any:
        return answer

    handler: Any = grpc.unary_unary_rpc_method_handler(behaviour)

    async def continuation(details: Any) -> Any:
        return handler

    class Details:
        method = "/google.ai.generativelanguage.v1beta.GenerativeService/GenerateContent"
        invocation_metadata = metadata

    class Context:
        def time_remaining(self) -> float | None:
            return None

    details, context = Details(), Context()
    best = float("inf")
    for _ in range(INTERCEPTOR_REPEATS):
        started = time.perf_counter()
        for _ in range(INTERCEPTOR_CALLS):
            chosen = await continuation(details)
            await chosen.unary_unary(None, context)
        bare = time.perf_counter() - started
        started = time.perf_counter()
        for _ in range(INTERCEPTOR_CALLS):
            chosen = await interceptor.intercept_service(continuation, details)
            await chosen.unary_unary(None, context)
        best = min(best, (time.perf_counter() - started - bare) / INTERCEPTOR_CALLS * 1e6)
    return best


def interceptor_table() -> TableData:
    """What the LimitsInterceptor costs per call on its own, for each gateway's settings."""
    import tomllib

    from gemini_gateway.server.app import build_route_table
    from gemini_gateway.server.config import Settings
    from gemini_gateway.server.identity import CallerDirectory
    from gemini_gateway.server.limits import LimitsInterceptor

    routes = build_route_table()
    rows = []
    for variant in VARIANTS[2:]:
        settings = Settings(**tomllib.loads(config_toml(variant)))
        interceptor = LimitsInterceptor(settings, CallerDirectory(settings), routes)
        metadata = (("authorization", f"Bearer {TOKEN}"),) if variant.auth else ()
        added = asyncio.run(_interceptor_us(interceptor, metadata))
        what = "limits" if interceptor.active else "handler handed back unchanged"
        rows.append([variant.name, what, f"{added:.2f}"])
    header = ["settings", "interceptor", "added per call (µs), best of 5"]
    return TableData("The LimitsInterceptor alone, in process", header, rows)


# --- the report ---------------------------------------------------------------------------


def _p50_ms(data: TargetData) -> float:
    return percentile([s for block in data.latency_s for s in block], 50) * 1000


def _round_p50s_ms(data: TargetData) -> list[float]:
    return [percentile(block, 50) * 1000 for block in data.latency_s]


def _cpu_us(data: TargetData) -> float:
    calls = sum(data.block_calls)
    return sum(data.cpu_s) / calls * 1e6 if calls else float("nan")


def _cpu_cells(name: str, data: TargetData, off_cpu: float) -> list[str]:
    cpu = _cpu_us(data)
    return [f"{cpu:.0f}", "—" if name == OFF else f"{cpu - off_cpu:+.0f}"]


def build(data: dict[str, TargetData], requests: int, rounds: int) -> Report:
    off = data[OFF]
    off_p50, off_cpu = _p50_ms(off), _cpu_us(off)
    rows = []
    for name, target in data.items():
        p50 = _p50_ms(target)
        per_round = [
            a - b for a, b in zip(_round_p50s_ms(target), _round_p50s_ms(off), strict=True)
        ]
        added = "—" if name == OFF else f"{p50 - off_p50:+.3f}"
        spread = f"{min(per_round):+.3f} to {max(per_round):+.3f}"
        rounds_text = "—" if name == OFF else f"{percentile(per_round, 50):+.3f} ({spread})"
        rows.append(
            [
                name,
                f"{p50:.3f}",
                f"{percentile([s for b in target.latency_s for s in b], 99) * 1000:.3f}",
                added,
                rounds_text,
                *_cpu_cells(name, target, off_cpu),
            ]
        )
    header = [
        "gateway",
        "unary p50 (ms)",
        "unary p99 (ms)",
        "added p50 vs off (ms)",
        "added p50 per round: median (range)",
        "CPU/call (µs)",
        "added CPU/call (µs)",
    ]
    table = TableData("Caller authentication and per-project limits, unary c=1", header, rows)
    added_ms = _p50_ms(data[ON]) - off_p50
    met = added_ms <= TARGET_ADDED_P50_MS
    target_line = (
        f"auth + limits vs off, added unary p50 {added_ms:+.3f} ms "
        f"{'≤' if met else '>'} {TARGET_ADDED_P50_MS} ms: {'met' if met else 'MISSED'}"
    )
    notes = [
        "`off`: development mode, no callers, no limits; `off, token sent`: the same, the "
        "calls carrying a bearer token it does not check (what carrying it costs the client "
        "and the transport); `auth`: two projects with callers, "
        "calls with a bearer token; `auth + limits`: and the calling project with "
        "max_concurrent_calls, requests_per_minute and tokens_per_minute set (never reached) "
        "and the pool reserve of two projects (reserved_pool_share 0.5). Usage recording off.",
        "CPU/call: the gateway process's CPU time (all threads, schedstat) over a round / "
        "the round's calls.",
    ]
    if "auth" in data and "off + interceptor" in data:
        limits_alone = _p50_ms(data[ON]) - _p50_ms(data["auth"])
        floor = _p50_ms(data["off + interceptor"]) - off_p50
        notes.append(
            f"Apart: the limits (auth + limits vs auth) {limits_alone:+.3f} ms; the noise "
            f"between processes (off + interceptor vs off, which differ by nothing that runs "
            f"per call) {floor:+.3f} ms."
        )
    failed = False
    for name, target in data.items():
        if target.errors:
            failed = True
            notes.append(
                f"ERRORS: {name} failed {target.errors} calls; first: {target.first_error}"
            )
    versions = ", ".join(f"{p} {version(p)}" for p in ("grpcio", "aiohttp"))
    meta = (
        f"{datetime.now(UTC):%Y-%m-%d %H:%M UTC}; {platform.python_implementation()} "
        f"{platform.python_version()}, {versions}; {platform.machine()} with "
        f"{len(os.sched_getaffinity(0))} CPUs; {rounds} rounds; per gateway "
        f"{requests // rounds * rounds} unary calls at c=1; load average at the end "
        f"{os.getloadavg()[0]:.2f}"
    )
    return Report([table], [target_line], notes, meta, failed)


# --- the command --------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench.limits",
        description="Unary latency and gateway CPU per call with caller authentication and "
        "per-project limits on vs off (docs/limits.md).",
    )
    parser.add_argument(
        "--requests", type=int, help=f"calls per gateway (default {FULL['requests']})"
    )
    parser.add_argument("--rounds", type=int, help=f"interleaved rounds (default {FULL['rounds']})")
    parser.add_argument("--quick", action="store_true", help="a short smoke run")
    parser.add_argument("--markdown", type=Path, metavar="PATH", help="also write the table here")
    parser.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)  # the child
    args = parser.parse_args(argv)
    defaults = QUICK if args.quick else FULL
    for name, value in defaults.items():
        if getattr(args, name) is None:
            setattr(args, name, value)
        if getattr(args, name) < 1:
            parser.error(f"--{name} must be at least 1")
    return args


def run(args: argparse.Namespace, console: Console, log: Console) -> int:
    started = time.monotonic()

    def progress(message: str) -> None:
        log.print(f"[dim]{time.monotonic() - started:6.1f}s  {message}[/dim]", highlight=False)

    variants = [v for v in VARIANTS if not (interceptor_wired() and v.name == "off + interceptor")]
    with Services() as services, tempfile.TemporaryDirectory(prefix="bench-limits-") as folder:
        progress("starting the emulator and the gateways")
        emulator = services.start_emulator()
        wait_emulator_ready(emulator)
        gateways = {v: start_gateway(services, v, emulator, Path(folder)) for v in variants}
        for gateway in gateways.values():
            wait_gateway_ready(gateway)
        warmup = min(300, args.requests // 5 + 20)
        data = asyncio.run(measure(gateways, args.requests, args.rounds, warmup, progress))
        for gateway in gateways.values():
            gateway.check_alive()
    progress("done")
    progress("the interceptor alone, in process")
    report = build(data, args.requests, args.rounds)
    report.tables.append(interceptor_table())
    print_report(report, console)
    if args.markdown:
        args.markdown.parent.mkdir(parents=True, exist_ok=True)
        args.markdown.write_text(markdown(report))
        log.print(f"Markdown written to {args.markdown}")
    return 1 if report.failed else 0


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.serve:
        logging.basicConfig(level=logging.WARNING)
        asyncio.run(_serve())
        return 0
    console = Console() if sys.stdout.isatty() else Console(width=150)
    log = Console(stderr=True)
    try:
        return run(args, console, log)
    except KeyboardInterrupt:
        log.print("interrupted; the emulator and gateways were stopped")
        return 130
    except (ServiceError, BenchError) as exc:
        log.print(f"[red]benchmark failed:[/red] {exc}", highlight=False)
        return 1


if __name__ == "__main__":
    sys.exit(main())
