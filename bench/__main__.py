"""`python -m bench`: start the emulator and the gateways, measure, print the tables."""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
import time
from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path
from types import FrameType

from rich.console import Console

from bench.measure import (
    BenchError,
    DirectTarget,
    GatewayTarget,
    Order,
    Plan,
    Progress,
    Target,
    TargetData,
    rotated,
    run_phases,
    warm_up,
)
from bench.processes import (
    CURRENT,
    Checkout,
    Service,
    ServiceError,
    Services,
    baseline_checkout,
    log_rows,
    metric_samples,
    metric_sum,
    peak_rss_mib,
    rss_mib,
    usage_rows,
    wait_emulator_ready,
    wait_gateway_ready,
)
from bench.report import (
    Baseline,
    RecordingPair,
    before,
    build_report,
    markdown,
    print_report,
)
from bench.scaling import ManyStreamsData, WorkersData, many_streams_phase, workers_phase


@dataclass(frozen=True)
class GatewaySpec:
    name: str
    http_client: str
    record_usage: bool
    main_table: bool  # compared with direct in the main table (and streamed)
    logging: bool = False  # request logging on (usage recording too)
    checkout: Checkout = CURRENT  # the code it runs: the baseline's for a "before" twin


# In this order in every round's rotation, so the aiohttp gateways mostly run one after
# the other and meet the same conditions. The first is the default gateway the targets are
# judged on; "rec+log" adds request logging to it, "rec off" turns usage recording off
# (request logging is off by default).
GATEWAYS = (
    GatewaySpec("gw aiohttp", "aiohttp", record_usage=True, main_table=True),
    GatewaySpec("gw aiohttp rec+log", "aiohttp", record_usage=True, main_table=False, logging=True),
    GatewaySpec("gw aiohttp rec off", "aiohttp", record_usage=False, main_table=False),
    GatewaySpec("gw httpx", "httpx", record_usage=True, main_table=True),
)
RECORDING_AND_LOGGING = RecordingPair(
    on="gw aiohttp rec+log", off="gw aiohttp rec off", feature="rec+log",
    title="Usage recording and request logging", middle="gw aiohttp",
    middle_label="recording only (default)",
)  # fmt: skip
# --recording: the default gateway against the same with recording off.
RECORDING_GATEWAYS = (GATEWAYS[0], GATEWAYS[2])
RECORDING = RecordingPair(on="gw aiohttp", off="gw aiohttp rec off")
# --logging: the default gateway (usage recording, logging off) against the same with every
# call logged.
LOGGING_GATEWAYS = (
    GatewaySpec("gw aiohttp", "aiohttp", record_usage=True, main_table=False),
    GatewaySpec("gw aiohttp logging", "aiohttp", record_usage=True, main_table=False, logging=True),
)
LOGGING = RecordingPair(
    on="gw aiohttp logging", off="gw aiohttp", feature="logging", title="Request logging",
    off_records_usage=True,
)  # fmt: skip
WRITTEN_EVENTS = "gateway_recorder_written_events_total"
DROPPED_EVENTS = "gateway_recorder_dropped_events_total"
# Defaults sized for about 4-5 minutes on a 2-core machine; --quick for a smoke test. Many
# short rounds rather than a few long ones: bursts from other tenants then split more evenly
# between the targets, which the 95% recording target needs.
FULL = {"requests": 2000, "streams": 60, "rounds": 10}
QUICK = {"requests": 200, "streams": 9, "rounds": 3}
# --recording runs three targets and no streams: more calls and rounds in 1-1.5 minutes.
RECORDING_ONLY = {"requests": 3000, "streams": 60, "rounds": 16}
# The workers phase (calls per block, rounds) and the streams opened at once.
SCALING_FULL = {"workers_requests": 4000, "workers_rounds": 6, "many_streams": 2000}
SCALING_QUICK = {"workers_requests": 1000, "workers_rounds": 2, "many_streams": 200}
# The throughput phase needs more calls than the latency phase to reach a steady state.
THROUGHPUT_FACTOR = 4


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench",
        description="Gateway (aiohttp and httpx upstream clients) vs direct REST to the "
        "emulator: added latency, throughput, streaming and memory; the gateway with usage "
        "recording and request logging on vs off; many streams opened at once; one worker vs "
        "two. Each target of issue 11 is printed met or MISSED. See docs/benchmarks.md.",
    )
    parser.add_argument(
        "--requests",
        type=int,
        help=f"unary calls per target at c=1 (the c=64 phase makes "
        f"{THROUGHPUT_FACTOR}x as many); default {FULL['requests']}, {QUICK['requests']} "
        f"with --quick, {RECORDING_ONLY['requests']} with --recording or --logging",
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
        help=f"interleaved rounds; default {FULL['rounds']}, {QUICK['rounds']} with --quick, "
        f"{RECORDING_ONLY['rounds']} with --recording or --logging",
    )
    parser.add_argument(
        "--concurrency", type=int, default=64, help="workers in the throughput phase (default 64)"
    )
    parser.add_argument(
        "--quick", action="store_true", help="a short run (about a minute) for smoke tests"
    )
    parser.add_argument(
        "--recording",
        action="store_true",
        help="only the recording on vs off comparison (direct and the two aiohttp gateways; "
        "no httpx, no streams)",
    )
    parser.add_argument(
        "--logging",
        action="store_true",
        help="only the request logging on vs off comparison (direct, the default aiohttp "
        "gateway, and the same with every call logged; no streams)",
    )
    parser.add_argument(
        "--no-workers",
        action="store_true",
        help="skip the workers phase (throughput and CPU with 1 and 2 gateway workers, and "
        "1 worker with recording and logging on and off)",
    )
    parser.add_argument(
        "--workers-requests",
        type=int,
        help=f"unary calls per block of the workers phase; default "
        f"{SCALING_FULL['workers_requests']}, {SCALING_QUICK['workers_requests']} with --quick",
    )
    parser.add_argument(
        "--workers-rounds",
        type=int,
        help=f"rounds of the workers phase; default {SCALING_FULL['workers_rounds']}, "
        f"{SCALING_QUICK['workers_rounds']} with --quick",
    )
    parser.add_argument(
        "--many-streams",
        type=int,
        metavar="N",
        help=f"streams opened at once through one worker, 0 to skip; default "
        f"{SCALING_FULL['many_streams']}, {SCALING_QUICK['many_streams']} with --quick",
    )
    parser.add_argument("--markdown", type=Path, metavar="PATH", help="also write the tables here")
    parser.add_argument(
        "--baseline",
        type=Path,
        metavar="DIR",
        help="another checkout of the project with its own virtualenv (DIR/.venv): each "
        "gateway is measured next to a twin started from DIR, in the same rounds, and every "
        "target is shown before and after (the httpx gateway is left out)",
    )
    args = parser.parse_args(argv)
    if args.recording and args.logging:
        parser.error("--recording and --logging are separate runs: choose one")
    defaults = QUICK if args.quick else RECORDING_ONLY if args.recording or args.logging else FULL
    defaults = {**defaults, **(SCALING_QUICK if args.quick else SCALING_FULL)}
    for name, value in defaults.items():
        if getattr(args, name) is None:
            setattr(args, name, value)
        if getattr(args, name) < (0 if name == "many_streams" else 1):
            option = name.replace("_", "-")
            parser.error(f"--{option} must be at least {0 if name == 'many_streams' else 1}")
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


