"""`gemini-gateway datasets ...`: datasets of request logs, their exports, tuning and re-runs.

A dataset is a named selection of a project's logs (`datasets create --ids ...` or
`--from-filter ...`). `datasets export` writes it as a file, `datasets tune` tunes a model
on it, and `datasets rerun` replays its requests against a model with a progress bar, then
prints each original answer beside the new one, and the run's totals.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from enum import StrEnum
from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table
from rich.text import Text

from gemini_gateway.cli.common import TargetOpt, TokenOpt, console, err_console, usage_error
from gemini_gateway.cli.logs import (
    CALL_TIMEOUT_S,
    Clients,
    ProjectOpt,
    ShowFormat,
    checked_name,
    cut,
    duration_text,
    logs_table,
    message_json,
    print_json,
    run_command,
    split_ids,
    status_name,
    when,
)
from gemini_gateway.cli.tune import _follow as follow_tuning
from gemini_gateway.cli.tune import _print_done as print_tuned
from gemini_gateway.cli.usage import _print_wide as print_wide
from gemini_gateway.cli.usage import cost_decimals
from gemini_gateway.client.datasets import Dataset, ExportedFile, LogChange
from gemini_gateway.client.gateway_client import DEFAULT_TARGET, model_name
from gemini_gateway.client.logs import Log, dataset_name, log_name, resource_id
from gemini_gateway.client.runs import GenerationConfig, Run, RunFailed, RunResult, run_name
from gemini_gateway.client.tuning import DEFAULT_BASE_MODEL, TuningFailed, build_tuned_model
from gemini_gateway.generated.gemini.gateway.v1 import runs_pb2

datasets_app = typer.Typer(
    help="Datasets of request logs: create, change, export, tune, re-run and compare.",
    no_args_is_help=True,
)

DatasetArg = Annotated[
    str, typer.Argument(help="Dataset id (`my-set`) or name (`projects/P/datasets/my-set`).")
]
IdsOpt = Annotated[
    list[str] | None,
    typer.Option("--ids", help="Log ids or names, comma-separated (or the option repeated)."),
]
YesOpt = Annotated[bool, typer.Option("--yes", "-y", help="Do not ask for confirmation.")]
TimeoutOpt = Annotated[float | None, typer.Option(help="Give up waiting after this many seconds.")]
TEXT_CHARS = 40  # answer text shown per side of a comparison row


class ExportChoice(StrEnum):
    csv = "csv"
    jsonl = "jsonl"
    batch = "batch"
    tuning = "tuning"


class ModeChoice(StrEnum):
    direct = "direct"
    batch = "batch"


def _dataset(dataset: str, project: str | None) -> str:
    return checked_name(dataset_name, dataset, project)


def _log_names(ids: Sequence[str], project: str | None) -> list[str]:
    return [checked_name(log_name, log, project) for log in ids]


def _selection(
    ids: list[str] | None, filter: str, filter_option: str, project: str | None
) -> tuple[list[str], str]:
    """Log names or a filter, exactly one of them; a usage error otherwise."""
    names = _log_names(split_ids(ids), project)
    if bool(names) == bool(filter.strip()):
        raise usage_error(f"give --ids ID,ID... or {filter_option} FILTER (one of them)")
    return names, filter


def _plural(count: int, noun: str) -> str:
    return f"{count:,} {noun}{'' if count == 1 else 's'}"


def dataset_line(dataset: Dataset) -> Text:
    return Text(f"{dataset.name}: {dataset.display_name} ({_plural(dataset.log_count, 'log')})")


# --- create, list, show, add, remove, delete ------------------------------------------------


@datasets_app.command()
def create(
    name: Annotated[str, typer.Option("--name", help="Display name (at most 128 characters).")],
    ids: IdsOpt = None,
    from_filter: Annotated[
        str, typer.Option("--from-filter", help="Every log matching this ListLogs filter.")
    ] = "",
    description: Annotated[str, typer.Option(help="Free text.")] = "",
    dataset_id: Annotated[
        str, typer.Option("--id", help="Id in the dataset's name (default: made up).")
    ] = "",
    target: TargetOpt = DEFAULT_TARGET,
    token: TokenOpt = None,
    project: ProjectOpt = None,
) -> None:
    """Create a dataset from log ids or from a filter."""
    names, filter = _selection(ids, from_filter, "--from-filter", project)

    async def work(clients: Clients) -> Dataset:
        return await clients.datasets.create(
            name,
            logs=names,
            filter=filter,
            description=description,
            dataset_id=dataset_id,
            timeout=CALL_TIMEOUT_S,
        )

    created = run_command(target, token, project, work)
    console.print(Text("created ").append_text(dataset_line(created)), soft_wrap=True)


def datasets_table(datasets: Sequence[Dataset]) -> Table:
    table = Table()
    table.add_column("id", no_wrap=True)
    table.add_column("display name", overflow="fold")
    table.add_column("logs", justify="right", no_wrap=True)
    table.add_column("created (UTC)", no_wrap=True)
    table.add_column("updated (UTC)", no_wrap=True)
    table.add_column("description", overflow="fold")
    for dataset in datasets:
        table.add_row(
            Text(resource_id(dataset.name)),
            Text(dataset.display_name),
            f"{dataset.log_count:,}",
            when(dataset.create_time),
            when(dataset.update_time),
            Text(cut(dataset.description, 60)),
        )
    return table


@datasets_app.command("list")
def list_datasets(
    output: Annotated[
        ShowFormat, typer.Option("--format", help="table, or json for scripts.")
    ] = ShowFormat.table,
    target: TargetOpt = DEFAULT_TARGET,
    token: TokenOpt = None,
    project: ProjectOpt = None,
) -> None:
    """The project's datasets, newest first."""

    async def work(clients: Clients) -> list[Dataset]:
        return await clients.datasets.list(timeout=CALL_TIMEOUT_S)

    found = run_command(target, token, project, work)
    if output is ShowFormat.json:
        print_json([message_json(dataset) for dataset in found])
    elif found:
        print_wide(console, datasets_table(found))
    else:
        console.print("No datasets. Create one: gemini-gateway datasets create --name ...")


