"""Turns raw samples into tables (rich on the terminal, optionally Markdown) plus verdicts."""

from __future__ import annotations

import math
import os
import platform
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from importlib.metadata import version
from typing import TypeGuard

from rich.console import Console
from rich.table import Table

from bench.many_streams import TARGET_PEAK_RSS_MIB
from bench.measure import STREAM_CHUNKS, STREAM_DELAY_MS, Plan, TargetData
from bench.scaling import (
    MANY_CHUNK_DELAY_MS,
    MANY_CHUNKS,
    REC_LOG_OFF,
    REC_LOG_ON,
    WORKER_COUNTS,
    ManyStreamsData,
    WorkersBlock,
    WorkersData,
)
from bench.stats import mean, percentile

DIRECT = "direct"
# The targets of issue 11, each printed met or MISSED. Added = gateway - direct, in ms.
TARGET_CPU_PER_CALL_US = 350.0  # gateway CPU per forwarded unary call
TARGET_ADDED_P50_MS = 0.6  # unary, c=1
TARGET_ADDED_P99_MS = 1.5
TARGET_ADDED_TTFC_P50_MS = 1.0
TARGET_MANY_STREAMS = 2000  # opened at once through one worker: no errors, peak RSS below
TARGET_WORKERS_RATIO = 1.6  # throughput of two workers / one
# Throughput with usage recording and request logging on, as a share of both off; the
# --recording and --logging runs hold each feature alone to the same share.
TARGET_RECORDING_RATIO = 0.95


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


# --- before and after (--baseline) ----------------------------------------------------------

BEFORE = " before"


def before(name: str) -> str:
    """The name of `name`'s twin, the same gateway started from the baseline checkout."""
    return name + BEFORE


@dataclass(frozen=True)
class Baseline:
    """A run with a baseline checkout: its gateways are in the main phases' data as
    `before(name)`; its workers and many-streams phases are here."""

    before: str  # the baseline checkout, described (folder and commit)
    after: str  # this checkout, described
    workers: WorkersData | None = None
    many: ManyStreamsData | None = None
    left_out: tuple[str, ...] = ()  # gateways a run without a baseline has and this one not


@dataclass(frozen=True)
class Figure:
    """One figure measured before and after: a row of the before/after table, and the
    "(before ..., change)" beside a target's figure."""

    name: str
    before: float
    after: float
    unit: str  # "ms", "µs", "MiB", "req/s", "x", "%" (a ratio shown in percent), "" (a count)
    relative: bool  # change as after / before - 1; otherwise after - before
    signed: bool = False  # an added latency: shown with its sign
    goal: str = "—"
    met: bool | None = None  # the after figure's verdict; None when it is not judged

    def value(self, value: float) -> str:
        if math.isnan(value):
            return "—"
        if self.unit == "%":
            return f"{value:.1%}"
        if self.unit == "x":
            return f"{value:.2f}x"
        digits = 2 if self.unit == "ms" else 1 if self.unit == "MiB" else 0
        text = f"{value:+.{digits}f}" if self.signed else f"{value:.{digits}f}"
        return f"{text} {self.unit}" if self.unit else text

    @property
    def change(self) -> str:
        if math.isnan(self.before) or math.isnan(self.after):
            return "—"
        if self.relative:
            return f"{self.after / self.before - 1:+.0%}" if self.before else "—"
        difference = self.after - self.before
        if self.unit == "%":
            return f"{difference * 100:+.1f} points"
        if self.unit == "x":
            return f"{difference:+.2f}x"
        digits = 2 if self.unit == "ms" else 1 if self.unit == "MiB" else 0
        return f"{difference:+.{digits}f}" + (f" {self.unit}" if self.unit else "")

    @property
    def was(self) -> str:
        """What goes after the current figure in a target line."""
        return f"before {self.value(self.before)}, {self.change}"


def _before_after_table(figures: list[Figure], baseline: Baseline) -> TableData:
    rows = [
        [
            f.name,
            f.goal,
            f.value(f.before),
            f.value(f.after),
            f.change,
            "—" if f.met is None else _verdict(f.met),
        ]
        for f in figures
    ]
    return TableData(
        f"Before ({baseline.before}) and after ({baseline.after})",
        ["measure", "target", "before", "after", "change", "after: target"],
        rows,
    )


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
    """The same gateway with recording features on and off (`feature` says which), and
    optionally a gateway in between (`middle`, e.g. default settings) shown beside them."""

    on: str
    off: str
    feature: str = "recording"
    title: str = "Usage recording"
    target: float = TARGET_RECORDING_RATIO
    off_records_usage: bool = False  # the "off" gateway still records usage (logging pair)
    middle: str | None = None
    middle_label: str = ""


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


