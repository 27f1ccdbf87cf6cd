"""What every `gemini-gateway` client command shares: consoles, options, error output."""

from __future__ import annotations

from typing import Annotated

import grpc
import typer
from rich.console import Console
from rich.markup import escape

console = Console()
err_console = Console(stderr=True)

TargetOpt = Annotated[str, typer.Option(envvar="GEMINI_GATEWAY_TARGET", help="Gateway host:port.")]
KeyOpt = Annotated[
    str | None, typer.Option(envvar="GEMINI_API_KEY", help="Sent as x-goog-api-key.")
]
TokenOpt = Annotated[
    str | None,
    typer.Option(
        envvar="GEMINI_GATEWAY_TOKEN", help="Caller token, sent as `authorization: Bearer`."
    ),
]

# Exit status of a command refused before anything is sent (click's usage-error status).
USAGE_ERROR = 2


def rpc_error_exit(exc: grpc.aio.AioRpcError) -> typer.Exit:
    """Print a failed call's status and message (escaped: messages hold brackets)."""
    # soft_wrap: a long message stays one line rather than being cut at the terminal width.
    message = f"[red]{exc.code().name}[/red]: {escape(exc.details() or '')}"
    err_console.print(message, soft_wrap=True)
    return typer.Exit(1)


def usage_error(message: str) -> typer.Exit:
    """Print one `error: ...` line for input refused before any call; exit status 2."""
    err_console.print(f"[red]error[/red]: {escape(message)}", soft_wrap=True)
    return typer.Exit(USAGE_ERROR)