@datasets_app.command()
def show(
    dataset: DatasetArg,
    logs: Annotated[bool, typer.Option("--logs", help="List the dataset's logs too.")] = False,
    output: Annotated[
        ShowFormat, typer.Option("--format", help="table, or json for scripts.")
    ] = ShowFormat.table,
    target: TargetOpt = DEFAULT_TARGET,
    token: TokenOpt = None,
    project: ProjectOpt = None,
) -> None:
    """One dataset: name, description, log count, times (and its logs with --logs)."""
    name = _dataset(dataset, project)

    async def work(clients: Clients) -> tuple[Dataset, list[Run], list[Log]]:
        found = await clients.datasets.get(name, timeout=CALL_TIMEOUT_S)
        runs = await clients.runs.list(name, timeout=CALL_TIMEOUT_S)
        members: list[Log] = []
        if logs:
            filter = f'dataset = "{found.name}"'
            page = await clients.logs.list(filter=filter, limit=None, timeout=CALL_TIMEOUT_S)
            members = page.logs
        return found, runs, members

    found, runs, members = run_command(target, token, project, work)
    if output is ShowFormat.json:
        data = message_json(found)
        data["runs"] = [message_json(run) for run in runs]
        if logs:
            data["logs"] = [message_json(log) for log in members]
        print_json(data)
        return
    grid = Table.grid(padding=(0, 2))
    grid.add_column(style="bold", no_wrap=True)
    grid.add_column(overflow="fold")
    rows = [
        ("dataset", found.name),
        ("display name", found.display_name),
        ("description", found.description),
        ("logs", f"{found.log_count:,}"),
        ("created", f"{when(found.create_time)} UTC"),
        ("updated", f"{when(found.update_time)} UTC"),
        ("runs", ", ".join(resource_id(run.name) for run in runs)),
    ]
    for label, value in rows:
        if value:
            grid.add_row(label, Text(value))
    console.print(grid)
    if logs:
        print_wide(console, logs_table(members))