def _verdict(ok: bool) -> str:
    return "met" if ok else "MISSED"


def _added_target_lines(
    data: dict[str, TargetData], gateways: list[str], figures: list[Figure]
) -> list[str]:
    """Added unary p50/p99 and TTFC p50, judged on the first (default) gateway; the others
    are shown beside it, and its twin's figures when the run has a baseline (also appended
    to `figures`)."""
    direct = data[DIRECT]

    def added(metric: Callable[[TargetData], float], gateway: str) -> float:
        return metric(data[gateway]) - metric(direct)

    def p50(d: TargetData) -> float:
        return unary_ms(d, 50)

    def p99(d: TargetData) -> float:
        return unary_ms(d, 99)

    def ttfc(d: TargetData) -> float:
        return ttfc_ms(d, 50)

    def others(text: Callable[[str], str]) -> str:
        rest = [f"{_label(g)} {text(g)}" for g in gateways[1:]]
        return f"; {', '.join(rest)}" if rest else ""

    first = gateways[0]
    a50, a99, attfc = added(p50, first), added(p99, first), added(ttfc, first)
    unary_ok = a50 <= TARGET_ADDED_P50_MS and a99 <= TARGET_ADDED_P99_MS  # False for nan
    ttfc_ok = attfc <= TARGET_ADDED_TTFC_P50_MS
    was_unary = was_ttfc = ""
    if before(first) in data:
        twin = before(first)
        f50, f99, fttfc = (
            Figure(
                name, added(metric, twin), value, "ms", False, True, f"≤ {goal:g}", value <= goal
            )
            for name, metric, value, goal in (
                ("added unary p50 (ms), c=1", p50, a50, TARGET_ADDED_P50_MS),
                ("added unary p99 (ms), c=1", p99, a99, TARGET_ADDED_P99_MS),
                ("added stream TTFC p50 (ms)", ttfc, attfc, TARGET_ADDED_TTFC_P50_MS),
            )
        )
        figures += [f50, f99, fttfc]
        was_unary = (
            f"; before {f50.before:+.2f} / {f99.before:+.2f} ms, "
            f"{f50.after - f50.before:+.2f} / {f99.after - f99.before:+.2f} ms"
        )
        was_ttfc = f"; {fttfc.was}"
    return [
        f"added unary p50 ≤ {TARGET_ADDED_P50_MS:g} ms and p99 ≤ {TARGET_ADDED_P99_MS:g} ms, "
        f"c=1: {_verdict(unary_ok)} ({_label(first)} {a50:+.2f} / {a99:+.2f} ms"
        + others(lambda g: f"{added(p50, g):+.2f} / {added(p99, g):+.2f} ms")
        + was_unary
        + ")",
        f"added stream TTFC p50 ≤ {TARGET_ADDED_TTFC_P50_MS:g} ms: {_verdict(ttfc_ok)} "
        f"({_label(first)} {attfc:+.2f} ms"
        + others(lambda g: f"{added(ttfc, g):+.2f} ms")
        + was_ttfc
        + ")",
    ]


