"""`gemini-gateway tune ...`: tuning jobs and tuned models through a running gateway."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC
from itertools import pairwise
from pathlib import Path
from typing import Annotated, Any, Literal

import grpc
import typer
from rich.markup import escape
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
)
from rich.table import Table
from rich.text import Text

from gemini_gateway.cli.common import (
    KeyOpt,
    TargetOpt,
    check_image_format,
    console,
    err_console,
    load_pyplot,
    rpc_error_exit,
    usage_error,
)
from gemini_gateway.client.gateway_client import DEFAULT_TARGET, model_name
from gemini_gateway.client.tuning import (
    DEFAULT_BASE_MODEL,
    CreateTunedModelMetadata,
    TunedModel,
    TuningClient,
    TuningFailed,
    TuningOperation,
    build_tuned_model,
    load_examples,
    tuned_model_name,
)
from gemini_gateway.generated.google.ai.generativelanguage.v1beta import tuned_model_pb2

tune_app = typer.Typer(
    help="Tune models and manage tuned models through the gateway.", no_args_is_help=True
)
TimeoutOpt = Annotated[float | None, typer.Option(help="Give up waiting after this many seconds.")]
NameArg = Annotated[str, typer.Argument(help="Tuned model: `my-model` or `tunedModels/my-model`.")]


def _call(
    target: str, api_key: str | None, work: Callable[[TuningClient], Awaitable[None]]
) -> None:
    """Run `work` with a client, turning RPC errors and failed jobs into exit status 1."""

    async def main() -> None:
        async with grpc.aio.insecure_channel(target) as channel:
            await work(TuningClient(channel, api_key=api_key))

    try:
        asyncio.run(main())
    except grpc.aio.AioRpcError as exc:
        raise rpc_error_exit(exc) from None
    except TuningFailed as exc:
        err_console.print(
            f"[red]FAILED[/red] {exc.operation_name}: {exc.code.name}: {escape(exc.message)}"
        )
        raise typer.Exit(1) from None
    except (TimeoutError, LookupError) as exc:
        err_console.print(f"[red]{escape(str(exc))}[/red]")
        raise typer.Exit(1) from None


def _state(model: TunedModel) -> str:
    return TunedModel.State.Name(model.state)


def _time(model: TunedModel, field: Literal["create_time", "update_time"]) -> str:
    if not model.HasField(field):
        return ""
    stamp = getattr(model, field).ToDatetime(tzinfo=UTC)
    return stamp.strftime("%Y-%m-%d %H:%M:%S UTC")


def _source(model: TunedModel) -> str:
    if model.WhichOneof("source_model") == "tuned_model_source":
        return f"{model.tuned_model_source.tuned_model} ({model.tuned_model_source.base_model})"
    return model.base_model


def _describe(metadata: CreateTunedModelMetadata) -> str:
    if not metadata.snapshots:
        return "starting"
    last = metadata.snapshots[-1]
    return f"step {last.step} · epoch {last.epoch} · loss {last.mean_loss:.4f}"


async def _follow(operation: TuningOperation, timeout: float | None) -> TunedModel:
    """Show a progress bar fed by WatchOperation; returns the tuned model when done."""
    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
    )
    with Progress(*columns, console=console) as progress:
        total = operation.metadata.total_steps or None
        task = progress.add_task(_describe(operation.metadata), total=total)

        def show(metadata: CreateTunedModelMetadata) -> None:
            progress.update(
                task,
                total=metadata.total_steps or None,
                completed=metadata.completed_steps,
                description=_describe(metadata),
            )

        return await operation.result(timeout, on_progress=show)


def _print_done(model: TunedModel) -> None:
    console.print(f"{model.name}: [green]{_state(model)}[/green]")
    console.print(f"  try: gemini-gateway generate 'your prompt' --model {model.name}")


@tune_app.command()
def create(
    data: Annotated[Path, typer.Option(help="Examples: .jsonl or .csv (input, output).")],
    display_name: Annotated[str, typer.Option(help="At most 40 characters.")],
    model_id: Annotated[
        str | None, typer.Option("--id", help="Tuned model id (default: from the name).")
    ] = None,
    base_model: Annotated[str, typer.Option(help="Model to tune.")] = DEFAULT_BASE_MODEL,
    description: Annotated[str, typer.Option(help="Free text.")] = "",
    epochs: Annotated[int | None, typer.Option(help="Epoch count.")] = None,
    batch_size: Annotated[int | None, typer.Option(help="Examples per step.")] = None,
    learning_rate: Annotated[float | None, typer.Option(help="Learning rate.")] = None,
    wait: Annotated[bool, typer.Option(help="Follow the job until it ends.")] = False,
    timeout: TimeoutOpt = None,
    target: TargetOpt = DEFAULT_TARGET,
    api_key: KeyOpt = None,
) -> None:
    """Start a tuning job from a file of examples."""
    try:
        examples = load_examples(data)
    except (OSError, ValueError) as exc:
        raise typer.BadParameter(str(exc), param_hint="--data") from None
    tuned_model = build_tuned_model(
        examples,
        display_name,
        base_model=model_name(base_model),
        description=description,
        epochs=epochs,
        batch_size=batch_size,
        learning_rate=learning_rate,
    )

    async def work(client: TuningClient) -> None:
        operation = await client.create(tuned_model, model_id)
        console.print(f"operation:   {operation.name}")
        console.print(f"tuned model: {operation.tuned_model_name}")
        if wait:
            _print_done(await _follow(operation, timeout))

    _call(target, api_key, work)


@tune_app.command("list")
def list_models(
    filter: Annotated[str, typer.Option(help="Words of the display name or description.")] = "",
    page_size: Annotated[int, typer.Option(help="Models per ListTunedModels call.")] = 0,
    target: TargetOpt = DEFAULT_TARGET,
    api_key: KeyOpt = None,
) -> None:
    """Table of tuned models."""

    async def work(client: TuningClient) -> None:
        table = Table()
        # Names are what users copy into other commands: never cut them.
        table.add_column("name", no_wrap=True, min_width=len("tunedModels/") + 12)
        for header in ("display name", "state", "base model", "created"):
            table.add_column(header, overflow="fold")
        async for model in client.list(filter, page_size):
            cells = (
                model.name,
                model.display_name,
                _state(model),
                _source(model),
                _time(model, "create_time"),
            )
            # Text cells: display names may hold brackets that rich would read as markup.
            table.add_row(*map(Text, cells))
        console.print(table)

    _call(target, api_key, work)


def _hyperparameters(model: TunedModel) -> str:
    given = model.tuning_task.hyperparameters
    parts = []
    if given.HasField("epoch_count"):
        parts.append(f"epochs {given.epoch_count}")
    if given.HasField("batch_size"):
        parts.append(f"batch size {given.batch_size}")
    option = given.WhichOneof("learning_rate_option")
    if option is not None:
        parts.append(f"{option.replace('_', ' ')} {getattr(given, option):g}")
    return ", ".join(parts)


@tune_app.command()
def get(name: NameArg, target: TargetOpt = DEFAULT_TARGET, api_key: KeyOpt = None) -> None:
    """Details of one tuned model."""

    async def work(client: TuningClient) -> None:
        model = await client.get(name)
        snapshots = model.tuning_task.snapshots
        rows: list[tuple[str, Any]] = [
            ("name", model.name),
            ("display name", model.display_name),
            ("description", model.description),
            ("state", _state(model)),
            ("tuned from", _source(model)),
            ("created", _time(model, "create_time")),
            ("updated", _time(model, "update_time")),
            ("temperature", f"{model.temperature:g}" if model.HasField("temperature") else ""),
            ("top_p", f"{model.top_p:g}" if model.HasField("top_p") else ""),
            ("top_k", model.top_k if model.HasField("top_k") else ""),
            ("hyperparameters", _hyperparameters(model)),
            ("snapshots", len(snapshots)),
            ("last loss", f"{snapshots[-1].mean_loss:.4f}" if snapshots else ""),
        ]
        table = Table.grid(padding=(0, 2))
        table.add_column(style="bold")
        table.add_column()
        for label, value in rows:
            table.add_row(label, Text(str(value)))
        console.print(table)

    _call(target, api_key, work)


@tune_app.command()
def update(
    name: NameArg,
    display_name: Annotated[str | None, typer.Option(help="New display name.")] = None,
    description: Annotated[str | None, typer.Option(help="New description.")] = None,
    temperature: Annotated[float | None, typer.Option(help="0 to 2.")] = None,
    top_p: Annotated[float | None, typer.Option(help="0 to 1.")] = None,
    top_k: Annotated[int | None, typer.Option(help="0 or more.")] = None,
    target: TargetOpt = DEFAULT_TARGET,
    api_key: KeyOpt = None,
) -> None:
    """Change the fields given; the update mask names exactly those."""
    fields = {
        "display_name": display_name,
        "description": description,
        "temperature": temperature,
        "top_p": top_p,
        "top_k": top_k,
    }
    if all(value is None for value in fields.values()):
        raise typer.BadParameter(
            "nothing to update: give --display-name, --description, --temperature, "
            "--top-p or --top-k"
        )

    async def work(client: TuningClient) -> None:
        model = await client.update(name, **fields)
        changed = ", ".join(key for key, value in fields.items() if value is not None)
        console.print(f"{model.name}: updated {changed}")

    _call(target, api_key, work)


@tune_app.command()
def delete(name: NameArg, target: TargetOpt = DEFAULT_TARGET, api_key: KeyOpt = None) -> None:
    """Delete a tuned model."""

    async def work(client: TuningClient) -> None:
        await client.delete(name)
        console.print(f"deleted {tuned_model_name(name)}")

    _call(target, api_key, work)


@tune_app.command("wait")
def wait_for(
    operation_name: Annotated[
        str,
        typer.Argument(
            help="`tunedModels/{id}/operations/{op}`, or a tuned model for its operation."
        ),
    ],
    timeout: TimeoutOpt = None,
    target: TargetOpt = DEFAULT_TARGET,
    api_key: KeyOpt = None,
) -> None:
    """Follow a tuning job with a progress bar until it ends."""

    async def work(client: TuningClient) -> None:
        operation = await client.operation(operation_name)
        _print_done(await _follow(operation, timeout))

    _call(target, api_key, work)


def epoch_starts(snapshots: Sequence[tuned_model_pb2.TuningSnapshot]) -> list[tuple[int, int]]:
    """(step, epoch) of each snapshot that begins a new epoch, after the first one."""
    return [
        (current.step, current.epoch)
        for previous, current in pairwise(snapshots)
        if current.epoch != previous.epoch
    ]


def plot_loss(model: TunedModel, out: Path) -> None:
    """Mean loss per step, with a dashed line where each new epoch starts."""
    plt = load_pyplot("tune plot")
    snapshots = model.tuning_task.snapshots
    figure, axes = plt.subplots(figsize=(8, 4.5))
    try:
        axes.plot(
            [s.step for s in snapshots], [s.mean_loss for s in snapshots], marker=".", label="loss"
        )
        for index, (step, epoch) in enumerate(epoch_starts(snapshots)):
            axes.axvline(
                step - 0.5,
                color="grey",
                linestyle="--",
                linewidth=0.8,
                label="epoch start" if index == 0 else None,
            )
            axes.annotate(
                f"epoch {epoch}",
                (step - 0.5, 1),
                xycoords=("data", "axes fraction"),
                xytext=(3, -12),
                textcoords="offset points",
                fontsize=8,
                color="grey",
            )
        axes.set_title(model.display_name or model.name)
        axes.set_xlabel("step")
        axes.set_ylabel("mean loss")
        axes.grid(alpha=0.3)
        axes.legend()
        figure.tight_layout()
        figure.savefig(out)
    finally:
        plt.close(figure)


@tune_app.command()
def plot(
    name: NameArg,
    out: Annotated[Path, typer.Option(help="Image file to write (.png, .svg, .pdf, ...).")],
    target: TargetOpt = DEFAULT_TARGET,
    api_key: KeyOpt = None,
) -> None:
    """Plot the mean loss of each tuning step."""
    load_pyplot("tune plot")  # both refusals come before any call
    check_image_format(out)

    async def work(client: TuningClient) -> None:
        model = await client.get(name)
        if not model.tuning_task.snapshots:
            err_console.print(f"[red]{model.name} has no tuning snapshots yet[/red]")
            raise typer.Exit(1)
        try:
            plot_loss(model, out)
        except OSError as exc:
            raise usage_error(f"--out {out}: {exc.strerror or exc}") from None
        console.print(f"wrote {escape(str(out))} ({len(model.tuning_task.snapshots)} steps)")

    _call(target, api_key, work)
