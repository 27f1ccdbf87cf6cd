"""`gemini-gateway usage ...`: requests, tokens and estimated cost by label, from a gateway.

`gemini-gateway usage --group-by ...` prints a table (or CSV / JSON for export);
`usage chart` draws the cost per day; `usage keys` and `usage values KEY` list labels.
"""

from __future__ import annotations

import asyncio
import csv
import json
import math
import sys
from collections.abc import Callable, Coroutine, Sequence
from datetime import UTC, date, datetime, timedelta
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any, TextIO, TypeVar

import grpc
import typer
from rich.console import Console
from rich.markup import escape
from rich.measure import Measurement
from rich.table import Table
from rich.text import Text

from gemini_gateway.cli.common import (
    TargetOpt,
    TokenOpt,
    console,
    err_console,
    rpc_error_exit,
    usage_error,
)
from gemini_gateway.client.gateway_client import DEFAULT_TARGET
from gemini_gateway.client.usage import (
    SINCE_HELP,
    LabelCount,
    UsageClient,
    UsageReport,
    UsageRow,
    parse_since,
)

usage_app = typer.Typer(
    help="Requests, tokens and estimated cost of generate calls, grouped by label and model."
)

T = TypeVar("T")
CALL_TIMEOUT_S = 60.0
# Chart series beyond this many are summed into one "other" series, so the legend stays legible.
MAX_SERIES = 8
PLOT_INSTALL_HINT = (
    "usage chart needs matplotlib: pip install 'gemini-grpc-gateway[plot]' "
    "(from a checkout: pip install '.[plot]')"
)


class OutputFormat(StrEnum):
    table = "table"
    csv = "csv"
    json = "json"


class BucketChoice(StrEnum):
    hour = "hour"
    day = "day"


GroupByOpt = Annotated[
    str,
    typer.Option(
        "--group-by",
        help="Comma-separated group keys: labels.KEY, model, method, project, caller, status "
        "(at most 5).",
    ),
]
UntilOpt = Annotated[
    str | None, typer.Option(help=f"End of the range (exclusive): {SINCE_HELP}; default now.")
]
FilterOpt = Annotated[
    str,
    typer.Option(help='AIP-160 filter, e.g. \'labels.team = "search" AND model != "x"\'.'),
]
ProjectOpt = Annotated[
    str | None, typer.Option(help="Project to read (default: the caller's own).")
]
SinceOpt = Annotated[str, typer.Option(help=f"Start of the range: {SINCE_HELP}.")]


# --- shared plumbing ---------------------------------------------------------------------


def _group_keys(text: str) -> list[str]:
    return [key.strip() for key in text.split(",") if key.strip()]


def _time(text: str | None, option: str) -> datetime | None:
    if text is None or not text.strip():
        return None
    try:
        return parse_since(text)
    except ValueError as exc:
        raise usage_error(f"{option}: {exc}") from None


def _run(
    target: str,
    token: str | None,
    project: str | None,
    work: Callable[[UsageClient], Coroutine[Any, Any, T]],
) -> T:
    """`work` with a client; a failed call is one status line and exit status 1."""

    async def main() -> T:
        async with UsageClient(target, token=token, project=project) as client:
            return await work(client)

    try:
        return asyncio.run(main())
    except grpc.aio.AioRpcError as exc:
        raise rpc_error_exit(exc) from None


def _print_wide(printer: Console, renderable: Table) -> None:
    """Print a table whole: piped output gets the width it needs instead of 80 columns."""
    if printer.is_terminal:
        printer.print(renderable)
        return
    unbounded = printer.options.update(max_width=10_000)
    width = Measurement.get(printer, unbounded, renderable).maximum
    # print(width=...) cannot go past the console's own width: use a console that wide.
    Console(file=printer.file, width=max(width, printer.width)).print(renderable)


def _when(moment: datetime | None) -> str:
    if moment is None:
        return "now"
    if moment.time() == datetime.min.time():
        return moment.strftime("%Y-%m-%d")
    return moment.strftime("%Y-%m-%d %H:%M")


def _range_text(start: datetime | None, end: datetime | None) -> str:
    if start is None:
        return "all recorded calls" if end is None else f"until {_when(end)} UTC"
    return f"{_when(start)} to {_when(end)} UTC"


# --- table, CSV, JSON --------------------------------------------------------------------


def cost_decimals(costs: Sequence[float]) -> int:
    """Decimals that show the smallest non-zero cost with two significant digits (2 to 8)."""
    smallest = min((cost for cost in costs if cost > 0), default=1.0)
    return max(2, min(8, 1 - math.floor(math.log10(smallest))))


