"""`python -m bench`: start the emulator and two gateways, measure, print the table."""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
import time
from pathlib import Path
from types import FrameType

from rich.console import Console

from bench.measure import (
    BenchError,
    DirectTarget,
    GatewayTarget,
    Plan,
    Progress,
    Target,
    TargetData,
    run_phases,
    warm_up,
)
from bench.processes import (
    Service,
    ServiceError,
    Services,
    peak_rss_mib,
    rss_mib,
    wait_emulator_ready,
    wait_gateway_ready,
)
from bench.report import build_report, markdown, print_report

HTTP_CLIENTS = ("aiohttp", "httpx")
# Defaults sized for about 1-2 minutes on a 2-core machine; --quick for a smoke test.
FULL = {"requests": 2000, "streams": 60, "rounds": 5}
QUICK = {"requests": 300, "streams": 12, "rounds": 3}
# The throughput phase needs more calls than the latency phase to reach a steady state.
THROUGHPUT_FACTOR = 3


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench",
        description="Gateway (aiohttp and httpx upstream clients) vs direct REST to the "
        "emulator: added latency, throughput, streaming and memory. See docs/benchmarks.md.",
    )
    parser.add_argument(
        "--requests",
        type=int,
        help=f"unary calls per target at c=1 (the c=64 phase makes "
        f"{THROUGHPUT_FACTOR}x as many); default {FULL['requests']}, {QUICK['requests']} "
        "with --quick",
    )
    parser.add_argument(
        "--streams",
        type=int,
        help=f"streaming calls per target; default {FULL['streams']}, "
        f"{QUICK['streams']} with --quick",
    )
    parser.add_argument(
        "--rounds",
        type=int,
        help=f"interleaved rounds; default {FULL['rounds']}, {QUICK['rounds']} with --quick",
    )
    parser.add_argument(
        "--concurrency", type=int, default=64, help="workers in the throughput phase (default 64)"
    )
    parser.add_argument("--quick", action="store_true", help="a short run (< 30 s) for smoke tests")
    parser.add_argument("--markdown", type=Path, metavar="PATH", help="also write the table here")
    args = parser.parse_args(argv)
    defaults = QUICK if args.quick else FULL
    for name, value in defaults.items():
        if getattr(args, name) is None:
            setattr(args, name, value)
        if getattr(args, name) < 1:
            parser.error(f"--{name} must be at least 1")
    if args.concurrency < 1:
        parser.error("--concurrency must be at least 1")
    return args


def _plan(args: argparse.Namespace) -> Plan:
    return Plan(
        rounds=args.rounds,
        latency_requests=args.requests,
        throughput_requests=args.requests * THROUGHPUT_FACTOR,
        streams=args.streams,
        concurrency=args.concurrency,
        warmup=min(200, args.requests // 5 + 20),
    )


async def _measure(
    emulator: Service, gateways: dict[str, Service], plan: Plan, progress: Progress
) -> dict[str, TargetData]:
    targets: list[Target] = [DirectTarget(emulator.url, plan.concurrency)]
    targets += [GatewayTarget(f"gw {kind}", gw.target, gw.pid) for kind, gw in gateways.items()]
    try:
        await warm_up(targets, plan, progress)
        return await run_phases(targets, plan, progress)
    finally:
        for target in targets:
            await target.aclose()


def _on_sigterm(signum: int, frame: FrameType | None) -> None:
    raise SystemExit(128 + signum)  # unwinds through the `with Services()` that stops children


def run(args: argparse.Namespace, console: Console, log: Console) -> int:
    plan = _plan(args)
    started = time.monotonic()

    def progress(message: str) -> None:
        log.print(f"[dim]{time.monotonic() - started:6.1f}s  {message}[/dim]", highlight=False)

    with Services() as services:
        progress("starting the emulator and the gateways")
        emulator = services.start_emulator()
        wait_emulator_ready(emulator)
        gateways = {kind: services.start_gateway(kind, emulator.url) for kind in HTTP_CLIENTS}
        for gateway in gateways.values():
            wait_gateway_ready(gateway)
        idle = {kind: rss_mib(gw.pid) for kind, gw in gateways.items()}

        data = asyncio.run(_measure(emulator, gateways, plan, progress))

        for kind, gateway in gateways.items():
            gateway.check_alive()
            target = data[f"gw {kind}"]
            target.rss_idle_mib = idle[kind]
            target.rss_after_mib = rss_mib(gateway.pid)
            target.rss_peak_mib = peak_rss_mib(gateway.pid)
    progress("done")

    report = build_report(data, plan)
    print_report(report, console)
    if args.markdown:
        args.markdown.parent.mkdir(parents=True, exist_ok=True)
        args.markdown.write_text(markdown(report))
        log.print(f"Markdown written to {args.markdown}")
    return 1 if any(target.errors for target in data.values()) else 0


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    # Piped output (CI logs, tee) gets a width that fits the table instead of rich's 80.
    console = Console() if sys.stdout.isatty() else Console(width=150)
    log = Console(stderr=True)
    signal.signal(signal.SIGTERM, _on_sigterm)
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