def _cpu_target_line(
    data: dict[str, TargetData],
    gateways: list[str],
    workers: WorkersData | None,
    baseline: Baseline | None,
    figures: list[Figure],
) -> str | None:
    """Judged on the workers phase's single worker, where the gateway is what saturates the
    machine; on the main table's default gateway when that phase did not run. With a
    baseline, each figure has the baseline's beside it (and goes to `figures`)."""
    goal = f"≤ {TARGET_CPU_PER_CALL_US:g}"
    texts = []
    judged: float | None = None

    def compared(name: str, after: float, was: float | None, is_judged: bool) -> str:
        if was is None:
            return ""
        met = after <= TARGET_CPU_PER_CALL_US if is_judged else None
        figure = Figure(name, was, after, "µs", True, goal=goal if is_judged else "—", met=met)
        figures.append(figure)
        return f" ({figure.was})"

    if workers is not None and workers.blocks.get(1):
        judged = _per_call_us(workers.blocks[1], lambda b: b.gateway_cpu_s)
        old = baseline.workers if baseline else None
        was = _per_call_us(old.blocks[1], lambda b: b.gateway_cpu_s) if old else None
        where = f"1 worker, c={workers.concurrency}, load from {workers.load_generator}"
        name = f"gateway CPU per unary call (µs), {where}"
        texts.append(f"{judged:.0f} µs: {where}" + compared(name, judged, was, True))
    if gateways:
        main = cpu_us_per_request(data[gateways[0]])
        twin = data.get(before(gateways[0]))
        was = cpu_us_per_request(twin) if twin else None
        where = f"{_label(gateways[0])} in the main table"
        name = f"gateway CPU per unary call (µs), {where}"
        texts.append(f"{main:.0f} µs: {where}" + compared(name, main, was, judged is None))
        judged = main if judged is None else judged
    if judged is None:
        return None
    return (
        f"gateway CPU per forwarded unary call ≤ {TARGET_CPU_PER_CALL_US:g} µs: "
        f"{_verdict(judged <= TARGET_CPU_PER_CALL_US)} ({'; '.join(texts)})"
    )


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
    columns = [pair.on, *([pair.middle] if pair.middle else []), pair.off]
    shown = [data[name] for name in columns]

    def added_ms(d: TargetData, q: float) -> float:
        return unary_ms(d, q) - unary_ms(direct, q)

    def rss(d: TargetData) -> float:
        return d.rss_peak_mib or math.nan

    def dropped(d: TargetData) -> str:
        return "—" if d.dropped_events is None else f"{d.dropped_events:.0f}"

    def logs(d: TargetData) -> str:
        return "—" if d.log_rows is None else f"{d.log_rows} / {d.calls}"

    rows = [
        [
            f"throughput (req/s), c={plan.concurrency}",
            *(_num(throughput_rps(d), 0) for d in shown),
            f"{recording_ratio(data, pair):.1%}",
        ],
        [
            f"gateway CPU per request (µs), c={plan.concurrency}",
            *(_num(cpu_us_per_request(d), 0) for d in shown),
            _added(cpu_us_per_request(on) - cpu_us_per_request(off), 0),
        ],
        *(
            [
                f"added unary p{q} (ms), c=1",
                *(_added(added_ms(d, q)) for d in shown),
                _added(added_ms(on, q) - added_ms(off, q)),
            ]
            for q in (50, 99)
        ),
        [
            "gateway RSS peak (MiB)",
            *(_num(rss(d), 1) for d in shown),
            _added(rss(on) - rss(off), 1),
        ],
        ["events recorded / calls made", *(_events_cell(d) for d in shown), "—"],
        ["recorder dropped events", *(dropped(d) for d in shown), "—"],
    ]
    if any(d.log_rows is not None for d in shown):
        rows.append(["request logs stored / calls made", *(logs(d) for d in shown), "—"])
    middle = [pair.middle_label] if pair.middle else []
    header = ["measure", f"{pair.feature} on", *middle, f"{pair.feature} off", "on vs off"]
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
    which = " (before)" if pair.on.endswith(BEFORE) else ""
    return [
        f"{pair.title} on/off throughput per round{which}, a noise gauge: "
        f"{_range(ratios, '{:.1%}')}, median {percentile(ratios, 50):.1%} "
        f"(≥ {pair.target:.0%} in {above}/{len(ratios)} rounds); "
        f"CPU per request on - off per round: {_range(cpu, '{:+.0f}')} µs, "
        f"median {percentile(cpu, 50):+.0f} µs"
    ]


def _twin_pair(pair: RecordingPair) -> RecordingPair:
    """The same comparison between the baseline's gateways."""
    middle = before(pair.middle) if pair.middle else None
    return replace(pair, on=before(pair.on), off=before(pair.off), middle=middle)


def _middle_share(data: dict[str, TargetData], pair: RecordingPair) -> float:
    assert pair.middle is not None
    return throughput_rps(data[pair.middle]) / throughput_rps(data[pair.off])