def _change_line(verb: str, change: LogChange) -> Text:
    return Text(f"{verb} {_plural(change.count, 'log')}: ").append_text(
        dataset_line(change.dataset)
    )


@datasets_app.command()
def add(
    dataset: DatasetArg,
    ids: IdsOpt = None,
    filter: Annotated[str, typer.Option(help="Add every log matching this filter.")] = "",
    target: TargetOpt = DEFAULT_TARGET,
    token: TokenOpt = None,
    project: ProjectOpt = None,
) -> None:
    """Add logs to a dataset, by id or by filter (logs already in it stay as they are)."""
    name = _dataset(dataset, project)
    names, filter = _selection(ids, filter, "--filter", project)

    async def work(clients: Clients) -> LogChange:
        return await clients.datasets.add_logs(name, names, filter=filter, timeout=CALL_TIMEOUT_S)

    change = run_command(target, token, project, work)
    console.print(_change_line("added", change), soft_wrap=True)


@datasets_app.command()
def remove(
    dataset: DatasetArg,
    ids: IdsOpt = None,
    filter: Annotated[str, typer.Option(help="Remove every log matching this filter.")] = "",
    target: TargetOpt = DEFAULT_TARGET,
    token: TokenOpt = None,
    project: ProjectOpt = None,
) -> None:
    """Take logs out of a dataset, by id or by filter (the logs themselves stay)."""
    name = _dataset(dataset, project)
    names, filter = _selection(ids, filter, "--filter", project)

    async def work(clients: Clients) -> LogChange:
        return await clients.datasets.remove_logs(
            name, names, filter=filter, timeout=CALL_TIMEOUT_S
        )

    change = run_command(target, token, project, work)
    console.print(_change_line("removed", change), soft_wrap=True)


@datasets_app.command()
def delete(
    dataset: DatasetArg,
    yes: YesOpt = False,
    target: TargetOpt = DEFAULT_TARGET,
    token: TokenOpt = None,
    project: ProjectOpt = None,
) -> None:
    """Delete a dataset and its runs; its logs stay (and expire as any other log)."""
    name = _dataset(dataset, project)
    if not yes:
        typer.confirm(f"Delete dataset {dataset} and its runs (its logs stay)?", abort=True)

    async def work(clients: Clients) -> None:
        await clients.datasets.delete(name, timeout=CALL_TIMEOUT_S)

    run_command(target, token, project, work)
    console.print(Text(f"deleted dataset {dataset}"), soft_wrap=True)


# --- export -------------------------------------------------------------------------------


@datasets_app.command()
def export(
    dataset: DatasetArg,
    out: Annotated[
        Path,
        typer.Option(
            help="File to write; a folder gets the gateway's file name (`my-set.jsonl`); "
            "`-` writes to standard output."
        ),
    ],
    output: Annotated[
        ExportChoice,
        typer.Option(
            "--format",
            help="csv; jsonl (request/response pairs); batch (the Batch API's input); "
            "tuning (text_input/output examples).",
        ),
    ],
    target: TargetOpt = DEFAULT_TARGET,
    token: TokenOpt = None,
    project: ProjectOpt = None,
) -> None:
    """Write a dataset as a file, piece by piece as the gateway sends it."""
    name = _dataset(dataset, project)
    if str(out) == "-":

        async def to_stdout(clients: Clients) -> ExportedFile:
            written = await clients.datasets.export_to(
                name, output.value, sys.stdout.buffer, timeout=CALL_TIMEOUT_S
            )
            sys.stdout.buffer.flush()
            return written

        run_command(target, token, project, to_stdout)
        return
    # Written beside the file, then renamed: a failed export leaves no half-written file.
    # A folder gets the file under the name the gateway suggests (`my-set.jsonl`...).
    folder = out if out.is_dir() else out.parent
    partial = folder / f".{resource_id(name)}.{output.value}.partial"
    try:
        handle = partial.open("wb")
    except OSError as exc:
        raise usage_error(f"--out {out}: {exc.strerror or exc}") from None

    async def to_file(clients: Clients) -> ExportedFile:
        return await clients.datasets.export_to(name, output.value, handle, timeout=CALL_TIMEOUT_S)

    try:
        with handle:
            written = run_command(target, token, project, to_file)
        if out.is_dir():
            out = out / (written.file_name or f"{resource_id(name)}.{output.value}")
        os.replace(partial, out)
    finally:
        partial.unlink(missing_ok=True)
    kind = f", {written.content_type}" if written.content_type else ""
    console.print(
        f"wrote {written.size:,} bytes to {escape(str(out))} ({output.value}{kind})",
        soft_wrap=True,
    )


