"""The `gemini-gateway` command: run the gateway or the emulator, and call a gateway."""

from __future__ import annotations

import asyncio
import sys
import time
from pathlib import Path
from typing import Annotated, Any

import grpc
import typer

from gemini_gateway.cli.common import (
    DEBUG_ENV,
    GatewayApp,
    KeyOpt,
    TargetOpt,
    TokenOpt,
    console,
    err_console,
    rpc_error_exit,
    set_debug,
    usage_error,
)
from gemini_gateway.cli.datasets import datasets_app
from gemini_gateway.cli.logs import logs_app
from gemini_gateway.cli.tune import tune_app
from gemini_gateway.cli.usage import usage_app
from gemini_gateway.client.gateway_client import (
    DEFAULT_MODEL,
    DEFAULT_TARGET,
    GatewayClient,
    response_text,
    text_request,
)
from gemini_gateway.server.labels import SHOWN_CHARS, parse_label_arg, parse_label_args

app = GatewayApp(
    help="Gemini gRPC gateway: serve Google's Gemini API over gRPC.", no_args_is_help=True
)
app.add_typer(tune_app, name="tune")
app.add_typer(usage_app, name="usage")
app.add_typer(logs_app, name="logs")
app.add_typer(datasets_app, name="datasets")


@app.callback()
def main(
    debug: Annotated[
        bool,
        typer.Option(
            "--debug",
            envvar=DEBUG_ENV,
            help=f"Show the traceback of an error (also {DEBUG_ENV}=1).",
        ),
    ] = False,
) -> None:
    """Gemini gRPC gateway: serve Google's Gemini API over gRPC."""
    set_debug(debug)


# Settings given by `serve` options, and the option that gives each (for error messages).
SERVE_OPTIONS = {
    "host": "--host",
    "port": "--port",
    "api_key": "--api-key",
    "pass_through_api_key": "--pass-through-api-key",
    "http_client": "--http-client",
    "tls_cert_file": "--tls-cert",
    "tls_key_file": "--tls-key",
    "tls_client_ca_file": "--tls-client-ca",
    "log_level": "--log-level",
    "log_format": "--log-format",
    "metrics_port": "--metrics-port",
    "console_port": "--console-port",
    "upstream_url": "--upstream",
    "workers": "--workers",
    "allow_unauthenticated": "--allow-unauthenticated",
}


def _run(coro: object) -> None:
    try:
        asyncio.run(coro)  # type: ignore[arg-type]
    except grpc.aio.AioRpcError as exc:
        raise rpc_error_exit(exc) from None


@app.command()
def serve(
    upstream: Annotated[
        str | None, typer.Option(help="Base URL of a Gemini REST API (or emulator).")
    ] = None,
    emulator: Annotated[
        bool, typer.Option("--emulator", help="Embedded emulator on a loopback port.")
    ] = False,
    vertex: Annotated[
        bool, typer.Option("--vertex", help="Vertex AI with Google credentials.")
    ] = False,
    host: Annotated[str | None, typer.Option(help="Address to bind.")] = None,
    port: Annotated[int | None, typer.Option(help="gRPC port.")] = None,
    api_key: Annotated[
        str | None, typer.Option(envvar="GEMINI_API_KEY", help="Upstream API key.")
    ] = None,
    pass_through_api_key: Annotated[
        bool | None, typer.Option(help="Forward callers' x-goog-api-key.")
    ] = None,
    http_client: Annotated[str | None, typer.Option(help="aiohttp or httpx.")] = None,
    tls_cert: Annotated[
        Path | None, typer.Option(help="PEM certificate chain (enables TLS).")
    ] = None,
    tls_key: Annotated[Path | None, typer.Option(help="PEM private key.")] = None,
    tls_client_ca: Annotated[
        Path | None, typer.Option(help="CA bundle: require client certs.")
    ] = None,
    log_level: Annotated[str | None, typer.Option(help="DEBUG, INFO, WARNING...")] = None,
    log_format: Annotated[
        str | None, typer.Option(help="text, or json: one object per line with a request id.")
    ] = None,
    metrics_port: Annotated[int | None, typer.Option(help="Prometheus /metrics port.")] = None,
    console_port: Annotated[
        int | None,
        typer.Option(
            help="Web console and REST/JSON face port (default: 8080 in development on "
            "loopback, else off)."
        ),
    ] = None,
    workers: Annotated[
        int | None, typer.Option(help="Processes sharing the port (0: one per core).")
    ] = None,
    allow_unauthenticated: Annotated[
        bool | None,
        typer.Option(
            "--allow-unauthenticated",
            help="Serve a non-loopback --host with no callers configured (anyone may call).",
        ),
    ] = None,
) -> None:
    """Start the gateway (default: embedded emulator upstream, no key needed)."""
    from gemini_gateway.server.app import serve as serve_gateway
    from gemini_gateway.server.startup import load_settings
    from gemini_gateway.server.workers import resolve_workers, supervise

    overrides: dict[str, Any] = {
        "host": host,
        "port": port,
        "api_key": api_key,
        "pass_through_api_key": pass_through_api_key,
        "http_client": http_client,
        "tls_cert_file": tls_cert,
        "tls_key_file": tls_key,
        "tls_client_ca_file": tls_client_ca,
        "log_level": log_level,
        "log_format": log_format,
        "metrics_port": metrics_port,
        "console_port": console_port,
        "workers": workers,
        "allow_unauthenticated": allow_unauthenticated,
    }
    if sum([upstream is not None, emulator, vertex]) > 1:
        raise usage_error("choose one of --upstream, --emulator, --vertex")
    if emulator:
        overrides.update(upstream="emulator", upstream_url=None)
    elif vertex:
        overrides["upstream"] = "vertex"
    elif upstream is not None:
        overrides.update(upstream="gemini", upstream_url=upstream)
    settings = load_settings(overrides, SERVE_OPTIONS)
    from gemini_gateway.server.log_format import configure_logging

    configure_logging(settings.log_level, settings.log_format)
    count = resolve_workers(settings)
    settings = settings.model_copy(update={"workers": count})
    _run_loop(supervise(settings, count) if count > 1 else serve_gateway(settings))