def _recording_target(
    data: dict[str, TargetData], pair: RecordingPair, figures: list[Figure]
) -> str:
    """Judged on this checkout's pair; with a baseline, its pair's figures beside them
    (and in `figures`)."""
    ratio = recording_ratio(data, pair)
    twin = _twin_pair(pair)
    has_twin = twin.on in data and twin.off in data
    middle = was = ""
    if pair.middle:
        middle = f"; {pair.middle_label}: {_middle_share(data, pair):.1%}"
    if has_twin:
        goal = f"≥ {pair.target:.0%}"
        judged = Figure(
            f"throughput, {pair.feature} on / off",
            recording_ratio(data, twin),
            ratio,
            "%",
            False,
            goal=goal,
            met=ratio >= pair.target,
        )
        figures.append(judged)
        was = f"; {judged.was}"
        if pair.middle:
            share = Figure(
                f"throughput, {pair.middle_label} / {pair.feature} off",
                _middle_share(data, twin),
                _middle_share(data, pair),
                "%",
                False,
            )
            figures.append(share)
            was += f"; {pair.middle_label} {share.was}"
        on, off = data[pair.on], data[pair.off]
        figures.append(
            Figure(
                f"gateway CPU per call (µs), {pair.feature} on - off",
                cpu_us_per_request(data[twin.on]) - cpu_us_per_request(data[twin.off]),
                cpu_us_per_request(on) - cpu_us_per_request(off),
                "µs",
                False,
                signed=True,
            )
        )
    return (
        f"{pair.feature} on: throughput ≥ {pair.target:.0%} of off: "
        f"{_verdict(ratio >= pair.target)} ({ratio:.1%}{middle}{was})"
    )


# --- workers and many streams -----------------------------------------------------------


def _workers_rps(blocks: list[WorkersBlock]) -> float:
    seconds = sum(b.seconds for b in blocks)
    return sum(b.ok for b in blocks) / seconds if seconds else math.nan


def _per_call_us(blocks: list[WorkersBlock], cpu: Callable[[WorkersBlock], float]) -> float:
    calls = sum(b.ok for b in blocks)
    return sum(cpu(b) for b in blocks) / calls * 1e6 if calls else math.nan


def _cores(blocks: list[WorkersBlock], cpu: Callable[[WorkersBlock], float]) -> float:
    """CPU seconds per second while the load ran: how many cores that part kept busy."""
    seconds = sum(b.wall_s for b in blocks)
    return sum(cpu(b) for b in blocks) / seconds if seconds else math.nan


def _others_cpu_s(block: WorkersBlock) -> float:
    own = block.gateway_load_cpu_s + block.load_cpu_s + block.upstream_cpu_s
    return max(0.0, block.machine_cpu_s - own)


def _idle_cpu_s(block: WorkersBlock) -> float:
    return max(0.0, _cpus() * block.wall_s - block.machine_cpu_s)


_PER_CALL: tuple[tuple[str, Callable[[WorkersBlock], float]], ...] = (
    ("gateway CPU per call (µs), recorder included", lambda b: b.gateway_cpu_s),
    ("load generator CPU per call (µs)", lambda b: b.load_cpu_s),
    ("upstream CPU per call (µs)", lambda b: b.upstream_cpu_s),
)
_CORES: tuple[tuple[str, Callable[[WorkersBlock], float]], ...] = (
    ("gateway", lambda b: b.gateway_load_cpu_s),
    ("load generator", lambda b: b.load_cpu_s),
    ("upstream", lambda b: b.upstream_cpu_s),
    ("other processes", _others_cpu_s),
    ("idle", _idle_cpu_s),
)


def _busiest_worker_share(blocks: list[WorkersBlock]) -> float:
    """The busiest worker's share of all workers' CPU, per block, averaged: 50% is an even
    split between two workers."""
    shares = [max(b.worker_cpu_s) / sum(b.worker_cpu_s) for b in blocks if sum(b.worker_cpu_s)]
    return mean(shares)


def workers_ratio(workers: WorkersData) -> float:
    one, two = (_workers_rps(workers.blocks[n]) for n in WORKER_COUNTS)
    return two / one


