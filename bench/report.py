"""Turns raw samples into one table (rich on the terminal, optionally Markdown) plus verdicts."""

from __future__ import annotations

import math
import os
import platform
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from importlib.metadata import version

from rich.console import Console
from rich.table import Table

from bench.measure import STREAM_CHUNKS, STREAM_DELAY_MS, Plan, TargetData
from bench.stats import mean, percentile

DIRECT = "direct"
# Targets the gateway is meant to meet, on the added (gateway - direct) numbers, in ms.
TARGET_ADDED_P50_MS = 1.0
TARGET_ADDED_P99_MS = 3.0
TARGET_ADDED_TTFC_P50_MS = 1.0


@dataclass
class Row:
    measure: str
    direct: str
    gateways: list[str]
    added: list[str]


@dataclass
class Report:
    gateways: list[str]
    rows: list[Row]
    notes: list[str]
    meta: str


# --- summaries of one target -------------------------------------------------------------


def _flat(rounds: Sequence[Sequence[float]]) -> list[float]:
    return [value for block in rounds for value in block]


def _calls(data: TargetData) -> list[list[float]]:
    return [call for block in data.streams for call in block]


def unary_ms(data: TargetData, q: float) -> float:
    return percentile(_flat(data.latency_s), q) * 1000


def health_ms(data: TargetData, q: float) -> float:
    return percentile(_flat(data.health_s), q) * 1000


def watch_ms(data: TargetData, q: float) -> float:
    return percentile(_flat(data.watch_s), q) * 1000


def unary_p50_rounds(data: TargetData) -> list[float]:
    return [percentile(block, 50) * 1000 for block in data.latency_s]


def throughput_rps(data: TargetData) -> float:
    requests = sum(n for n, _ in data.throughput)
    seconds = sum(s for _, s in data.throughput)
    return requests / seconds if seconds else math.nan


def throughput_rounds(data: TargetData) -> list[float]:
    return [n / s if s else math.nan for n, s in data.throughput]


def cpu_us_per_request(data: TargetData) -> float:
    requests = sum(n for n, _ in data.throughput)
    return sum(data.cpu_s) / requests * 1e6 if data.cpu_s and requests else math.nan


def cpu_rounds(data: TargetData) -> list[float]:
    return [
        cpu / n * 1e6 if n else math.nan
        for cpu, (n, _) in zip(data.cpu_s, data.throughput, strict=True)
    ]


def ttfc_ms(data: TargetData, q: float) -> float:
    return percentile([call[0] for call in _calls(data)], q) * 1000


def ttfc_p50_rounds(data: TargetData) -> list[float]:
    return [percentile([call[0] for call in block], 50) * 1000 for block in data.streams]


def chunk_arrival_ms(data: TargetData) -> float:
    """Mean over chunks 2..N of the median arrival time of that chunk, from call start."""
    calls = _calls(data)
    if not calls:
        return math.nan
    per_chunk = [percentile([call[k] for call in calls], 50) for k in range(1, STREAM_CHUNKS)]
    return mean(per_chunk) * 1000


def gap_ms(data: TargetData, q: float) -> float:
    gaps = [call[k] - call[k - 1] for call in _calls(data) for k in range(1, len(call))]
    return percentile(gaps, q) * 1000


# --- formatting --------------------------------------------------------------------------


def _num(value: float | None, digits: int = 2) -> str:
    return "—" if value is None or math.isnan(value) else f"{value:.{digits}f}"


def _added(value: float, digits: int = 2) -> str:
    return "—" if math.isnan(value) else f"{value:+.{digits}f}"


def _ratio(value: float) -> str:
    return "—" if math.isnan(value) else f"{value:.2f}x direct"


def _range(values: Sequence[float]) -> str:
    return f"{min(values):+.2f} … {max(values):+.2f}" if values else "—"


def _label(gateway: str) -> str:
    return gateway.removeprefix("gw ")


# --- the report --------------------------------------------------------------------------


def _difference_row(
    measure: str,
    metric: Callable[[TargetData], float],
    data: dict[str, TargetData],
    gateways: list[str],
) -> Row:
    direct = metric(data[DIRECT])
    values = [metric(data[g]) for g in gateways]
    return Row(
        measure, _num(direct), [_num(v) for v in values], [_added(v - direct) for v in values]
    )