def _bucket_text(row: UsageRow, bucket: str | None) -> str:
    if row.bucket_start is None:
        return ""
    return row.bucket_start.strftime("%Y-%m-%d" if bucket == "day" else "%Y-%m-%d %H:00")


def _measures(row: UsageRow, decimals: int) -> list[str]:
    tokens = row.tokens
    counts = (
        row.request_count,
        row.error_count,
        tokens.prompt,
        tokens.candidates,
        tokens.cached,
        tokens.thoughts,
        tokens.total,
    )
    return [f"{count:,}" for count in counts] + [f"{row.estimated_cost:,.{decimals}f}"]


def usage_table(report: UsageReport) -> Table:
    """One column per group key (and the bucket), counts, token sums, cost; a totals row."""
    currency = report.price_table.currency or "USD"
    table = Table()
    leading = ([report.bucket] if report.bucket else []) + list(report.group_by)
    for header in leading or [""]:
        table.add_column(header, overflow="fold")
    for header in ("requests", "errors", "prompt", "output", "cached", "thinking", "total"):
        table.add_column(header, justify="right", no_wrap=True)
    table.add_column(f"est. cost ({currency})", justify="right", no_wrap=True)
    decimals = cost_decimals([row.estimated_cost for row in report.rows])
    if leading:
        for row in report.rows:
            cells = ([_bucket_text(row, report.bucket)] if report.bucket else []) + list(
                row.group.values()
            )
            # Text, not markup: label values are the callers' own strings.
            table.add_row(*map(Text, cells), *_measures(row, decimals))
        if report.rows:
            table.rows[-1].end_section = True
    padding = [""] * (max(len(leading), 1) - 1)
    table.add_row("total", *padding, *_measures(report.totals, decimals), style="bold")
    return table


def price_note(report: UsageReport) -> str:
    info = report.price_table
    return (
        f"Estimated cost in {info.currency}: price table read on {info.read_on} from {info.source}"
    )


_CSV_MEASURES = (
    "request_count",
    "error_count",
    "incomplete_count",
    "prompt_tokens",
    "candidates_tokens",
    "cached_tokens",
    "thoughts_tokens",
    "tool_use_tokens",
    "total_tokens",
    "estimated_cost",
    "currency",
)


def write_csv(report: UsageReport, out: TextIO) -> None:
    """A header row, then one row per group (no totals row: sums stay the reader's)."""
    writer = csv.writer(out, lineterminator="\n")
    bucket_column = ["bucket_start"] if report.bucket else []
    writer.writerow([*report.group_by, *bucket_column, *_CSV_MEASURES])
    for row in report.rows:
        tokens = row.tokens
        bucket = [row.bucket_start.isoformat().replace("+00:00", "Z")] if row.bucket_start else []
        writer.writerow(
            [
                *row.group.values(),
                *(bucket if report.bucket else []),
                row.request_count,
                row.error_count,
                row.incomplete_count,
                tokens.prompt,
                tokens.candidates,
                tokens.cached,
                tokens.thoughts,
                tokens.tool_use,
                tokens.total,
                repr(row.estimated_cost),
                report.price_table.currency,
            ]
        )


@usage_app.callback(invoke_without_command=True)
def usage(
    ctx: typer.Context,
    group_by: GroupByOpt = "",
    since: SinceOpt = "7d",
    until: UntilOpt = None,
    filter: FilterOpt = "",
    bucket: Annotated[
        BucketChoice | None, typer.Option(help="One row per group and UTC hour or day.")
    ] = None,
    output: Annotated[
        OutputFormat, typer.Option("--format", help="table, or csv / json for export.")
    ] = OutputFormat.table,
    target: TargetOpt = DEFAULT_TARGET,
    token: TokenOpt = None,
    project: ProjectOpt = None,
) -> None:
    """Table of requests, errors, tokens and estimated cost per group (or CSV / JSON)."""
    if ctx.invoked_subcommand is not None:
        return
    keys = _group_keys(group_by)
    start, end = _time(since, "--since"), _time(until, "--until")

    async def work(client: UsageClient) -> UsageReport:
        return await client.query(
            keys,
            filter=filter,
            start=start,
            end=end,
            bucket=bucket.value if bucket else None,  # type: ignore[arg-type]
            timeout=CALL_TIMEOUT_S,
        )

    report = _run(target, token, project, work)
    if output is OutputFormat.csv:
        write_csv(report, sys.stdout)
    elif output is OutputFormat.json:
        sys.stdout.write(json.dumps(report.as_dict(), indent=2, ensure_ascii=False) + "\n")
    else:
        console.print(f"Usage, {_range_text(report.start, report.end)}", soft_wrap=True)
        _print_wide(console, usage_table(report))
        if not report.rows:
            console.print("[dim]No recorded calls match.[/dim]")
        console.print(f"[dim]{escape(price_note(report))}[/dim]", soft_wrap=True)


