"""`python -m gemini_gateway.emulator --port 8081`: serve the emulated Gemini API."""

from __future__ import annotations

from typing import Annotated, Any

import typer
from pydantic import ValidationError

from gemini_gateway.emulator.runner import run_emulator
from gemini_gateway.emulator.settings import EmulatorSettings

PROG_NAME = "python -m gemini_gateway.emulator"

app = typer.Typer(add_completion=False)


@app.command()
def serve(
    host: Annotated[str, typer.Option(help="Address to bind.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="HTTP port (0 picks a free one).")] = 8081,
    chunk_count: Annotated[
        int | None, typer.Option(help="Chunks per streamed response.", show_default=False)
    ] = None,
    chunk_delay_ms: Annotated[
        float | None, typer.Option(help="Pause between streamed chunks.", show_default=False)
    ] = None,
    headers_delay_ms: Annotated[
        float | None, typer.Option(help="Pause before response headers.", show_default=False)
    ] = None,
    fault: Annotated[
        str | None,
        typer.Option(help="Fault list applied to every generate request.", show_default=False),
    ] = None,
    api_key: Annotated[
        str | None, typer.Option(help="Require this API key.", show_default=False)
    ] = None,
    tuning_seconds: Annotated[
        float | None, typer.Option(help="Duration of a tuning job.", show_default=False)
    ] = None,
    batch_seconds: Annotated[
        float | None, typer.Option(help="Duration of a batch.", show_default=False)
    ] = None,
    seed: Annotated[
        int | None, typer.Option(help="Seed for generated values.", show_default=False)
    ] = None,
    lenient_fields: Annotated[
        bool,
        typer.Option(
            "--lenient-fields",
            help="Ignore unknown request fields instead of answering 400 like Google.",
        ),
    ] = False,
) -> None:
    """Emulate Google's Gemini REST API locally, until SIGINT or SIGTERM."""
    # Flags override GEMINI_EMULATOR_* variables; unset flags leave those in force.
    overrides: dict[str, Any] = {
        "chunk_count": chunk_count,
        "chunk_delay_ms": chunk_delay_ms,
        "headers_delay_ms": headers_delay_ms,
        "fault": fault,
        "api_key": api_key,
        "tuning_seconds": tuning_seconds,
        "batch_seconds": batch_seconds,
        "seed": seed,
        "strict_fields": False if lenient_fields else None,
    }
    try:
        settings = EmulatorSettings(**{k: v for k, v in overrides.items() if v is not None})
    except ValidationError as exc:
        # A bad flag or GEMINI_EMULATOR_* value: a usage error, not a traceback.
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        typer.echo(f"Error: invalid emulator settings: {problems}", err=True)
        raise typer.Exit(2) from None
    run_emulator(host, port, settings)


def main(argv: list[str] | None = None) -> None:
    """Run the command line; `argv` defaults to the process arguments."""
    app(args=argv, prog_name=PROG_NAME)


if __name__ == "__main__":
    main()
