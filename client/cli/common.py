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


def rpc_error_exit(exc: grpc.aio.AioRpcError) -> typer.Exit:
    """Print a failed call's status and message (escaped: messages hold brackets)."""
    err_console.print(f"[red]{exc.code().name}[/red]: {escape(exc.details() or '')}")
    return typer.Exit(1)