# --- chart --------------------------------------------------------------------------------


def _load_matplotlib() -> Any:
    """pyplot on the Agg backend; exit status 1 with the install command when it is missing."""
    try:
        import matplotlib
    except ImportError:
        err_console.print(f"[red]error[/red]: {escape(PLOT_INSTALL_HINT)}", soft_wrap=True)
        raise typer.Exit(1) from None
    # Agg draws to files only: works without a display (servers, CI, ssh sessions).
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _check_image_format(out: Path) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    supported = sorted(FigureCanvasAgg.get_supported_filetypes())
    suffix = out.suffix.lower().lstrip(".")
    if suffix not in supported:
        problem = f"matplotlib cannot write '.{suffix}' files" if suffix else "no file extension"
        raise usage_error(
            f"--out {out.name}: {problem}; use one of {', '.join('.' + name for name in supported)}"
        )


def daily_series(
    rows: Sequence[UsageRow], key: str | None, days: Sequence[date]
) -> dict[str, list[float]]:
    """Cost per day for each value of `key`, largest first; the tail folded into "other"."""
    index = {day: i for i, day in enumerate(days)}
    series: dict[str, list[float]] = {}
    for row in rows:
        if row.bucket_start is None or row.bucket_start.date() not in index:
            continue
        name = row.group.get(key, "") if key else "all calls"
        costs = series.setdefault(name, [0.0] * len(days))
        costs[index[row.bucket_start.date()]] += row.estimated_cost
    ranked = sorted(series.items(), key=lambda item: (-sum(item[1]), item[0]))
    if len(ranked) <= MAX_SERIES:
        return dict(ranked)
    kept, rest = ranked[: MAX_SERIES - 1], ranked[MAX_SERIES - 1 :]
    other = [sum(costs[i] for _, costs in rest) for i in range(len(days))]
    return {**dict(kept), f"other ({len(rest)})": other}


def _tick_decimals(step: float) -> int:
    """Decimals that write a tick step exactly, cents at least: 10 -> 0, 0.05 -> 2, 2.5e-05 -> 6."""
    if step >= 1 and abs(step - round(step)) < 1e-9:
        return 0
    for decimals in range(2, 11):
        scaled = step * 10**decimals
        if abs(scaled - round(scaled)) < 1e-6 * max(1.0, scaled):
            return decimals
    return 10


def plot_daily_cost(
    report: UsageReport, key: str | None, days: Sequence[date], out: Path, plt: Any
) -> int:
    """Stacked bars of estimated cost per day, one colour per value of `key`; series drawn."""
    import matplotlib.dates as mdates
    from matplotlib.ticker import FuncFormatter

    series = daily_series(report.rows, key, days)
    currency = report.price_table.currency or "USD"
    symbol = "$" if currency == "USD" else ""
    width = max(8.0, min(16.0, 4.0 + 0.3 * len(days)))
    figure, axes = plt.subplots(figsize=(width, 4.8))
    try:
        colours = plt.get_cmap("tab10").colors
        bottoms = [0.0] * len(days)
        handles = []
        for number, (name, costs) in enumerate(series.items()):
            other = name.startswith("other (") and number == MAX_SERIES - 1
            colour = "#b0b0b0" if other else colours[number % len(colours)]
            shown = name if len(name) <= 32 else name[:31] + "…"
            bars = axes.bar(
                days, costs, width=0.8, bottom=bottoms, color=colour, label=shown, zorder=2
            )
            handles.append(bars)
            bottoms = [b + c for b, c in zip(bottoms, costs, strict=True)]
        total = sum(bottoms)
        axes.set_title(
            f"Estimated cost per day by {key or 'all calls'}\n"
            f"{days[0]:%Y-%m-%d} to {days[-1]:%Y-%m-%d} (UTC) · total {symbol}"
            f"{total:,.{cost_decimals([total])}f}{'' if symbol else ' ' + currency}",
            loc="left",
        )
        axes.set_xlabel("day (UTC)")
        axes.set_ylabel(f"estimated cost ({currency})")
        locator = mdates.AutoDateLocator(minticks=3, maxticks=12)
        axes.xaxis.set_major_locator(locator)
        axes.xaxis.set_major_formatter(mdates.ConciseDateFormatter(locator))
        # In date numbers (days): a date plus a fraction of a day would drop the fraction.
        axes.set_xlim(mdates.date2num(days[0]) - 0.6, mdates.date2num(days[-1]) + 0.6)
        axes.set_ylim(bottom=0)
        if total > 0:
            ticks = [tick for tick in axes.get_yticks() if tick >= 0]
            decimals = _tick_decimals(ticks[1] - ticks[0]) if len(ticks) > 1 else 2
            axes.yaxis.set_major_formatter(
                FuncFormatter(lambda value, _: f"{symbol}{value:,.{decimals}f}")
            )
        axes.grid(axis="y", alpha=0.3, zorder=0)
        axes.spines[["top", "right"]].set_visible(False)
        # Reversed, so the legend reads top-down like the stacks.
        axes.legend(
            handles[::-1],
            [handle.get_label() for handle in handles[::-1]],
            title=key or None,
            loc="upper left",
            bbox_to_anchor=(1.01, 1.0),
            frameon=False,
        )
        figure.tight_layout()
        figure.savefig(out, dpi=120)
    finally:
        plt.close(figure)
    return len(series)