def _recorded(gateway: Service, events_per_call: int) -> float:
    """Calls whose events the gateway's recorder has disposed of: written or dropped."""
    samples = metric_samples(gateway)
    events = metric_sum(samples, WRITTEN_EVENTS) + metric_sum(samples, DROPPED_EVENTS)
    return events / events_per_call


async def _measure(
    emulator: Service,
    gateways: dict[GatewaySpec, Service],
    plan: Plan,
    progress: Progress,
    streams: bool,
    order: Order,
) -> dict[str, TargetData]:
    targets: list[Target] = [DirectTarget(emulator.url, plan.concurrency, streams=streams)]
    targets += [
        GatewayTarget(
            spec.name,
            gw.target,
            gw.pid,
            streams=streams and spec.main_table,
            # A logged call is two events: its usage and its log.
            recorded=partial(_recorded, gw, 2 if spec.logging else 1)
            if spec.record_usage
            else None,
        )
        for spec, gw in gateways.items()
    ]
    try:
        await warm_up(targets, plan, progress)
        data = await run_phases(targets, plan, progress, order)
        for target in targets:
            data[target.name].calls = target.calls
        return data
    finally:
        for target in targets:
            await target.aclose()


def twins_order(targets: list[Target], round_: int) -> list[Target]:
    """A gateway and its baseline twin take their turns side by side, the pairs (and direct)
    rotating like single targets do, and within a pair the order alternates from round to
    round: neither twin always runs first."""
    groups: list[list[Target]] = []
    for target in targets:
        if groups and target.name == before(groups[-1][0].name):
            groups[-1].append(target)
        else:
            groups.append([target])
    return [
        target
        for group in rotated(groups, round_)
        for target in (group if round_ % 2 == 0 else group[::-1])
    ]