# --- tune ---------------------------------------------------------------------------------


@datasets_app.command()
def tune(
    dataset: DatasetArg,
    display_name: Annotated[str, typer.Option(help="Tuned model's name (at most 40 chars).")],
    base_model: Annotated[str, typer.Option(help="Model to tune.")] = DEFAULT_BASE_MODEL,
    model_id: Annotated[
        str | None, typer.Option("--id", help="Tuned model id (default: from the name).")
    ] = None,
    description: Annotated[str, typer.Option(help="Free text.")] = "",
    epochs: Annotated[int | None, typer.Option(help="Epoch count.")] = None,
    batch_size: Annotated[int | None, typer.Option(help="Examples per step.")] = None,
    learning_rate: Annotated[float | None, typer.Option(help="Learning rate.")] = None,
    wait: Annotated[bool, typer.Option(help="Follow the job until it ends.")] = False,
    timeout: TimeoutOpt = None,
    target: TargetOpt = DEFAULT_TARGET,
    token: TokenOpt = None,
    project: ProjectOpt = None,
) -> None:
    """Tune a model on the dataset (each log's last user turn -> its response text)."""
    name = _dataset(dataset, project)
    tuned_model = build_tuned_model(
        [],
        display_name,
        base_model=model_name(base_model),
        description=description,
        epochs=epochs,
        batch_size=batch_size,
        learning_rate=learning_rate,
    )

    async def work(clients: Clients) -> None:
        operation = await clients.datasets.create_tuned_model(
            name, tuned_model, tuned_model_id=model_id, timeout=CALL_TIMEOUT_S
        )
        console.print(f"operation:   {operation.name}")
        console.print(f"tuned model: {operation.tuned_model_name}")
        if wait:
            print_tuned(await follow_tuning(operation, timeout))

    try:
        run_command(target, token, project, work)
    except TuningFailed as exc:
        err_console.print(
            f"[red]FAILED[/red] {exc.operation_name}: {exc.code.name}: {escape(exc.message)}",
            soft_wrap=True,
        )
        raise typer.Exit(1) from None
    except TimeoutError as exc:
        err_console.print(f"[red]{escape(str(exc))}[/red]", soft_wrap=True)
        raise typer.Exit(1) from None


# --- re-runs ------------------------------------------------------------------------------

_STATES = {
    runs_pb2.RUN_STATE_UNSPECIFIED: "starting",
    runs_pb2.PENDING: "pending",
    runs_pb2.RUNNING: "running",
    runs_pb2.SUCCEEDED: "succeeded",
    runs_pb2.FAILED: "failed",
}
_MODES = {
    runs_pb2.RUN_MODE_UNSPECIFIED: "direct",
    runs_pb2.DIRECT: "direct",
    runs_pb2.BATCH: "batch",
}


def _progress_text(run: Run) -> str:
    text = _STATES.get(run.state, "running")
    if run.summary.failed_count:
        text += f" · {run.summary.failed_count:,} failed"
    return text


def _pair(original: str, rerun: str) -> str:
    return original if original == rerun else f"{original} → {rerun}"


def _answer(side: runs_pb2.RunOutput) -> Text:
    if side.HasField("error"):
        failure = f"{status_name(side.error.code)}: {side.error.message}"
        return Text(cut(failure, TEXT_CHARS + 20), style="red")
    return Text(cut(side.text, TEXT_CHARS))