def _days(start: datetime, end: datetime) -> list[date]:
    first, last = start.date(), (end - timedelta(microseconds=1)).date()
    return [first + timedelta(days=n) for n in range((last - first).days + 1)]


@usage_app.command()
def chart(
    out: Annotated[Path, typer.Option(help="Image to write: .png, .svg, .pdf, ...")],
    group_by: Annotated[
        str,
        typer.Option(
            "--group-by",
            help="Group keys as for the table; bars stack by the FIRST key, others are summed.",
        ),
    ] = "",
    since: SinceOpt = "30d",
    until: UntilOpt = None,
    filter: FilterOpt = "",
    target: TargetOpt = DEFAULT_TARGET,
    token: TokenOpt = None,
    project: ProjectOpt = None,
) -> None:
    """Bar chart of estimated cost per day, stacked by the first group key."""
    plt = _load_matplotlib()
    _check_image_format(out)
    keys = _group_keys(group_by)
    key = keys[0] if keys else None
    start = _time(since, "--since")
    if start is None:
        raise usage_error("--since: a chart needs the start of its range, e.g. --since 30d")
    end = _time(until, "--until")
    days = _days(start, end or datetime.now(UTC))
    if not days:
        raise usage_error("--since must be before --until")

    async def work(client: UsageClient) -> UsageReport:
        # Only the first key shapes the chart: asking for it alone keeps the answer small.
        return await client.query(
            [key] if key else [],
            filter=filter,
            start=start,
            end=end,
            bucket="day",
            timeout=CALL_TIMEOUT_S,
        )

    report = _run(target, token, project, work)
    if not report.rows:
        err_console.print(f"no recorded calls match ({_range_text(start, end)}): nothing to plot")
        raise typer.Exit(1)
    try:
        count = plot_daily_cost(report, key, days, out, plt)
    except OSError as exc:
        raise usage_error(f"--out {out}: {exc.strerror or exc}") from None
    console.print(f"wrote {escape(str(out))} ({len(days)} days, {count} series)", soft_wrap=True)


# --- label keys and values ----------------------------------------------------------------


def _label_table(header: str, items: Sequence[LabelCount]) -> Table:
    table = Table()
    table.add_column(header, overflow="fold")
    table.add_column("requests", justify="right", no_wrap=True)
    for item in items:
        name = Text(item.name) if item.name else Text("(empty)", style="dim")
        table.add_row(name, f"{item.request_count:,}")
    return table


@usage_app.command()
def keys(
    prefix: Annotated[str, typer.Option(help="Only keys starting with this.")] = "",
    target: TargetOpt = DEFAULT_TARGET,
    token: TokenOpt = None,
    project: ProjectOpt = None,
) -> None:
    """Label keys seen on recorded calls, most used first."""

    async def work(client: UsageClient) -> list[LabelCount]:
        return await client.label_keys(prefix, timeout=CALL_TIMEOUT_S)

    found = _run(target, token, project, work)
    if not found:
        console.print("No label keys recorded.")
        return
    _print_wide(console, _label_table("key", found))


@usage_app.command()
def values(
    key: Annotated[str, typer.Argument(help="Label key: `team` or `labels.team`.")],
    prefix: Annotated[str, typer.Option(help="Only values starting with this.")] = "",
    target: TargetOpt = DEFAULT_TARGET,
    token: TokenOpt = None,
    project: ProjectOpt = None,
) -> None:
    """Values seen for one label key, most used first."""

    async def work(client: UsageClient) -> list[LabelCount]:
        return await client.label_values(key, prefix, timeout=CALL_TIMEOUT_S)

    found = _run(target, token, project, work)
    if not found:
        console.print(Text(f"No values recorded for {key.removeprefix('labels.')}."))
        return
    _print_wide(console, _label_table(key.removeprefix("labels."), found))