def _gateway_row(
    measure: str,
    metric: Callable[[TargetData], float | None],
    data: dict[str, TargetData],
    gateways: list[str],
    digits: int = 1,
) -> Row:
    values = [metric(data[g]) for g in gateways]
    return Row(measure, "—", [_num(v, digits) for v in values], ["—" for _ in gateways])


def _rows(data: dict[str, TargetData], gateways: list[str], plan: Plan) -> list[Row]:
    direct_rps = throughput_rps(data[DIRECT])
    rps = [throughput_rps(data[g]) for g in gateways]
    stream = f"{STREAM_CHUNKS}x{STREAM_DELAY_MS} ms"
    return [
        _difference_row("unary p50 (ms), c=1", lambda d: unary_ms(d, 50), data, gateways),
        _difference_row("unary p99 (ms), c=1", lambda d: unary_ms(d, 99), data, gateways),
        _gateway_row(
            "gRPC hop alone: Health.Check p50 (ms)", lambda d: health_ms(d, 50), data, gateways, 2
        ),
        Row(
            f"throughput (req/s), c={plan.concurrency}",
            _num(direct_rps, 0),
            [_num(r, 0) for r in rps],
            [_ratio(r / direct_rps) for r in rps],
        ),
        _difference_row(
            f"stream TTFC p50 (ms), {stream}", lambda d: ttfc_ms(d, 50), data, gateways
        ),
        _difference_row(
            f"stream TTFC p99 (ms), {stream}", lambda d: ttfc_ms(d, 99), data, gateways
        ),
        _gateway_row(
            "gRPC stream hop alone: Health.Watch 1st message p50 (ms)",
            lambda d: watch_ms(d, 50),
            data,
            gateways,
            2,
        ),
        _difference_row(
            f"chunk 2-{STREAM_CHUNKS} arrival, mean of p50 (ms)", chunk_arrival_ms, data, gateways
        ),
        _difference_row("inter-chunk gap p50 (ms)", lambda d: gap_ms(d, 50), data, gateways),
        _difference_row("inter-chunk gap p99 (ms)", lambda d: gap_ms(d, 99), data, gateways),
        _gateway_row(
            f"gateway CPU per request (µs), c={plan.concurrency}",
            cpu_us_per_request,
            data,
            gateways,
            digits=0,
        ),
        _gateway_row("gateway RSS idle (MiB)", lambda d: d.rss_idle_mib, data, gateways),
        _gateway_row("gateway RSS after load (MiB)", lambda d: d.rss_after_mib, data, gateways),
        _gateway_row("gateway RSS peak (MiB)", lambda d: d.rss_peak_mib, data, gateways),
    ]


def _target_note(gateway: str, data: dict[str, TargetData]) -> str:
    direct, gw = data[DIRECT], data[gateway]
    checks = [
        ("added p50", unary_ms(gw, 50) - unary_ms(direct, 50), TARGET_ADDED_P50_MS),
        ("added p99", unary_ms(gw, 99) - unary_ms(direct, 99), TARGET_ADDED_P99_MS),
        ("added TTFC p50", ttfc_ms(gw, 50) - ttfc_ms(direct, 50), TARGET_ADDED_TTFC_P50_MS),
    ]
    met = [value <= limit for _, value, limit in checks]  # False for nan too
    parts = [
        f"{name} {value:+.2f} ms {'≤' if ok else '>'} {limit:g} {'met' if ok else 'MISSED'}"
        for (name, value, limit), ok in zip(checks, met, strict=True)
    ]
    verdict = "meets all targets" if all(met) else f"misses {met.count(False)} of {len(met)}"
    return f"Targets, {gateway}: {verdict} ({'; '.join(parts)})"


@dataclass(frozen=True)
class _Measure:
    """One measure the HTTP clients are compared on: pooled value and per-round values."""

    name: str
    pooled: Callable[[TargetData], float]
    per_round: Callable[[TargetData], list[float]]
    higher_is_better: bool
    unit: str  # "" for a ratio


_CLIENT_MEASURES = (
    _Measure("unary p50", lambda d: unary_ms(d, 50), unary_p50_rounds, False, "ms"),
    _Measure("throughput", throughput_rps, throughput_rounds, True, ""),
    _Measure("TTFC p50", lambda d: ttfc_ms(d, 50), ttfc_p50_rounds, False, "ms"),
    _Measure("CPU/request", cpu_us_per_request, cpu_rounds, False, "µs"),
)


def _better(measure: _Measure, x: float, y: float) -> bool:
    return x > y if measure.higher_is_better else x < y