def _latency(side: runs_pb2.RunOutput) -> str:
    return duration_text(side.latency, side.HasField("latency")) or "-"


def _similarity(result: RunResult) -> str:
    if result.original.HasField("error") or result.rerun.HasField("error"):
        return "-"  # no text to compare
    return "same" if result.same_text else f"{result.text_similarity:.2f}"


def comparison_table(results: Sequence[RunResult]) -> Table:
    """One row per log: both answers side by side, and how they differ."""
    decimals = cost_decimals(
        [cost for r in results for cost in (r.original.estimated_cost, r.rerun.estimated_cost)]
    )
    table = Table()
    table.add_column("log", no_wrap=True)
    table.add_column("original", overflow="fold")
    table.add_column("re-run", overflow="fold")
    for header in ("finish", "tokens", "cost", "latency", "similarity"):
        table.add_column(header, justify="right", no_wrap=True)
    for result in results:
        original, rerun = result.original, result.rerun
        table.add_row(
            Text(resource_id(result.log)),
            _answer(original),
            _answer(rerun),
            _pair(original.finish_reason or "-", rerun.finish_reason or "-"),
            _pair(f"{original.tokens.total:,}", f"{rerun.tokens.total:,}"),
            _pair(
                f"{original.estimated_cost:.{decimals}f}", f"{rerun.estimated_cost:.{decimals}f}"
            ),
            _pair(_latency(original), _latency(rerun)),
            _similarity(result),
        )
    return table


def totals_table(run: Run) -> Table:
    """The run's summary: counts, agreement, tokens, cost and median latency, both sides."""
    summary = run.summary
    decimals = cost_decimals([summary.original_cost, summary.rerun_cost])
    table = Table(title=None)
    table.add_column("run totals", no_wrap=True)
    table.add_column("original", justify="right", no_wrap=True)
    table.add_column("re-run", justify="right", no_wrap=True)
    original_tokens, rerun_tokens = summary.original_tokens, summary.rerun_tokens
    # The summary counts the re-run's failures; the originals' come from the results (FULL).
    original_failed = sum(result.original.HasField("error") for result in run.results)
    table.add_row("requests", f"{summary.request_count:,}", f"{summary.completed_count:,}")
    table.add_row(
        "failed", f"{original_failed:,}" if run.results else "", f"{summary.failed_count:,}"
    )
    table.add_row("same text", "", f"{summary.same_text_count:,}")
    table.add_row("mean similarity", "", f"{summary.mean_text_similarity:.2f}")
    table.add_row("prompt tokens", f"{original_tokens.prompt:,}", f"{rerun_tokens.prompt:,}")
    table.add_row(
        "output tokens", f"{original_tokens.candidates:,}", f"{rerun_tokens.candidates:,}"
    )
    table.add_row("total tokens", f"{original_tokens.total:,}", f"{rerun_tokens.total:,}")
    table.add_row(
        "est. cost (USD)",
        f"{summary.original_cost:.{decimals}f}",
        f"{summary.rerun_cost:.{decimals}f}",
    )
    table.add_row(
        "median latency",
        duration_text(summary.original_latency_p50, summary.HasField("original_latency_p50"))
        or "-",
        duration_text(summary.rerun_latency_p50, summary.HasField("rerun_latency_p50")) or "-",
    )
    return table


