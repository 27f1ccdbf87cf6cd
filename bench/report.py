"""Turns raw samples into tables (rich on the terminal, optionally Markdown) plus verdicts."""

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
# Throughput with usage recording on, as a share of the same gateway with it off.
TARGET_RECORDING_RATIO = 0.95
# Throughput with request logging on (and usage recording), as a share of recording alone.
TARGET_LOGGING_RATIO = 0.90


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
    requests = sum(data.block_calls)
    return sum(data.cpu_s) / requests * 1e6 if data.cpu_s and requests else math.nan


def cpu_rounds(data: TargetData) -> list[float]:
    return [
        cpu / n * 1e6 if n else math.nan
        for cpu, n in zip(data.cpu_s, data.block_calls, strict=True)
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


def _range(values: Sequence[float], fmt: str = "{:+.2f}") -> str:
    return f"{fmt.format(min(values))} … {fmt.format(max(values))}" if values else "—"


def _label(gateway: str) -> str:
    return gateway.removeprefix("gw ")


# --- the report --------------------------------------------------------------------------


@dataclass
class TableData:
    title: str
    header: list[str]
    rows: list[list[str]]


@dataclass
class Report:
    tables: list[TableData]
    targets: list[str]  # one line per target: met or MISSED
    notes: list[str]
    meta: str
    failed: bool  # a call failed or the store check found a mismatch


@dataclass(frozen=True)
class RecordingPair:
    """The same gateway with a recording feature on and off: usage recording (default
    settings) by default, or request logging (`feature`, `target` say which)."""

    on: str
    off: str
    feature: str = "recording"
    title: str = "Usage recording"
    target: float = TARGET_RECORDING_RATIO
    off_records_usage: bool = False  # the "off" gateway still records usage (logging pair)


def _difference_row(
    measure: str,
    metric: Callable[[TargetData], float],
    data: dict[str, TargetData],
    gateways: list[str],
) -> list[str]:
    direct = metric(data[DIRECT])
    values = [metric(data[g]) for g in gateways]
    return [measure, _num(direct), *map(_num, values), *(_added(v - direct) for v in values)]


def _gateway_row(
    measure: str,
    metric: Callable[[TargetData], float | None],
    data: dict[str, TargetData],
    gateways: list[str],
    digits: int = 1,
) -> list[str]:
    values = [metric(data[g]) for g in gateways]
    return [measure, "—", *(_num(v, digits) for v in values), *("—" for _ in gateways)]


def _main_table(data: dict[str, TargetData], gateways: list[str], plan: Plan) -> TableData:
    direct_rps = throughput_rps(data[DIRECT])
    rps = [throughput_rps(data[g]) for g in gateways]
    stream = f"{STREAM_CHUNKS}x{STREAM_DELAY_MS} ms"
    rows = [
        _difference_row("unary p50 (ms), c=1", lambda d: unary_ms(d, 50), data, gateways),
        _difference_row("unary p99 (ms), c=1", lambda d: unary_ms(d, 99), data, gateways),
        _gateway_row(
            "gRPC hop alone: Health.Check p50 (ms)", lambda d: health_ms(d, 50), data, gateways, 2
        ),
        [
            f"throughput (req/s), c={plan.concurrency}",
            _num(direct_rps, 0),
            *(_num(r, 0) for r in rps),
            *(_ratio(r / direct_rps) for r in rps),
        ],
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
    header = [
        "measure",
        DIRECT,
        *gateways,
        *(f"added ({_label(g)})" for g in gateways),
    ]
    title = "Gateway vs direct REST (usage recording on, default settings)"
    return TableData(title, header, rows)


def _target_line(gateway: str, data: dict[str, TargetData]) -> str:
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
    return f"{gateway}: {verdict} ({'; '.join(parts)})"


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


def _added_rounds(data: dict[str, TargetData], gateway: str) -> list[float]:
    direct = unary_p50_rounds(data[DIRECT])
    return [gw - d for gw, d in zip(unary_p50_rounds(data[gateway]), direct, strict=True)]


# --- recording on vs off -----------------------------------------------------------------


def recording_ratio(data: dict[str, TargetData], pair: RecordingPair) -> float:
    """Throughput with recording on / off, pooled over all rounds."""
    return throughput_rps(data[pair.on]) / throughput_rps(data[pair.off])


def _events_cell(data: TargetData) -> str:
    return f"{data.store_rows} / {data.calls}" if data.store_rows is not None else "—"


def _recording_table(data: dict[str, TargetData], pair: RecordingPair, plan: Plan) -> TableData:
    on, off = data[pair.on], data[pair.off]
    direct = data[DIRECT]

    def added_ms(d: TargetData, q: float) -> float:
        return unary_ms(d, q) - unary_ms(direct, q)

    cpu_on, cpu_off = cpu_us_per_request(on), cpu_us_per_request(off)
    added = {q: (added_ms(on, q), added_ms(off, q)) for q in (50, 99)}
    rss_on, rss_off = (d.rss_peak_mib or math.nan for d in (on, off))
    dropped = "—" if on.dropped_events is None else f"{on.dropped_events:.0f}"
    rows = [
        [
            f"throughput (req/s), c={plan.concurrency}",
            _num(throughput_rps(on), 0),
            _num(throughput_rps(off), 0),
            f"{recording_ratio(data, pair):.1%}",
        ],
        [
            f"gateway CPU per request (µs), c={plan.concurrency}",
            _num(cpu_on, 0),
            _num(cpu_off, 0),
            _added(cpu_on - cpu_off, 0),
        ],
        *(
            [f"added unary p{q} (ms), c=1", _added(a), _added(b), _added(a - b)]
            for q, (a, b) in added.items()
        ),
        ["gateway RSS peak (MiB)", _num(rss_on, 1), _num(rss_off, 1), _added(rss_on - rss_off, 1)],
        ["events recorded / calls made", _events_cell(on), _events_cell(off), "—"],
        ["recorder dropped events", dropped, "—", "—"],
    ]
    if on.log_rows is not None:
        rows.append(["request logs stored / calls made", f"{on.log_rows} / {on.calls}", "—", "—"])
    header = ["measure", f"{pair.feature} on", f"{pair.feature} off", "on vs off"]
    return TableData(f"{pair.title} on vs off ({_label(pair.on)})", header, rows)


def _store_ok(data: TargetData, recording: bool) -> bool:
    expected = data.calls if recording else 0
    return (
        data.log_rows in (None, data.calls)
        and data.store_rows == expected
        and data.labelled_rows == expected
        and not data.dropped_events
        and not data.undrained
    )


def _store_note(name: str, data: TargetData, recording: bool) -> str:
    verdict = "OK" if _store_ok(data, recording) else "MISMATCH"
    what = "recording on" if recording else "recording off, expected none"
    dropped = "—" if data.dropped_events is None else f"{data.dropped_events:.0f}"
    written = "—" if data.written_events is None else f"{data.written_events:.0f}"
    late = f"; the recorder fell behind after {data.undrained} blocks" if data.undrained else ""
    logs = "" if data.log_rows is None else f", {data.log_rows} rows in request_logs"
    return (
        f"store check, {name} ({what}): {data.store_rows} rows in usage_events for "
        f"{data.calls} generate calls, {data.labelled_rows} with the bench's labels{logs}; "
        f"recorder written {written}, dropped {dropped}{late}: {verdict}"
    )


def _recording_notes(data: dict[str, TargetData], pair: RecordingPair) -> list[str]:
    on, off = data[pair.on], data[pair.off]
    ratios = [a / b for a, b in zip(throughput_rounds(on), throughput_rounds(off), strict=True)]
    above = sum(r >= pair.target for r in ratios)
    cpu = [a - b for a, b in zip(cpu_rounds(on), cpu_rounds(off), strict=True)]
    return [
        f"{pair.title} on/off throughput per round, a noise gauge: "
        f"{_range(ratios, '{:.1%}')}, median {percentile(ratios, 50):.1%} "
        f"(≥ {pair.target:.0%} in {above}/{len(ratios)} rounds); "
        f"CPU per request on - off per round: {_range(cpu, '{:+.0f}')} µs, "
        f"median {percentile(cpu, 50):+.0f} µs"
    ]


def _recording_target(data: dict[str, TargetData], pair: RecordingPair) -> str:
    ratio = recording_ratio(data, pair)
    verdict = "met" if ratio >= pair.target else "MISSED"
    return f"{pair.feature} on vs off throughput >= {pair.target:.0%}: {verdict} ({ratio:.1%})"


def _meta(plan: Plan, streams: bool) -> str:
    versions = ", ".join(f"{p} {version(p)}" for p in ("grpcio", "aiohttp", "httpx"))
    stamp = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    calls = (
        f"{plan.latency_requests} unary calls at c=1, {plan.throughput_requests} at "
        f"c={plan.concurrency}"
    )
    if streams:
        calls += f", {plan.streams} streams"
    return (
        f"{stamp}; {platform.python_implementation()} {platform.python_version()}, {versions}; "
        f"{platform.machine()} with {_cpus()} CPUs; {plan.rounds} rounds; per target {calls}"
    )


def _cpus() -> int:
    return len(os.sched_getaffinity(0))


def build_report(
    data: dict[str, TargetData],
    plan: Plan,
    gateways: list[str],
    recording: RecordingPair | None = None,
) -> Report:
    """`gateways` are compared with direct in the main table (none: no main table);
    `recording` adds the on/off table, its target and the store checks."""
    tables, targets, notes = [], [], []
    if gateways:
        tables.append(_main_table(data, gateways, plan))
        targets += [_target_line(g, data) for g in gateways]
        notes.append(
            "Added unary p50 per round (ms), a noise gauge: "
            + "; ".join(f"{_label(g)} {_range(_added_rounds(data, g))}" for g in gateways)
        )
        client_note = _client_note(data, gateways)
        if client_note:
            notes.append(client_note)
    failed = False
    if recording is not None:
        tables.append(_recording_table(data, recording, plan))
        targets.append(_recording_target(data, recording))
        notes += _recording_notes(data, recording)
    for name, target in data.items():
        if target.store_rows is None:
            continue
        recorded = recording is None or name != recording.off or recording.off_records_usage
        notes.append(_store_note(name, target, recorded))
        failed |= not _store_ok(target, recorded)
    for name, target in data.items():
        if target.errors:
            failed = True
            notes.append(
                f"ERRORS: {name} failed {target.errors} calls; first: {target.first_error}"
            )
    return Report(tables, targets, notes, _meta(plan, bool(gateways)), failed)


def print_report(report: Report, console: Console) -> None:
    for table_data in report.tables:
        table = Table(title=table_data.title)
        for i, name in enumerate(table_data.header):
            table.add_column(name, justify="left" if i == 0 else "right")
        for row in table_data.rows:
            table.add_row(*row)
        console.print(table)
    console.print(f"[dim]{report.meta}[/dim]", highlight=False)
    console.print("[bold]Targets[/bold]")
    for line in report.targets:
        console.print(f"• {line}", highlight=False)
    console.print("[bold]Notes[/bold]")
    for note in report.notes:
        console.print(f"• {note}", highlight=False)


def markdown(report: Report) -> str:
    lines = [f"Run: {report.meta}.", ""]
    for table in report.tables:
        lines += [
            f"**{table.title}**",
            "",
            "| " + " | ".join(table.header) + " |",
            "|" + "|".join(["---", *["---:"] * (len(table.header) - 1)]) + "|",
        ]
        lines += ["| " + " | ".join(row) + " |" for row in table.rows]
        lines.append("")
    lines += ["Targets:", ""]
    lines += [f"- {line}" for line in report.targets]
    lines += ["", "Notes:", ""]
    lines += [f"- {note}" for note in report.notes]
    return "\n".join(lines) + "\n"