def _run_loop(coro: object) -> None:
    """Run a server on uvloop when it is installed: it cuts the gateway's per-call overhead."""
    try:
        import uvloop
    except ImportError:
        asyncio.run(coro)  # type: ignore[arg-type]
    else:
        uvloop.run(coro)  # type: ignore[arg-type]


@app.command("emulator")
def run_emulator(
    host: Annotated[str, typer.Option(help="Address to bind.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="HTTP port.")] = 8081,
    chunk_count: Annotated[int | None, typer.Option(help="Chunks per streamed answer.")] = None,
    chunk_delay_ms: Annotated[float | None, typer.Option(help="Pause between chunks.")] = None,
    fault: Annotated[str | None, typer.Option(help="Fault for every request, e.g. 429.")] = None,
) -> None:
    """Run the Gemini REST emulator on its own."""
    from gemini_gateway.emulator.runner import run_emulator as run
    from gemini_gateway.emulator.settings import EmulatorSettings
    from gemini_gateway.server.startup import check_port

    check_port(host, port, "the emulator")

    overrides: dict[str, Any] = {
        "chunk_count": chunk_count,
        "chunk_delay_ms": chunk_delay_ms,
        "fault": fault,
    }
    run(host, port, EmulatorSettings(**{k: v for k, v in overrides.items() if v is not None}))


def _labels(values: list[str] | None) -> dict[str, str]:
    """The `--label key=value` options as a dict, checked against the gateway's label rules.

    Refused here, a bad label costs no round trip and the message names the option given.
    """
    texts = values or []
    for text in texts:
        try:
            parse_label_arg(text)
        except ValueError as exc:
            shown = text if len(text) <= SHOWN_CHARS else text[:SHOWN_CHARS] + "…"
            raise usage_error(f"--label {shown!r}: {str(exc).removeprefix('label ')}") from None
    try:
        return parse_label_args(texts).as_dict()
    except ValueError as exc:
        raise usage_error(f"--label: {exc}") from None


def _prompt(text: str) -> str:
    if not text.strip():
        raise usage_error("the prompt is empty: give the text to send")
    return text


ModelOpt = Annotated[str, typer.Option(help="Model name.")]
LabelOpt = Annotated[list[str] | None, typer.Option("--label", help="key=value, repeatable.")]


@app.command()
def generate(
    prompt: str,
    target: TargetOpt = DEFAULT_TARGET,
    model: ModelOpt = DEFAULT_MODEL,
    label: LabelOpt = None,
    api_key: KeyOpt = None,
    token: TokenOpt = None,
) -> None:
    """Call GenerateContent on a running gateway and print the answer."""
    request = text_request(model, _prompt(prompt), _labels(label))

    async def main() -> None:
        async with GatewayClient(target, api_key=api_key, token=token) as client:
            response = await client.generate(request)
            console.print(response_text(response))
            usage = response.usage_metadata
            err_console.print(
                f"[dim]{response.model_version}: {usage.prompt_token_count} prompt + "
                f"{usage.candidates_token_count} output tokens[/dim]"
            )

    _run(main())


@app.command()
def stream(
    prompt: str,
    target: TargetOpt = DEFAULT_TARGET,
    model: ModelOpt = DEFAULT_MODEL,
    label: LabelOpt = None,
    api_key: KeyOpt = None,
    token: TokenOpt = None,
) -> None:
    """Call StreamGenerateContent and print each chunk as it arrives."""
    request = text_request(model, _prompt(prompt), _labels(label))

    async def main() -> None:
        start = time.perf_counter()
        async with GatewayClient(target, api_key=api_key, token=token) as client:
            count = 0
            async for chunk in client.stream(request):
                count += 1
                sys.stdout.write(response_text(chunk))
                sys.stdout.flush()
            sys.stdout.write("\n")
            elapsed = (time.perf_counter() - start) * 1000
            err_console.print(f"[dim]{count} chunks in {elapsed:.0f} ms[/dim]")

    _run(main())


if __name__ == "__main__":
    app()