def run_facts(run: Run) -> Table:
    grid = Table.grid(padding=(0, 2))
    grid.add_column(style="bold", no_wrap=True)
    grid.add_column(overflow="fold")
    overrides = []
    if run.HasField("system_instruction"):
        text = "".join(part.text for part in run.system_instruction.parts)
        overrides.append(f"system instruction {cut(text, 60)!r}")
    if run.HasField("generation_config"):
        overrides.append("generation config")
    state = Text(_STATES.get(run.state, ""), style="red" if run.state == runs_pb2.FAILED else "")
    if run.HasField("error"):
        state.append(f": {status_name(run.error.code)}: {run.error.message}")
    ended = when(run.end_time)
    rows: list[tuple[str, str | Text]] = [
        ("run", resource_id(run.name)),
        ("dataset", run.name.partition("/runs/")[0]),
        ("model", run.model),
        ("mode", _MODES.get(run.mode, "")),
        ("state", state),
        ("started", f"{when(run.create_time)} UTC"),
        ("ended", f"{ended} UTC" if ended else ""),
        ("batch", run.batch),
        ("overrides", ", ".join(overrides)),
    ]
    for label, value in rows:
        shown = value if isinstance(value, Text) else Text(value)
        if shown.plain:
            grid.add_row(label, shown)
    return grid


def print_run(run: Run) -> None:
    """A run as the end of `datasets rerun` shows it: facts, comparison, totals."""
    console.print(run_facts(run))
    if run.results:
        print_wide(console, comparison_table(run.results))
    print_wide(console, totals_table(run))


@datasets_app.command()
def rerun(
    dataset: DatasetArg,
    model: Annotated[str, typer.Option(help="Model to send the requests to.")],
    mode: Annotated[
        ModeChoice,
        typer.Option(help="direct (through the gateway) or batch (one Batch API batch)."),
    ] = ModeChoice.direct,
    system_instruction: Annotated[
        str | None, typer.Option(help="Replaces every request's system instruction.")
    ] = None,
    temperature: Annotated[
        float | None,
        typer.Option(help="Replaces every request's generation config with this temperature."),
    ] = None,
    max_output_tokens: Annotated[
        int | None, typer.Option(help="Also in the replacing generation config.")
    ] = None,
    concurrency: Annotated[
        int, typer.Option(min=0, max=64, help="direct: calls at once (0: the default, 4).")
    ] = 0,
    wait: Annotated[bool, typer.Option(help="Follow the run, then print the comparison.")] = True,
    timeout: TimeoutOpt = None,
    target: TargetOpt = DEFAULT_TARGET,
    token: TokenOpt = None,
    project: ProjectOpt = None,
) -> None:
    """Replay a dataset's requests against a model and compare the answers."""
    name = _dataset(dataset, project)
    config: GenerationConfig | None = None
    if temperature is not None or max_output_tokens is not None:
        config = GenerationConfig()
        if temperature is not None:
            config.temperature = temperature
        if max_output_tokens is not None:
            config.max_output_tokens = max_output_tokens

    async def work(clients: Clients) -> Run | None:
        operation = await clients.runs.rerun(
            name,
            model,
            mode=mode.value,
            system_instruction=system_instruction,
            generation_config=config,
            concurrency=concurrency,
            timeout=CALL_TIMEOUT_S,
        )
        run_id = resource_id(operation.name)
        of = operation.name.partition("/runs/")[0]
        console.print(f"run {run_id} of {escape(of)}", soft_wrap=True)
        if not wait:
            console.print(f"follow it: gemini-gateway datasets run {escape(dataset)} {run_id}")
            return None
        columns = (
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
        )
        with Progress(*columns, console=console) as progress:
            summary = operation.run.summary
            task = progress.add_task(
                _progress_text(operation.run),
                total=summary.request_count or None,
                completed=summary.completed_count,
            )

            def show(run: Run) -> None:
                progress.update(
                    task,
                    total=run.summary.request_count or None,
                    completed=run.summary.completed_count,
                    description=_progress_text(run),
                )

            await operation.wait(timeout, on_progress=show)
        return await clients.runs.get(operation.name, timeout=CALL_TIMEOUT_S)

    try:
        finished = run_command(target, token, project, work)
    except RunFailed as exc:
        err_console.print(
            f"[red]FAILED[/red] {escape(exc.operation_name)}: {exc.code.name}: "
            f"{escape(exc.message)}",
            soft_wrap=True,
        )
        raise typer.Exit(1) from None
    except TimeoutError as exc:
        err_console.print(
            f"[red]{escape(str(exc))}[/red] (the run goes on: "
            f"gemini-gateway datasets run {escape(dataset)})",
            soft_wrap=True,
        )
        raise typer.Exit(1) from None
    if finished is not None:
        print_run(finished)


