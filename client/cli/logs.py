"""`gemini-gateway logs ...`: the request logs of a project, from a running gateway.

`logs list` prints the newest calls (or follows new ones), `logs show` one exchange with its
turns in order, `logs delete` removes logs, `logs settings` reads or changes logging.
The plumbing shared with `gemini-gateway datasets` (one channel for every client, options,
tables of logs) lives here too.
"""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import Callable, Coroutine, Iterable, Sequence
from datetime import UTC, timedelta
from enum import StrEnum
from typing import Annotated, Any, TypeVar

import grpc
import typer
from google.protobuf import json_format
from google.protobuf.duration_pb2 import Duration
from google.protobuf.message import Message
from google.protobuf.timestamp_pb2 import Timestamp
from rich.console import Group, RenderableType
from rich.panel import Panel
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
from gemini_gateway.cli.usage import _print_wide as print_wide
from gemini_gateway.client.datasets import DatasetClient
from gemini_gateway.client.gateway_client import DEFAULT_TARGET
from gemini_gateway.client.logs import (
    DURATION_HELP,
    AtLimit,
    Log,
    LogClient,
    LoggingSettings,
    LogPage,
    log_name,
    parse_duration,
)
from gemini_gateway.client.runs import RunClient
from gemini_gateway.generated.gemini.gateway.v1 import logs_pb2
from gemini_gateway.generated.google.ai.generativelanguage.v1beta import (
    content_pb2,
    generative_service_pb2,
    safety_pb2,
)

logs_app = typer.Typer(
    help="Request logs of generate calls: list, follow, show, delete; logging settings.",
    no_args_is_help=True,
)

T = TypeVar("T")
CALL_TIMEOUT_S = 60.0
PROMPT_CHARS = 48  # prompt preview shown in a table row

ProjectOpt = Annotated[
    str | None, typer.Option(help="Project to work on (default: the caller's own).")
]
FilterOpt = Annotated[
    str,
    typer.Option(
        help='AIP-160 filter, e.g. \'model = "models/gemini-2.5-pro" AND labels.team = "search"\'.'
    ),
]


class ListFormat(StrEnum):
    table = "table"
    json = "json"
    jsonl = "jsonl"


class ShowFormat(StrEnum):
    table = "table"
    json = "json"


class AtLimitChoice(StrEnum):
    stop = "stop"
    evict = "evict"


# --- one channel, every client ------------------------------------------------------------


class Clients:
    """The clients of one command, sharing one channel, token and project."""

    def __init__(self, channel: grpc.aio.Channel, token: str | None, project: str | None) -> None:
        self.channel = channel
        self.project = project
        self.logs = LogClient(channel=channel, token=token, project=project)
        self.datasets = DatasetClient(channel=channel, token=token, project=project)
        self.runs = RunClient(channel=channel, token=token, project=project)


def run_command(
    target: str,
    token: str | None,
    project: str | None,
    work: Callable[[Clients], Coroutine[Any, Any, T]],
) -> T:
    """`work` with clients on one channel; a failed call is one status line and exit 1."""

    async def main() -> T:
        async with grpc.aio.insecure_channel(target) as channel:
            return await work(Clients(channel, token, project))

    try:
        return asyncio.run(main())
    except grpc.aio.AioRpcError as exc:
        raise rpc_error_exit(exc) from None


def checked_name(parse: Callable[[str, str | None], str], value: str, project: str | None) -> str:
    """A resource name from an id or a name; a bad one is a usage error (exit status 2)."""
    try:
        return parse(value, project)
    except ValueError as exc:
        raise usage_error(str(exc)) from None


def split_ids(values: Iterable[str] | None) -> list[str]:
    """Ids given as `a,b c` or as repeated options, in order, without repeats."""
    found: list[str] = []
    for value in values or ():
        for item in value.replace(",", " ").split():
            if item not in found:
                found.append(item)
    return found


def message_json(message: Message) -> dict[str, Any]:
    """A message as proto3 JSON (camelCase names), ready for json.dumps."""
    return json_format.MessageToDict(message)


def print_json(data: Any) -> None:
    sys.stdout.write(json.dumps(data, indent=2, ensure_ascii=False) + "\n")


# --- formatting ---------------------------------------------------------------------------