def _workers_table(workers: WorkersData, which: str = "") -> TableData:
    one, two = (workers.blocks[n] for n in WORKER_COUNTS)
    both = (one, two)
    rows = [
        [
            "throughput (req/s)",
            _num(_workers_rps(one), 0),
            _num(_workers_rps(two), 0),
            f"{workers_ratio(workers):.2f}x",
        ]
    ]
    for name, cpu in _PER_CALL:
        us = [_per_call_us(blocks, cpu) for blocks in both]
        rows.append([name, *(_num(u, 0) for u in us), _added(us[1] - us[0], 0)])
    for part, cpu in _CORES:
        cores = [_cores(blocks, cpu) for blocks in both]
        rows.append(
            [
                f"cores busy while loaded: {part}",
                *(_num(c) for c in cores),
                _added(cores[1] - cores[0]),
            ]
        )
    rows += [
        [
            "busiest worker's share of the workers' CPU",
            "—",
            f"{_busiest_worker_share(two):.0%}",
            "—",
        ],
        [
            "failed calls / calls",
            *(
                f"{sum(b.calls - b.ok for b in blocks)} / {sum(b.calls for b in blocks)}"
                for blocks in both
            ),
            "—",
        ],
        [
            "recorder dropped events",
            *(f"{workers.dropped_events.get(n, 0):.0f}" for n in WORKER_COUNTS),
            "—",
        ],
    ]
    title = (
        f"Gateway workers, unary at c={workers.concurrency} (load: {workers.load_generator}; "
        f"upstream: {workers.upstream}){which}"
    )
    return TableData(title, ["measure", "1 worker", "2 workers", "2 vs 1"], rows)


def _workers_notes(workers: WorkersData, which: str = "") -> list[str]:
    """The per-round ratios; `which` names the baseline's gateways, whose phase shares the
    load generator and upstream (and their notes) with this checkout's."""
    one, two = (workers.blocks[n] for n in WORKER_COUNTS)
    ratios = [
        (b2.ok / b2.seconds) / (b1.ok / b1.seconds)
        for b1, b2 in zip(one, two, strict=True)
        if b1.seconds and b2.seconds and b1.ok
    ]
    above = sum(r >= TARGET_WORKERS_RATIO for r in ratios)
    notes = [
        f"Workers 2 vs 1 throughput per round{which}, a noise gauge: "
        f"{_range(ratios, '{:.2f}x')}, median {percentile(ratios, 50):.2f}x "
        f"(≥ {TARGET_WORKERS_RATIO:g}x in {above}/{len(ratios)} rounds)",
        *([] if which else workers.notes),
    ]
    if workers.machine_scaling and not which:
        scaling = workers.machine_scaling
        notes.append(
            "Two CPU-bound Python processes at once vs one, per round (how far two whole cores "
            f"scale on this machine, measured before the phase): {_range(scaling, '{:.2f}x')}, "
            f"median {percentile(scaling, 50):.2f}x"
        )
    if workers.first_error:
        notes.append(f"workers phase{which}, first error: {workers.first_error}")
    return notes


# --- recording and logging on vs off, one worker, in the workers phase ------------------------


def has_recording_variants(workers: WorkersData | None) -> TypeGuard[WorkersData]:
    return workers is not None and all(workers.variants.get(v) for v in (REC_LOG_ON, REC_LOG_OFF))


def _variant_blocks(workers: WorkersData) -> tuple[list[WorkersBlock], ...]:
    """Blocks of rec+log on, recording only (the default: the 1-worker gateway), both off."""
    return workers.variants[REC_LOG_ON], workers.blocks[1], workers.variants[REC_LOG_OFF]


def _gateway_us(blocks: list[WorkersBlock]) -> float:
    """The gateway's CPU per call, its recorder's catch-up included."""
    return _per_call_us(blocks, lambda b: b.gateway_cpu_s)


def h2load_recording_ratio(workers: WorkersData) -> float:
    on, _default, off = _variant_blocks(workers)
    return _workers_rps(on) / _workers_rps(off)


def _h2load_recording_table(workers: WorkersData, which: str = "") -> TableData:
    on, default, off = _variant_blocks(workers)
    blocks = (on, default, off)
    cpu = [_gateway_us(b) for b in blocks]
    rows = [
        [
            "throughput (req/s)",
            *(_num(_workers_rps(b), 0) for b in blocks),
            f"{h2load_recording_ratio(workers):.1%}",
        ],
        [
            "gateway CPU per call (µs), recorder included",
            *(_num(u, 0) for u in cpu),
            _added(cpu[0] - cpu[2], 0),
        ],
        [
            "failed calls / calls",
            *(f"{sum(x.calls - x.ok for x in b)} / {sum(x.calls for x in b)}" for b in blocks),
            "—",
        ],
        [
            "recorder dropped events",
            *(f"{workers.dropped_events.get(k, 0):.0f}" for k in (REC_LOG_ON, 1, REC_LOG_OFF)),
            "—",
        ],
    ]
    title = (
        f"Usage recording and request logging on vs off, 1 worker, unary at "
        f"c={workers.concurrency} (load: {workers.load_generator}; upstream: "
        f"{workers.upstream}){which}"
    )
    header = ["measure", "rec+log on", "recording only (default)", "rec+log off", "on vs off"]
    return TableData(title, header, rows)