def _check_stores(
    services: Services, gateways: dict[GatewaySpec, Service], data: dict[str, TargetData]
) -> None:
    """Read the recorder counters, stop each gateway (it flushes on SIGTERM), count rows."""
    for spec, gateway in gateways.items():
        samples = metric_samples(gateway)
        target = data[spec.name]
        target.written_events = metric_sum(samples, WRITTEN_EVENTS)
        target.dropped_events = metric_sum(samples, DROPPED_EVENTS)
    for spec, gateway in gateways.items():
        code = services.stop(gateway)
        if code != 0:
            raise ServiceError(
                f"{gateway.name} exited with code {code} on SIGTERM; last output:\n"
                f"{gateway.log_tail()}"
            )
        assert gateway.store_path is not None
        target = data[spec.name]
        target.store_rows, target.labelled_rows = usage_rows(gateway.store_path)
        if spec.logging:
            target.log_rows = log_rows(gateway.store_path)


def _on_sigterm(signum: int, frame: FrameType | None) -> None:
    raise SystemExit(128 + signum)  # unwinds through the `with Services()` that stops children


def _with_twins(specs: list[GatewaySpec], baseline: Checkout) -> list[GatewaySpec]:
    """Each gateway followed by its twin from the baseline checkout, so that the two run one
    after the other in most rounds; the httpx gateway is left out to keep the run short."""
    return [
        twin
        for spec in specs
        if spec.http_client != "httpx"
        for twin in (spec, replace(spec, name=before(spec.name), checkout=baseline))
    ]


def run(args: argparse.Namespace, console: Console, log: Console) -> int:
    plan = _plan(args)
    started = time.monotonic()
    only_comparison = args.recording or args.logging
    if args.logging:
        specs, comparison = list(LOGGING_GATEWAYS), LOGGING
    elif args.recording:
        specs, comparison = list(RECORDING_GATEWAYS), RECORDING
    else:
        specs, comparison = list(GATEWAYS), RECORDING_AND_LOGGING
    baseline = baseline_checkout(args.baseline) if args.baseline else None
    left_out: tuple[str, ...] = ()
    if baseline is not None:
        left_out = tuple(spec.name for spec in specs if spec.http_client == "httpx")
        specs = _with_twins(specs, baseline)
    workers: WorkersData | None = None
    many: ManyStreamsData | None = None
    old_workers: WorkersData | None = None
    old_many: ManyStreamsData | None = None

    def progress(message: str) -> None:
        log.print(f"[dim]{time.monotonic() - started:6.1f}s  {message}[/dim]", highlight=False)

    with Services() as services:
        progress("starting the emulator and the gateways")
        emulator = services.start_emulator()
        wait_emulator_ready(emulator)
        gateways = {
            spec: services.start_gateway(
                spec.name.replace(" ", "-"),
                spec.http_client,
                emulator.url,
                record_usage=spec.record_usage,
                logging=spec.logging,
                checkout=spec.checkout,
            )
            for spec in specs
        }
        for gateway in gateways.values():
            wait_gateway_ready(gateway)
        idle = {spec: rss_mib(gw.pid) for spec, gw in gateways.items()}

        order = twins_order if baseline else rotated
        data = asyncio.run(_measure(emulator, gateways, plan, progress, not only_comparison, order))

        for spec, gateway in gateways.items():
            gateway.check_alive()
            target = data[spec.name]
            target.rss_idle_mib = idle[spec]
            target.rss_after_mib = rss_mib(gateway.pid)
            target.rss_peak_mib = peak_rss_mib(gateway.pid)
        progress("stopping the gateways and counting the rows in their stores")
        _check_stores(services, gateways, data)
        if not only_comparison and args.many_streams:
            many = many_streams_phase(services, emulator, args.many_streams, progress)
            if baseline is not None:
                old_many = many_streams_phase(
                    services,
                    emulator,
                    args.many_streams,
                    progress,
                    checkout=baseline,
                    name="gw-many-streams-before",
                )
        if not only_comparison and not args.no_workers:
            workers, old_workers = workers_phase(
                services,
                emulator,
                rounds=args.workers_rounds,
                requests=args.workers_requests,
                concurrency=args.concurrency,
                progress=progress,
                baseline=baseline,
            )
    progress("done")

    main_table = [
        spec.name
        for spec in specs
        if spec.main_table and not only_comparison and spec.checkout is CURRENT
    ]
    comparison_of_runs = None
    if baseline is not None:
        comparison_of_runs = Baseline(
            before=baseline.describe(),
            after=CURRENT.describe(),
            workers=old_workers,
            many=old_many,
            left_out=left_out,
        )
    report = build_report(
        data, plan, main_table, comparison, workers, many, baseline=comparison_of_runs
    )
    print_report(report, console)
    if args.markdown:
        args.markdown.parent.mkdir(parents=True, exist_ok=True)
        args.markdown.write_text(markdown(report))
        log.print(f"Markdown written to {args.markdown}")
    return 1 if report.failed else 0


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