def when(stamp: Timestamp) -> str:
    """UTC, to the second; empty for an unset time."""
    if not stamp.seconds and not stamp.nanos:
        return ""
    return stamp.ToDatetime(tzinfo=UTC).strftime("%Y-%m-%d %H:%M:%S")


def seconds_text(seconds: float) -> str:
    """`845 ms` under ten seconds, `12.3 s` above."""
    if seconds < 10:
        return f"{seconds * 1000:,.0f} ms"
    return f"{seconds:,.1f} s"


def duration_text(duration: Duration, present: bool = True) -> str:
    """A latency as `845 ms` or `12.3 s`; empty when the field is unset."""
    if not present:
        return ""
    return seconds_text(duration.ToTimedelta().total_seconds())


def span_text(span: timedelta) -> str:
    """A retention period in the largest whole unit: `55 days`, `36 hours`, `90 minutes`."""
    seconds = span.total_seconds()
    for unit, size in (("day", 86400), ("hour", 3600), ("minute", 60)):
        if seconds >= size and seconds % size == 0:
            count = int(seconds // size)
            return f"{count} {unit}{'s' if count != 1 else ''}"
    return f"{seconds:g} seconds"


def status_name(code: int) -> str:
    """The gRPC code name of a google.rpc.Status code (`OK`, `RESOURCE_EXHAUSTED`, ...)."""
    for status in grpc.StatusCode:
        if status.value[0] == code:
            return str(status.name)
    return f"code {code}"


def status_text(code: int) -> Text:
    return Text(status_name(code), style="green" if code == 0 else "red")


def labels_text(labels: Any) -> str:
    return ", ".join(f"{key}={labels[key]}" for key in sorted(labels))


def cut(text: str, chars: int) -> str:
    """One line of at most `chars` characters (newlines folded, an ellipsis when cut)."""
    flat = " ".join(text.split())
    return flat if len(flat) <= chars else flat[: chars - 1] + "…"


def log_id(log: Log) -> str:
    return log.name.rpartition("/")[2]


# --- the logs table -----------------------------------------------------------------------

LOG_COLUMNS = ("time (UTC)", "id", "model", "method", "status", "labels", "tokens", "latency")


def log_cells(log: Log) -> list[Text]:
    cells = [
        Text(when(log.create_time)),
        Text(log_id(log)),
        Text(log.model),
        Text(log.method),
        status_text(log.status.code),
        Text(labels_text(log.labels)),
        Text(f"{log.tokens.total:,}"),
        Text(duration_text(log.latency, log.HasField("latency"))),
        Text(cut(log.prompt_preview, PROMPT_CHARS)),
    ]
    if log.incomplete:
        cells[3].append(" (incomplete)", style="yellow")
    return cells


def logs_table(logs: Sequence[Log]) -> Table:
    """One row per log, newest first as listed."""
    table = Table()
    for header in LOG_COLUMNS[:5]:
        table.add_column(header, no_wrap=True)
    table.add_column("labels", overflow="fold")
    for header in LOG_COLUMNS[6:]:
        table.add_column(header, justify="right", no_wrap=True)
    table.add_column("prompt", overflow="fold")
    for log in logs:
        table.add_row(*log_cells(log))
    return table


def log_line(log: Log) -> Text:
    """One followed log on one line: the table's cells, separated by two spaces."""
    return Text("  ").join(cell for cell in log_cells(log) if cell.plain)


def print_notice(page: LogPage, printer: Any) -> None:
    if page.notice:
        printer.print(Text(page.notice, style="yellow"), soft_wrap=True)
    elif page.limit_reached:
        printer.print(
            Text(
                "The project is at its log limit: new calls are not logged until logs are "
                "deleted (gemini-gateway logs delete).",
                style="yellow",
            ),
            soft_wrap=True,
        )


# --- logs list ----------------------------------------------------------------------------


async def _follow(
    clients: Clients,
    filter: str,
    limit: int,
    page_size: int,
    output: ListFormat,
) -> None:
    """Print the current logs, then each new one as it is written, until Ctrl-C."""
    # Subscribe first, then list: a log written in between arrives twice and shows once.
    async with clients.logs.tail(filter=filter) as tail:
        await tail.started()
        page = await clients.logs.list(
            filter=filter, limit=limit, page_size=page_size, timeout=CALL_TIMEOUT_S
        )
        shown = {log.name for log in page.logs}
        if output is ListFormat.jsonl:
            for log in reversed(page.logs):
                _print_jsonl(log)
            print_notice(page, err_console)
        else:
            if page.logs:
                print_wide(console, logs_table(page.logs))
            print_notice(page, console)
            console.print(
                Text("Following new logs (Ctrl-C to stop)...", style="dim"), soft_wrap=True
            )
        async for log in tail:
            if log.name in shown:
                continue
            shown.add(log.name)
            if output is ListFormat.jsonl:
                _print_jsonl(log)
            else:
                console.print(log_line(log), soft_wrap=True)


def _print_jsonl(log: Log) -> None:
    sys.stdout.write(json.dumps(message_json(log), ensure_ascii=False) + "\n")
    sys.stdout.flush()


async def _logging_hint(clients: Clients) -> str:
    settings = await clients.logs.settings(timeout=CALL_TIMEOUT_S)
    if settings.HasField("enabled") and settings.enabled:
        return "No logs yet."
    return "No logs: logging is off for this project (gemini-gateway logs settings --enable)."


@logs_app.command("list")
def list_logs(
    filter: FilterOpt = "",
    limit: Annotated[int, typer.Option(min=1, help="Most logs shown (newest first).")] = 50,
    page_size: Annotated[int, typer.Option(min=0, help="Logs per ListLogs call.")] = 0,
    follow: Annotated[
        bool, typer.Option("--follow", "-f", help="Then print new logs as they are written.")
    ] = False,
    output: Annotated[
        ListFormat, typer.Option("--format", help="table, or json / jsonl for scripts.")
    ] = ListFormat.table,
    target: TargetOpt = DEFAULT_TARGET,
    token: TokenOpt = None,
    project: ProjectOpt = None,
) -> None:
    """The project's logs, newest first: time, id, model, method, status, tokens, prompt."""
    if follow:
        if output is ListFormat.json:
            raise usage_error("--follow prints one log at a time: use --format table or jsonl")

        async def tail(clients: Clients) -> None:
            await _follow(clients, filter, limit, page_size, output)

        try:
            run_command(target, token, project, tail)
        except KeyboardInterrupt:
            pass  # Ctrl-C is how a follow ends
        return

    async def work(clients: Clients) -> tuple[LogPage, str]:
        page = await clients.logs.list(
            filter=filter, limit=limit, page_size=page_size, timeout=CALL_TIMEOUT_S
        )
        hint = "" if page.logs or filter else await _logging_hint(clients)
        return page, hint

    page, hint = run_command(target, token, project, work)
    if output is ListFormat.json:
        print_json(
            {
                "logs": [message_json(log) for log in page.logs],
                "limitReached": page.limit_reached,
                "notice": page.notice,
            }
        )
        print_notice(page, err_console)
        return
    if output is ListFormat.jsonl:
        for log in page.logs:
            _print_jsonl(log)
        print_notice(page, err_console)
        return
    if page.logs:
        print_wide(console, logs_table(page.logs))
        more = " (more with --limit)" if page.next_page_token else ""
        count = len(page.logs)
        console.print(f"[dim]{count:,} log{'' if count == 1 else 's'}{more}[/dim]")
    else:
        console.print(hint or "No logs match the filter.", soft_wrap=True)
    print_notice(page, console)


# --- logs show ----------------------------------------------------------------------------


def _json_text(message: Message) -> str:
    return json.dumps(json_format.MessageToDict(message), ensure_ascii=False)


def part_text(part: content_pb2.Part) -> Text:
    """One part of a turn, readable: text as is, calls and data as one labelled line."""
    kind = part.WhichOneof("data")
    if kind == "text":
        if part.thought:
            return Text(f"(thought) {part.text}", style="dim italic")
        return Text(part.text)
    if kind == "function_call":
        call = part.function_call
        args = _json_text(call.args) if call.HasField("args") else "{}"
        return Text(f"→ call {call.name}({args})", style="cyan")
    if kind == "function_response":
        answer = part.function_response
        return Text(f"← {answer.name} returned {_json_text(answer.response)}", style="cyan")
    if kind == "inline_data":
        blob = part.inline_data
        return Text(f"[inline {blob.mime_type}, {len(blob.data):,} bytes]", style="magenta")
    if kind == "file_data":
        data = part.file_data
        kind_text = f" ({data.mime_type})" if data.mime_type else ""
        return Text(f"[file {data.file_uri}{kind_text}]", style="magenta")
    if kind == "executable_code":
        return Text(f"code:\n{part.executable_code.code}", style="cyan")
    if kind == "code_execution_result":
        result = part.code_execution_result
        outcome = content_pb2.CodeExecutionResult.Outcome.Name(result.outcome)
        return Text(f"code result ({outcome}):\n{result.output}", style="cyan")
    return Text("(empty part)", style="dim")


def content_body(content: content_pb2.Content) -> RenderableType:
    parts = [part_text(part) for part in content.parts]
    return Group(*parts) if parts else Text("(no parts)", style="dim")


def _facts(rows: Sequence[tuple[str, str | Text]]) -> Table:
    grid = Table.grid(padding=(0, 2))
    grid.add_column(style="bold", no_wrap=True)
    grid.add_column(overflow="fold")
    for label, value in rows:
        shown = value if isinstance(value, Text) else Text(value)
        if shown.plain:  # empty facts are left out
            grid.add_row(label, shown)
    return grid


def tokens_text(tokens: Any) -> str:
    """`prompt 12 · output 30 · thinking 95 · total 137` (zero parts left out)."""
    parts = [("prompt", tokens.prompt), ("output", tokens.candidates)]
    parts += [("cached", tokens.cached), ("thinking", tokens.thoughts)]
    parts += [("tool use", tokens.tool_use)]
    shown = [f"{name} {count:,}" for name, count in parts if count or name == "prompt"]
    return " · ".join([*shown, f"total {tokens.total:,}"])


def timing_text(log: Log) -> str:
    parts = []
    if log.HasField("latency"):
        parts.append(f"latency {duration_text(log.latency)}")
    if log.HasField("time_to_first_chunk"):
        parts.append(f"first chunk {duration_text(log.time_to_first_chunk)}")
    if log.chunk_offsets:
        parts.append(f"{len(log.chunk_offsets)} chunks")
    return " · ".join(parts)


def log_facts(log: Log) -> Table:
    status = status_text(log.status.code)
    if log.status.message:
        status.append(f": {log.status.message}")
    method = f"{log.method} ({log.api_version})" if log.api_version else log.method
    if log.incomplete:
        method += ": incomplete (the stream ended early)"
    return _facts(
        [
            ("log", log_id(log)),
            ("project", log.name.split("/")[1] if log.name.count("/") == 3 else ""),
            ("time", f"{when(log.create_time)} UTC"),
            ("model", log.model),
            ("method", method),
            ("caller", log.caller),
            ("status", status),
            ("labels", labels_text(log.labels)),
            ("tokens", tokens_text(log.tokens)),
            ("timing", timing_text(log)),
            ("finish", log.finish_reason),
            ("response id", log.response_id),
            ("datasets", ", ".join(log.datasets)),
        ]
    )


def _safety_text(ratings: Iterable[safety_pb2.SafetyRating]) -> str:
    shown = []
    for rating in ratings:
        category = safety_pb2.HarmCategory.Name(rating.category).removeprefix("HARM_CATEGORY_")
        probability = safety_pb2.SafetyRating.HarmProbability.Name(rating.probability)
        shown.append(f"{category} {probability}" + (" (blocked)" if rating.blocked else ""))
    return ", ".join(shown)


def titled(body: RenderableType, title: str) -> Panel:
    return Panel(body, title=title, title_align="left")


def request_panels(request: generative_service_pb2.GenerateContentRequest) -> list[Panel]:
    """System instruction, tools, config, then each turn in order with its role."""
    panels = []
    if request.HasField("system_instruction"):
        panels.append(titled(content_body(request.system_instruction), "system instruction"))
    if request.tools:
        shown = []
        for tool in request.tools:
            shown += [f"function {item.name}" for item in tool.function_declarations]
            shown += [f.name for f, _ in tool.ListFields() if f.name != "function_declarations"]
        panels.append(titled(Text(", ".join(shown)), "tools"))
    if request.HasField("generation_config"):
        panels.append(titled(Text(_json_text(request.generation_config)), "generation config"))
    for number, turn in enumerate(request.contents, start=1):
        panels.append(titled(content_body(turn), f"turn {number} · {turn.role or 'user'}"))
    return panels


def response_panels(response: generative_service_pb2.GenerateContentResponse) -> list[Panel]:
    """Each candidate: its parts, then its finish reason and safety ratings."""
    panels = []
    for number, candidate in enumerate(response.candidates, start=1):
        reason = generative_service_pb2.Candidate.FinishReason.Name(candidate.finish_reason)
        footer = _facts(
            [
                ("finish", reason if candidate.finish_reason else ""),
                ("safety", _safety_text(candidate.safety_ratings)),
            ]
        )
        title = f"response · candidate {number}" if len(response.candidates) > 1 else "response"
        if candidate.content.role:
            title += f" · {candidate.content.role}"
        panels.append(titled(Group(content_body(candidate.content), Text(""), footer), title))
    feedback = response.prompt_feedback
    if feedback.block_reason or feedback.safety_ratings:
        block = generative_service_pb2.GenerateContentResponse.PromptFeedback.BlockReason.Name(
            feedback.block_reason
        )
        rows = [
            ("blocked", block if feedback.block_reason else ""),
            ("safety", _safety_text(feedback.safety_ratings)),
        ]
        panels.append(titled(_facts(rows), "prompt feedback"))
    if not panels:
        panels.append(titled(Text("(no response)", style="dim"), "response"))
    return panels


@logs_app.command()
def show(
    log: Annotated[
        str | None,
        typer.Argument(help="Log id or name projects/P/logs/ID (default: the newest log)."),
    ] = None,
    filter: Annotated[
        str, typer.Option(help="Without a log id: the newest log matching this filter.")
    ] = "",
    raw: Annotated[bool, typer.Option("--raw", help="Print the log as JSON.")] = False,
    target: TargetOpt = DEFAULT_TARGET,
    token: TokenOpt = None,
    project: ProjectOpt = None,
) -> None:
    """One exchange: the request's turns in order, the response, tokens and timing."""
    if log is not None and filter:
        raise usage_error("give a log id or --filter, not both")
    name = checked_name(log_name, log, project) if log is not None else None

    async def work(clients: Clients) -> Log | None:
        if name is not None:
            return await clients.logs.get(name, timeout=CALL_TIMEOUT_S)
        page = await clients.logs.list_page(
            filter=filter, page_size=1, full=True, timeout=CALL_TIMEOUT_S
        )
        return page.logs[0] if page.logs else None

    found = run_command(target, token, project, work)
    if found is None:
        err_console.print(
            "[red]error[/red]: " + ("no log matches the filter" if filter else "no logs yet"),
            soft_wrap=True,
        )
        raise typer.Exit(1)
    if raw:
        print_json(message_json(found))
        return
    console.print(log_facts(found))
    for panel in request_panels(found.request):
        console.print(panel)
    if found.status.code and not found.response.candidates:
        return  # a failed call has no response: the status above says why
    for panel in response_panels(found.response):
        console.print(panel)


# --- logs delete --------------------------------------------------------------------------


@logs_app.command()
def delete(
    logs: Annotated[
        list[str] | None, typer.Argument(help="Log ids or names (several allowed).")
    ] = None,
    filter: Annotated[str, typer.Option(help="Delete every log matching this filter.")] = "",
    everything: Annotated[
        bool, typer.Option("--all", help="Delete every log of the project.")
    ] = False,
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask for confirmation.")] = False,
    target: TargetOpt = DEFAULT_TARGET,
    token: TokenOpt = None,
    project: ProjectOpt = None,
) -> None:
    """Delete logs by id, by filter, or all of them (logs in datasets leave them too)."""
    ids = split_ids(logs)
    if sum([bool(ids), bool(filter), everything]) != 1:
        raise usage_error("give log ids, --filter FILTER or --all (exactly one of them)")
    names = [checked_name(log_name, log, project) for log in ids]
    if not yes:
        if names:
            what = f"{len(names)} log{'s' if len(names) != 1 else ''}"
        elif filter:
            what = f"every log matching {filter}"
        else:
            what = "every log of the project"
        typer.confirm(f"Delete {what}?", abort=True)

    async def work(clients: Clients) -> int:
        return await clients.logs.delete(
            names, filter=filter, everything=everything, timeout=CALL_TIMEOUT_S
        )

    count = run_command(target, token, project, work)
    console.print(f"deleted {count:,} log{'s' if count != 1 else ''}")


# --- logs settings ------------------------------------------------------------------------

_AT_LIMIT_CHOICES: dict[AtLimitChoice, AtLimit] = {
    AtLimitChoice.stop: "stop_logging",
    AtLimitChoice.evict: "evict_oldest",
}
_AT_LIMIT_TEXT = {
    logs_pb2.AT_LIMIT_POLICY_UNSPECIFIED: "the gateway's default",
    logs_pb2.STOP_LOGGING: "stop logging (new calls are not logged)",
    logs_pb2.EVICT_OLDEST: "evict the oldest logs that are in no dataset",
}


def settings_table(settings: LoggingSettings) -> Table:
    enabled = settings.HasField("enabled") and settings.enabled
    limit = f"{settings.max_logs:,}" if settings.HasField("max_logs") else ""
    retention = (
        span_text(settings.retention.ToTimedelta()) if settings.HasField("retention") else ""
    )
    reached = Text("yes", style="yellow") if settings.limit_reached else Text("no")
    changed = when(settings.update_time)
    return _facts(
        [
            ("settings", settings.name),
            ("logging", Text("enabled", style="green") if enabled else Text("disabled")),
            ("max logs", limit),
            ("retention", retention),
            ("at limit", _AT_LIMIT_TEXT.get(settings.at_limit, "")),
            ("logs kept", f"{settings.log_count:,}"),
            ("limit reached", reached),
            ("skipped at limit", f"{settings.skipped_at_limit_count:,}"),
            ("skipped media", f"{settings.skipped_media_count:,}"),
            ("evicted", f"{settings.evicted_count:,}"),
            ("expired", f"{settings.expired_count:,}"),
            ("changed", f"{changed} UTC" if changed else "never (configured defaults)"),
        ]
    )


@logs_app.command()
def settings(
    enable: Annotated[
        bool | None, typer.Option("--enable/--disable", help="Switch logging on or off.")
    ] = None,
    max_logs: Annotated[int | None, typer.Option(min=1, help="Most logs kept.")] = None,
    retention: Annotated[
        str | None,
        typer.Option(
            help=f"Logs older than this are deleted unless in a dataset: {DURATION_HELP}."
        ),
    ] = None,
    at_limit: Annotated[
        AtLimitChoice | None,
        typer.Option(help="At the limit: stop logging, or evict the oldest logs."),
    ] = None,
    output: Annotated[
        ShowFormat, typer.Option("--format", help="table, or json for scripts.")
    ] = ShowFormat.table,
    target: TargetOpt = DEFAULT_TARGET,
    token: TokenOpt = None,
    project: ProjectOpt = None,
) -> None:
    """Show the project's logging settings and state; change those given."""
    keep_for: timedelta | None = None
    if retention is not None:
        try:
            keep_for = parse_duration(retention)
        except ValueError as exc:
            raise usage_error(f"--retention: {exc}") from None
    changes = {
        "enabled": enable,
        "max_logs": max_logs,
        "retention": keep_for,
        "at_limit": _AT_LIMIT_CHOICES[at_limit] if at_limit else None,
    }
    changed = [key for key, value in changes.items() if value is not None]

    async def work(clients: Clients) -> LoggingSettings:
        if changed:
            return await clients.logs.update_settings(**changes, timeout=CALL_TIMEOUT_S)  # type: ignore[arg-type]
        return await clients.logs.settings(timeout=CALL_TIMEOUT_S)

    found = run_command(target, token, project, work)
    if output is ShowFormat.json:
        print_json(message_json(found))
        return
    if changed:
        console.print(f"updated {', '.join(changed)}")
    console.print(settings_table(found))
    if found.notice:
        console.print(Text(found.notice, style="yellow"), soft_wrap=True)