def _h2load_recording_notes(workers: WorkersData, which: str = "") -> list[str]:
    on, _default, off = _variant_blocks(workers)
    ratios = [
        (b_on.ok / b_on.seconds) / (b_off.ok / b_off.seconds)
        for b_on, b_off in zip(on, off, strict=True)
        if b_on.seconds and b_off.seconds and b_off.ok
    ]
    above = sum(r >= TARGET_RECORDING_RATIO for r in ratios)
    return [
        f"Recording and logging on/off throughput per round, load from "
        f"{workers.load_generator}{which}, a noise gauge: {_range(ratios, '{:.1%}')}, median "
        f"{percentile(ratios, 50):.1%} (≥ {TARGET_RECORDING_RATIO:.0%} in {above}/{len(ratios)} "
        "rounds)"
    ]


def _h2load_recording_target(
    workers: WorkersData, old: WorkersData | None, figures: list[Figure]
) -> str:
    """The recording target where the gateway alone saturates the machine (h2load, nginx),
    beside the main table's, which shares the cores with a Python client and the emulator."""
    ratio = h2load_recording_ratio(workers)
    on, _default, off = _variant_blocks(workers)
    added = _gateway_us(on) - _gateway_us(off)
    where = f"1 worker, c={workers.concurrency}, load from {workers.load_generator}"
    was = ""
    if has_recording_variants(old):
        goal = f"≥ {TARGET_RECORDING_RATIO:.0%}"
        judged = Figure(
            f"throughput, rec+log on / off, {where}",
            h2load_recording_ratio(old),
            ratio,
            "%",
            False,
            goal=goal,
            met=ratio >= TARGET_RECORDING_RATIO,
        )
        old_on, _, old_off = _variant_blocks(old)
        figures.append(judged)
        figures.append(
            Figure(
                f"gateway CPU per call (µs), rec+log on - off, {where}",
                _gateway_us(old_on) - _gateway_us(old_off),
                added,
                "µs",
                False,
                signed=True,
            )
        )
        was = f"; {judged.was}"
    return (
        f"rec+log on: throughput ≥ {TARGET_RECORDING_RATIO:.0%} of off, {where}: "
        f"{_verdict(ratio >= TARGET_RECORDING_RATIO)} ({ratio:.1%}, {added:+.0f} µs per call"
        f"{was})"
    )


def _workers_target(workers: WorkersData, old: WorkersData | None, figures: list[Figure]) -> str:
    """Judged on this checkout's gateways; with a baseline (`old`), its ratio beside it."""
    ratio = workers_ratio(workers)
    two = workers.blocks[2]
    spare = _cpus() - _cores(two, lambda b: b.load_cpu_s + b.upstream_cpu_s)
    was = ""
    if old is not None:
        goal = f"≥ {TARGET_WORKERS_RATIO:g}x"
        met = ratio >= TARGET_WORKERS_RATIO
        judged = Figure(
            "throughput, 2 workers / 1", workers_ratio(old), ratio, "x", False, False, goal, met
        )
        was = f", {judged.was}"
        figures.append(judged)
        figures += [
            Figure(
                f"throughput (req/s), {n} worker{'s' if n > 1 else ''}, c={workers.concurrency}",
                _workers_rps(old.blocks[n]),
                _workers_rps(workers.blocks[n]),
                "req/s",
                True,
            )
            for n in WORKER_COUNTS
        ]
    machine = ""
    if workers.machine_scaling:
        machine = (
            f"; two CPU-bound processes ran {percentile(workers.machine_scaling, 50):.2f}x "
            "as fast as one here"
        )
    return (
        f"two workers ≥ {TARGET_WORKERS_RATIO:g}x the throughput of one: "
        f"{_verdict(ratio >= TARGET_WORKERS_RATIO)} ({ratio:.2f}x{was}; load generator and "
        f"upstream left {spare:.2f} of {_cpus()} cores to the gateway{machine})"
    )