def _client_note(data: dict[str, TargetData], gateways: list[str]) -> str | None:
    """Which upstream HTTP client did better, measure by measure, with per-round agreement."""
    if len(gateways) != 2:
        return None
    a, b = (_label(g) for g in gateways)
    da, db = (data[g] for g in gateways)
    winners, texts = [], []
    for measure in _CLIENT_MEASURES:
        va, vb = measure.pooled(da), measure.pooled(db)
        if math.isnan(va) or math.isnan(vb) or va == vb:
            texts.append(f"{measure.name}: no difference")
            continue
        a_wins = _better(measure, va, vb)
        winner, loser = (a, b) if a_wins else (b, a)
        pairs = zip(measure.per_round(da), measure.per_round(db), strict=True)
        agree = sum(_better(measure, x, y) if a_wins else _better(measure, y, x) for x, y in pairs)
        if measure.unit:
            digits = 0 if measure.unit == "µs" else 2
            detail = f"{abs(va - vb):.{digits}f} {measure.unit} lower"
        else:
            detail = f"{max(va, vb) / min(va, vb):.2f}x {loser}"
        winners.append(winner)
        rounds = len(measure.per_round(da))
        texts.append(f"{measure.name}: {winner} {detail} ({agree}/{rounds} rounds)")
    best = max((a, b), key=winners.count)
    if winners.count(best) * 2 > len(_CLIENT_MEASURES):
        verdict = f"faster HTTP client in this run: {best} "
        verdict += f"({winners.count(best)} of {len(_CLIENT_MEASURES)} measures)"
    else:
        verdict = "no clear winner between the HTTP clients in this run"
    return verdict + " — " + "; ".join(texts)


def _meta(plan: Plan) -> str:
    versions = ", ".join(f"{p} {version(p)}" for p in ("grpcio", "aiohttp", "httpx"))
    stamp = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    return (
        f"{stamp}; {platform.python_implementation()} {platform.python_version()}, {versions}; "
        f"{platform.machine()} with {_cpus()} CPUs; {plan.rounds} rounds; per target "
        f"{plan.latency_requests} unary calls at c=1, {plan.throughput_requests} at "
        f"c={plan.concurrency}, {plan.streams} streams"
    )


def _cpus() -> int:
    return len(os.sched_getaffinity(0))


def _added_rounds(data: dict[str, TargetData], gateway: str) -> list[float]:
    direct = unary_p50_rounds(data[DIRECT])
    return [gw - d for gw, d in zip(unary_p50_rounds(data[gateway]), direct, strict=True)]


def build_report(data: dict[str, TargetData], plan: Plan) -> Report:
    gateways = [name for name in data if name != DIRECT]
    notes = [_target_note(g, data) for g in gateways]
    notes.append(
        "Added unary p50 per round (ms), a noise gauge: "
        + "; ".join(f"{_label(g)} {_range(_added_rounds(data, g))}" for g in gateways)
    )
    client_note = _client_note(data, gateways)
    if client_note:
        notes.append(client_note)
    for name, target in data.items():
        if target.errors:
            notes.append(
                f"ERRORS: {name} failed {target.errors} calls; first: {target.first_error}"
            )
    return Report(gateways, _rows(data, gateways, plan), notes, _meta(plan))


def print_report(report: Report, console: Console) -> None:
    table = Table(title="Gateway vs direct REST", caption=report.meta, caption_justify="left")
    table.add_column("measure")
    table.add_column(DIRECT, justify="right")
    for gateway in report.gateways:
        table.add_column(gateway, justify="right")
    for gateway in report.gateways:
        table.add_column(f"added ({_label(gateway)})", justify="right", style="bold")
    for row in report.rows:
        table.add_row(row.measure, row.direct, *row.gateways, *row.added)
    console.print(table)
    for note in report.notes:
        console.print(f"• {note}", highlight=False)


def markdown(report: Report) -> str:
    header = [
        "measure",
        DIRECT,
        *report.gateways,
        *(f"added ({_label(g)})" for g in report.gateways),
    ]
    lines = [
        f"Run: {report.meta}.",
        "",
        "| " + " | ".join(header) + " |",
        "|" + "|".join(["---", *["---:"] * (len(header) - 1)]) + "|",
    ]
    for row in report.rows:
        lines.append("| " + " | ".join([row.measure, row.direct, *row.gateways, *row.added]) + " |")
    lines.append("")
    lines.extend(f"- {note}" for note in report.notes)
    return "\n".join(lines) + "\n"
