"""What every `gemini-gateway` command shares: consoles, options, error output."""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Annotated, Any, NoReturn

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


# --- errors of the whole command --------------------------------------------------------------

DEBUG_ENV = "GEMINI_GATEWAY_DEBUG"
_debug = False


def set_debug(enabled: bool) -> None:
    global _debug
    _debug = enabled


def debug_enabled() -> bool:
    """`--debug` was given, or GEMINI_GATEWAY_DEBUG is set to a true value."""
    flag = os.environ.get(DEBUG_ENV, "").strip().lower()
    return _debug or flag in ("1", "true", "yes", "on")


def print_error(lines: Sequence[str]) -> None:
    """`error: first line`, further lines indented; never wrapped, never read as markup."""
    err_console.print(f"[red]error[/red]: {escape(lines[0])}", soft_wrap=True)
    for line in lines[1:]:
        err_console.print(f"  {escape(line)}", soft_wrap=True, highlight=False)


def exit_on_error(exc: Exception) -> NoReturn:
    """End the command on an exception: its one or two lines, or a short unexpected one."""
    from gemini_gateway.server.startup import StartupError

    if isinstance(exc, StartupError):
        print_error(exc.lines)
        sys.exit(exc.exit_code)
    first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    print_error(
        [
            f"unexpected {type(exc).__name__}" + (f": {first}" if first else ""),
            f"`gemini-gateway --debug ...` (or {DEBUG_ENV}=1) shows the traceback",
        ]
    )
    sys.exit(1)


class GatewayApp(typer.Typer):
    """The top-level command: an error is one or two lines, a traceback only with --debug."""

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        try:
            return super().__call__(*args, **kwargs)
        except Exception as exc:
            if debug_enabled():
                raise
            exit_on_error(exc)


# --- image files (matplotlib) -----------------------------------------------------------------


def plot_install_hint(command: str) -> str:
    return (
        f"{command} needs matplotlib: pip install 'gemini-grpc-gateway[plot]' "
        "(from a checkout: pip install '.[plot]')"
    )


def load_pyplot(command: str) -> Any:
    """pyplot on the Agg backend; exit status 1 with the install command when it is missing."""
    try:
        import matplotlib
    except ImportError:
        print_error([plot_install_hint(command)])
        raise typer.Exit(1) from None
    # Agg draws to files only: works without a display (servers, CI, ssh sessions).
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def check_image_format(out: Path, option: str = "--out") -> None:
    """Refuse (exit status 2) a file name whose extension matplotlib cannot write."""
    from matplotlib.backend_bases import FigureCanvasBase

    supported = sorted(FigureCanvasBase.get_supported_filetypes())
    suffix = out.suffix.lower().lstrip(".")
    if suffix not in supported:
        problem = f"matplotlib cannot write '.{suffix}' files" if suffix else "no file extension"
        formats = ", ".join("." + name for name in supported)
        raise usage_error(f"{option} {out.name}: {problem}; use one of {formats}")