def _many_streams_table(columns: dict[str, ManyStreamsData]) -> TableData:
    """One column per run of the phase: "value", or "after" and "before"."""
    runs = list(columns.values())

    def errors(many: ManyStreamsData) -> str:
        return ", ".join(f"{name} {n}" for name, n in many.result.errors.items()) or "none"

    def row(measure: str, cell: Callable[[ManyStreamsData], str]) -> list[str]:
        return [measure, *(cell(many) for many in runs)]

    rows = [
        row("streams OK / opened", lambda m: f"{m.result.ok} / {m.result.count}"),
        row("errors by status", errors),
        row("client created every call (s)", lambda m: _num(m.result.create_s)),
        row("streams live at once, at most", lambda m: str(m.result.peak_live)),
        row("every stream had its first chunk (s)", lambda m: _num(m.result.first_chunks_s)),
        row("the last stream ended (s)", lambda m: _num(m.result.finish_s)),
        row(
            "time to first chunk p50 / p99 (ms)",
            lambda m: f"{_num(m.result.ttfc_p50_ms, 0)} / {_num(m.result.ttfc_p99_ms, 0)}",
        ),
        row("gateway RSS before (MiB)", lambda m: _num(m.rss_idle_mib, 1)),
        row("gateway RSS peak (MiB)", lambda m: _num(m.rss_peak_mib, 1)),
    ]
    title = (
        f"{runs[0].count} streams opened at once, one worker ({MANY_CHUNKS} chunks "
        f"{MANY_CHUNK_DELAY_MS:g} ms apart)"
    )
    return TableData(title, ["measure", *columns], rows)


def _many_streams_target(
    many: ManyStreamsData, old: ManyStreamsData | None, figures: list[Figure]
) -> str:
    """Judged on this checkout's gateway; with a baseline (`old`), its figures beside."""
    errors = many.result.error_count
    judged = many.count >= TARGET_MANY_STREAMS
    met = errors == 0 and many.rss_peak_mib < TARGET_PEAK_RSS_MIB
    text = f"{errors} errors, peak RSS {many.rss_peak_mib:.0f} MiB"
    if old is not None:
        text += f"; before {old.result.error_count} errors, peak RSS {old.rss_peak_mib:.0f} MiB"
        figures += [
            Figure(
                f"{many.count} streams at once: errors",
                old.result.error_count,
                errors,
                "",
                False,
                goal="0",
                met=errors == 0 if judged else None,
            ),
            Figure(
                f"{many.count} streams at once: gateway RSS peak (MiB)",
                old.rss_peak_mib,
                many.rss_peak_mib,
                "MiB",
                True,
                goal=f"< {TARGET_PEAK_RSS_MIB:g}",
                met=many.rss_peak_mib < TARGET_PEAK_RSS_MIB if judged else None,
            ),
        ]
    limit = (
        f"{TARGET_MANY_STREAMS} streams opened at once through one worker: 0 errors, RSS < "
        f"{TARGET_PEAK_RSS_MIB:g} MiB"
    )
    if not judged:
        return f"{limit}: not judged ({many.count} streams in this run: {text})"
    return f"{limit}: {_verdict(met)} ({text})"


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


def _main_figures(data: dict[str, TargetData], gateway: str, plan: Plan) -> list[Figure]:
    """The main table's figures of `gateway` and its twin that no target is about."""
    after, was = data[gateway], data[before(gateway)]

    def mib(value: float | None) -> float:
        return math.nan if value is None else value

    return [
        Figure("unary p50 (ms), c=1", unary_ms(was, 50), unary_ms(after, 50), "ms", False),
        Figure("unary p99 (ms), c=1", unary_ms(was, 99), unary_ms(after, 99), "ms", False),
        Figure(
            f"throughput (req/s), c={plan.concurrency}",
            throughput_rps(was),
            throughput_rps(after),
            "req/s",
            True,
        ),
        Figure("stream TTFC p50 (ms)", ttfc_ms(was, 50), ttfc_ms(after, 50), "ms", False),
        Figure(
            "gateway RSS idle (MiB)", mib(was.rss_idle_mib), mib(after.rss_idle_mib), "MiB", True
        ),
        Figure(
            "gateway RSS peak (MiB)", mib(was.rss_peak_mib), mib(after.rss_peak_mib), "MiB", True
        ),
    ]