def runs_table(runs: Sequence[Run]) -> Table:
    table = Table()
    for header in ("run", "model", "mode", "state", "started (UTC)"):
        table.add_column(header, no_wrap=True)
    for header in ("done", "failed", "same text", "similarity", "cost (USD)"):
        table.add_column(header, justify="right", no_wrap=True)
    decimals = cost_decimals(
        [r.summary.original_cost for r in runs] + [r.summary.rerun_cost for r in runs]
    )
    for run in runs:
        summary = run.summary
        table.add_row(
            Text(resource_id(run.name)),
            Text(run.model),
            _MODES.get(run.mode, ""),
            _STATES.get(run.state, ""),
            when(run.create_time),
            f"{summary.completed_count:,}/{summary.request_count:,}",
            f"{summary.failed_count:,}",
            f"{summary.same_text_count:,}",
            f"{summary.mean_text_similarity:.2f}",
            _pair(f"{summary.original_cost:.{decimals}f}", f"{summary.rerun_cost:.{decimals}f}"),
        )
    return table


@datasets_app.command("runs")
def list_runs(
    dataset: DatasetArg,
    output: Annotated[
        ShowFormat, typer.Option("--format", help="table, or json for scripts.")
    ] = ShowFormat.table,
    target: TargetOpt = DEFAULT_TARGET,
    token: TokenOpt = None,
    project: ProjectOpt = None,
) -> None:
    """A dataset's re-runs, newest first, with their totals."""
    name = _dataset(dataset, project)

    async def work(clients: Clients) -> list[Run]:
        return await clients.runs.list(name, timeout=CALL_TIMEOUT_S)

    found = run_command(target, token, project, work)
    if output is ShowFormat.json:
        print_json([message_json(run) for run in found])
    elif found:
        print_wide(console, runs_table(found))
        console.print(f"[dim]details: gemini-gateway datasets run {escape(dataset)} RUN[/dim]")
    else:
        console.print(f"No runs of {escape(name)}: start one with gemini-gateway datasets rerun")


@datasets_app.command("run")
def show_run(
    dataset: Annotated[
        str,
        typer.Argument(
            help="Dataset id or name; or a run's name `projects/P/datasets/D/runs/R` "
            "(`D/runs/R`) alone."
        ),
    ],
    run_id: Annotated[
        str | None, typer.Argument(metavar="[RUN]", help="Run id (default: the newest run).")
    ] = None,
    output: Annotated[
        ShowFormat, typer.Option("--format", help="table, or json for scripts.")
    ] = ShowFormat.table,
    target: TargetOpt = DEFAULT_TARGET,
    token: TokenOpt = None,
    project: ProjectOpt = None,
) -> None:
    """One run: each original answer beside the new one, and the totals."""
    if "/runs/" in dataset:
        if run_id is not None:
            raise usage_error("give a run's name alone, or a dataset and a run id")
        full_name, parent = checked_name(run_name, dataset, project), ""
    elif run_id is not None:
        full_name, parent = checked_name(run_name, f"{dataset}/runs/{run_id}", project), ""
    else:
        full_name, parent = "", _dataset(dataset, project)

    async def work(clients: Clients) -> Run | None:
        if parent:
            newest = await clients.runs.list(parent, limit=1, timeout=CALL_TIMEOUT_S)
            if not newest:
                return None
            return await clients.runs.get(newest[0].name, timeout=CALL_TIMEOUT_S)
        return await clients.runs.get(full_name, timeout=CALL_TIMEOUT_S)

    found = run_command(target, token, project, work)
    if found is None:
        err_console.print(
            f"[red]error[/red]: {escape(dataset)} has no runs: start one with "
            "gemini-gateway datasets rerun",
            soft_wrap=True,
        )
        raise typer.Exit(1)
    if output is ShowFormat.json:
        print_json(message_json(found))
    else:
        print_run(found)