def build_report(
    data: dict[str, TargetData],
    plan: Plan,
    gateways: list[str],
    recording: RecordingPair | None = None,
    workers: WorkersData | None = None,
    many: ManyStreamsData | None = None,
    baseline: Baseline | None = None,
) -> Report:
    """`gateways` are compared with direct in the main table (none: no main table), the
    first being the default one the targets are judged on; `recording` adds the on/off
    table, its target and the store checks; `workers` and `many` their phases.

    With a `baseline`, the gateways in `data` named `before(name)` are the baseline's twins
    of `name`: they get columns and tables of their own, every target shows their figures
    beside its own, and a before/after table sums them up. Their failures are reported but
    do not fail the run: the bench judges the checkout it runs from."""
    tables, targets, notes = [], [], []
    figures: list[Figure] = []
    failed = False
    cpu_line = _cpu_target_line(data, gateways, workers, baseline, figures)
    if cpu_line:
        targets.append(cpu_line)
    if gateways:
        columns = [name for g in gateways for name in (g, before(g)) if name in data]
        tables.append(_main_table(data, columns, plan))
        targets += _added_target_lines(data, gateways, figures)
        notes.append(
            "Added unary p50 per round (ms), a noise gauge: "
            + "; ".join(f"{_label(g)} {_range(_added_rounds(data, g))}" for g in columns)
        )
        client_note = _client_note(data, gateways)
        if client_note:
            notes.append(client_note)
    old_many = baseline.many if baseline else None
    if many is not None:
        runs = {"after": many, "before": old_many} if old_many else {"value": many}
        tables.append(_many_streams_table(runs))
        targets.append(_many_streams_target(many, old_many, figures))
        if many.result.error_count:
            failed = True
            notes.append(
                f"ERRORS: {many.result.error_count} of {many.count} streams opened at once failed"
            )
        if old_many is not None and old_many.result.error_count:
            notes.append(
                f"ERRORS: {old_many.result.error_count} of {old_many.count} streams opened at "
                f"once failed (before, not counted in the exit status)"
            )
    old_workers = baseline.workers if baseline else None
    if workers is not None:
        tables.append(_workers_table(workers))
        if old_workers is not None:
            tables.append(_workers_table(old_workers, which=" — before"))
        targets.append(_workers_target(workers, old_workers, figures))
        notes += _workers_notes(workers)
        if old_workers is not None:
            notes += _workers_notes(old_workers, which=" (before)")
        if has_recording_variants(workers):
            tables.append(_h2load_recording_table(workers))
            if has_recording_variants(old_workers):
                tables.append(_h2load_recording_table(old_workers, which=" — before"))
            targets.append(_h2load_recording_target(workers, old_workers, figures))
            notes += _h2load_recording_notes(workers)
            if has_recording_variants(old_workers):
                notes += _h2load_recording_notes(old_workers, which=" (before)")
        if workers.failed:
            failed = True
            notes.append(f"ERRORS: the workers phase failed {workers.failed} calls")
        if old_workers is not None and old_workers.failed:
            notes.append(
                f"ERRORS: the workers phase failed {old_workers.failed} calls (before, not "
                f"counted in the exit status)"
            )
    if recording is not None:
        twin = _twin_pair(recording)
        has_twin = twin.on in data and twin.off in data
        tables.append(_recording_table(data, recording, plan))
        if has_twin:
            tables.append(_recording_table(data, twin, plan))
        targets.append(_recording_target(data, recording, figures))
        notes += _recording_notes(data, recording)
        if has_twin:
            notes += _recording_notes(data, twin)
    if baseline is not None:
        if gateways and before(gateways[0]) in data:
            figures += _main_figures(data, gateways[0], plan)
        if figures:
            tables.append(_before_after_table(figures, baseline))
        if baseline.left_out:
            notes.append(
                f"left out of this run to keep it short: {', '.join(baseline.left_out)} "
                f"(a run without --baseline measures it)"
            )
    for name, target in data.items():
        if target.store_rows is None:
            continue
        original = name.removesuffix(BEFORE)
        recorded = recording is None or original != recording.off or recording.off_records_usage
        counted, ok = not name.endswith(BEFORE), _store_ok(target, recorded)
        failed |= counted and not ok
        uncounted = "" if ok or counted else " (not counted in the exit status)"
        notes.append(_store_note(name, target, recorded) + uncounted)
    for name, target in data.items():
        if target.errors:
            counted = not name.endswith(BEFORE)
            failed |= counted
            notes.append(
                f"ERRORS: {name} failed {target.errors} calls"
                + ("" if counted else " (not counted in the exit status)")
                + f"; first: {target.first_error}"
            )
    meta = _meta(plan, bool(gateways))
    if baseline is not None:
        meta += f"; before: {baseline.before}; after: {baseline.after}"
    return Report(tables, targets, notes, meta, failed)


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
