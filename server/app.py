"""The gateway process: gRPC server, forwarded services, reflection and health."""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
import signal
import sys
import tempfile
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import grpc
from google.longrunning import operations_proto_pb2
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

import gemini_gateway.generated.google.ai.generativelanguage.v1beta as v1beta
from gemini_gateway.generated.gemini.gateway.v1 import (
    datasets_pb2,
    datasets_pb2_grpc,
    logs_pb2,
    logs_pb2_grpc,
    runs_pb2,
    runs_pb2_grpc,
    usage_pb2,
    usage_pb2_grpc,
)
from gemini_gateway.generated.gemini.gateway.v1 import operations_pb2 as watch_pb2
from gemini_gateway.generated.google.ai.generativelanguage.v1 import (
    generative_service_pb2 as v1_generative_service_pb2,
)
from gemini_gateway.generated.google.ai.generativelanguage.v1 import (
    model_service_pb2 as v1_model_service_pb2,
)
from gemini_gateway.generated.google.ai.generativelanguage.v1beta import (
    generative_service_pb2,
    model_service_pb2,
)
from gemini_gateway.server import reflection, startup
from gemini_gateway.server.batch_sweeper import BatchSweeper
from gemini_gateway.server.batch_usage import BatchUsage
from gemini_gateway.server.config import Settings
from gemini_gateway.server.console import CONSOLE_DIR, info_route, with_console_default
from gemini_gateway.server.forwarder import Forwarder
from gemini_gateway.server.http_face import HttpFaceHandle, build_http_face, start_http_face
from gemini_gateway.server.identity import CallerDirectory
from gemini_gateway.server.limits import LimitsInterceptor
from gemini_gateway.server.limits_ledger import LimitsLedger
from gemini_gateway.server.log_event import LogEvent, LogSkip
from gemini_gateway.server.log_format import RequestIdInterceptor
from gemini_gateway.server.log_tail import LogBus
from gemini_gateway.server.metering import UsageMetrics
from gemini_gateway.server.metrics import MetricsInterceptor, serve_metrics
from gemini_gateway.server.operations import WAIT_OPERATION, LocalOperations
from gemini_gateway.server.recorder import Recorder
from gemini_gateway.server.request_log import LogCapture, LoggingPolicies
from gemini_gateway.server.retries import make_retrier
from gemini_gateway.server.routes import RouteTable, load_service_config_rules
from gemini_gateway.server.services.datasets import DatasetServicer
from gemini_gateway.server.services.logs import LogServicer
from gemini_gateway.server.services.runs import RunServicer
from gemini_gateway.server.services.usage import UsageServicer
from gemini_gateway.server.store import Store
from gemini_gateway.server.store.logs import LogWriter
from gemini_gateway.server.tenancy import CallerInterceptor, Tenancy
from gemini_gateway.server.tracing import (
    Tracing,
    TracingInterceptor,
    project_resolver,
    start_tracing,
)
from gemini_gateway.server.upstream import Flavour, UpstreamClient, make_flavour, make_transport
from gemini_gateway.server.validation import VALIDATORS, RequestDecodingInterceptor

if TYPE_CHECKING:
    from gemini_gateway.emulator.runner import EmulatorHandle

log = logging.getLogger(__name__)

# Services forwarded to the REST API, each method by its google.api.http rule: Google's v1beta
# and v1 surfaces (their paths differ by the /v1beta or /v1 prefix).
FORWARDED_SERVICES = (
    generative_service_pb2.DESCRIPTOR.services_by_name["GenerativeService"],
    model_service_pb2.DESCRIPTOR.services_by_name["ModelService"],
    operations_proto_pb2.DESCRIPTOR.services_by_name["Operations"],
    v1_generative_service_pb2.DESCRIPTOR.services_by_name["GenerativeService"],
    v1_model_service_pb2.DESCRIPTOR.services_by_name["ModelService"],
)
# The gateway's own services, served without an upstream counterpart.
LOCAL_SERVICES = (
    watch_pb2.DESCRIPTOR.services_by_name["OperationWatchService"],
    usage_pb2.DESCRIPTOR.services_by_name["UsageService"],
    logs_pb2.DESCRIPTOR.services_by_name["LogService"],
    datasets_pb2.DESCRIPTOR.services_by_name["DatasetService"],
    runs_pb2.DESCRIPTOR.services_by_name["RunService"],
)
# Forwarded services the console reads through the JSON face too (models, tuned models and
# their operations), next to the gateway's own.
CONSOLE_FORWARDED_SERVICES = (
    model_service_pb2.DESCRIPTOR.services_by_name["ModelService"],
    operations_proto_pb2.DESCRIPTOR.services_by_name["Operations"],
)
# http rules for methods whose .proto has none for v1beta (google.longrunning.Operations).
SERVICE_CONFIG = Path(next(iter(v1beta.__path__))) / "generativelanguage_v1beta.yaml"


def build_route_table() -> RouteTable:
    return RouteTable.from_services(
        FORWARDED_SERVICES,
        config_rules=load_service_config_rules(SERVICE_CONFIG),
        served_locally=[WAIT_OPERATION],
    )


@dataclass
class Gateway:
    """A running gateway; `port` is the bound port (useful with port 0)."""

    settings: Settings
    server: grpc.aio.Server
    port: int
    upstream: UpstreamClient
    health: health.aio.HealthServicer
    store: Store
    recorder: Recorder
    policies: LoggingPolicies
    log_bus: LogBus
    runs: RunServicer
    _emulator: EmulatorHandle | None = field(default=None)
    console: HttpFaceHandle | None = field(default=None)
    tracing: Tracing | None = field(default=None)
    console_socket_dir: str | None = field(default=None)  # see _console_socket
    batch_sweeper: BatchSweeper | None = field(default=None)

    @property
    def target(self) -> str:
        return target_of(self.settings.host, self.port)

    async def stop(self, grace: float | None = None) -> None:
        await self.health.enter_graceful_shutdown()
        if self.console is not None:
            await self.console.close()
        # Live tails end first: they would otherwise hold the drain for its whole grace.
        await self.log_bus.stop()
        await self.server.stop(self.settings.shutdown_grace_s if grace is None else grace)
        if self.console_socket_dir is not None:
            shutil.rmtree(self.console_socket_dir, ignore_errors=True)
        if self.batch_sweeper is not None:
            await self.batch_sweeper.stop()
        await self.runs.stop()
        await self.recorder.stop()  # flushes what the drained calls recorded
        await self.policies.stop()
        await self.store.close()
        await self.upstream.aclose()
        if self.tracing is not None:
            await self.tracing.shutdown()  # exports the drained calls' spans
        if self._emulator is not None:
            await self._emulator.close()


def shares_port(settings: Settings) -> bool:
    """Whether this gateway is one of several workers on one port (SO_REUSEPORT)."""
    return (settings.workers or 1) > 1


def target_of(host: str, port: int) -> str:
    """host:port as a client on this machine dials it (a wildcard address becomes loopback)."""
    return f"{'127.0.0.1' if host in ('0.0.0.0', '::', '[::]') else host}:{port}"


def _console_socket(server: grpc.aio.Server, opened: AsyncExitStack) -> tuple[str, str]:
    """Where the console calls the gateway when its gRPC port serves TLS: (target, folder), a
    Unix socket of the process's own in a folder only its user may enter (mkdtemp makes it
    0700). On it the console's calls need no certificate and match no host name, and no
    plain-text TCP port opens beside the TLS one; callers still show their tokens, as on the
    TLS port. The folder goes when the gateway stops (or fails to start)."""
    folder = tempfile.mkdtemp(prefix="gemini-gateway-console-")
    opened.callback(shutil.rmtree, folder, ignore_errors=True)
    target = f"unix:{folder}/grpc.sock"
    server.add_insecure_port(target)
    return target, folder


def _server_credentials(settings: Settings) -> grpc.ServerCredentials | None:
    """TLS from the settings' PEM files, checked first: StartupError names a bad one."""
    files = startup.read_tls_files(settings)
    if files is None:
        return None
    return grpc.ssl_server_credentials(
        [(files.key, files.chain)],
        root_certificates=files.client_ca,
        require_client_auth=files.client_ca is not None,
    )


async def start_gateway(
    settings: Settings | None = None,
    flavour: Flavour | None = None,
    *,
    limits_ledger: LimitsLedger | None = None,
) -> Gateway:
    """Validate the routes, connect the upstream and start serving.

    `flavour` overrides the upstream chosen by settings (tests give Vertex AI a token).
    `limits_ledger`: the per-project limits a worker keeps together with the others.
    A problem the user can fix raises startup.StartupError, which says how; a start-up
    that fails closes whatever it had opened (store, recorder, emulator, upstream client).
    """
    settings = settings or Settings()
    # The quick checks come first: a busy port or a bad file costs no migration or emulator.
    startup.check_exposure(settings)
    credentials = _server_credentials(settings)
    if not shares_port(settings):  # workers share a port the supervisor checked
        startup.check_port(settings.host, settings.port)
        if settings.console_port is not None:
            startup.check_port(
                settings.host, settings.console_port, "the console", "--console-port"
            )
    if flavour is None and settings.upstream == "vertex":
        flavour = startup.vertex_flavour(settings)
    try:
        async with AsyncExitStack() as opened:
            gateway = await _start(settings, flavour, credentials, opened, limits_ledger)
            opened.pop_all()  # from here on Gateway.stop closes them
    except ModuleNotFoundError as exc:
        problem = startup.missing_module(exc)
        if problem is None:
            raise
        raise problem from exc
    return gateway


async def _start(
    settings: Settings,
    flavour: Flavour | None,
    credentials: grpc.ServerCredentials | None,
    opened: AsyncExitStack,
    limits_ledger: LimitsLedger | None = None,
) -> Gateway:
    """start_gateway's work; each thing opened is pushed on `opened`, closed on failure."""
    routes = build_route_table()  # a bad http rule stops start-up here
    callers = CallerDirectory(settings)
    tracing = start_tracing(settings)  # None unless tracing_enabled
    if tracing is not None:
        opened.push_async_callback(tracing.shutdown)
    prices = startup.load_price_table(settings.price_table_file)
    store = await startup.open_store(settings.store_url)  # created and migrated on first start
    opened.push_async_callback(store.close)
    # One recorder for usage events (unless switched off) and request logs.
    recorder = Recorder(store, max_queue=settings.recorder_queue_size)
    policies = LoggingPolicies(settings, store)
    await policies.start()
    opened.push_async_callback(policies.stop)
    log_bus = LogBus(store)
    await log_bus.start()
    opened.push_async_callback(log_bus.stop)
    log_writer = LogWriter(policies.policy_for, log_bus)
    recorder.register(LogEvent, log_writer)
    recorder.register(LogSkip, log_writer.write_skips)
    recorder.start()
    opened.push_async_callback(recorder.stop)

    emulator = None
    emulator_url = None
    if flavour is None and settings.upstream == "emulator" and not settings.upstream_url:
        from gemini_gateway.emulator.runner import start_emulator

        emulator = await start_emulator()
        opened.push_async_callback(emulator.close)
        emulator_url = emulator.url
    upstream = UpstreamClient(
        flavour or make_flavour(settings, emulator_url),
        make_transport(settings),
        settings.upstream_timeout_s,
        stream_timeout_s=settings.upstream_stream_timeout_s,
        retrier=make_retrier(settings),
        tracer=None if tracing is None else tracing.tracer,
    )
    opened.push_async_callback(upstream.aclose)

    max_bytes = settings.max_message_mb * 1024 * 1024
    # Request ids and spans first; then metrics, so they count what the others answer;
    # callers are checked and limited before any request is decoded.
    interceptors: list[grpc.aio.ServerInterceptor] = [RequestIdInterceptor()]
    if tracing is not None:
        interceptors.append(
            TracingInterceptor(
                tracing.tracer, project_resolver(callers), max_send_message_bytes=max_bytes
            )
        )
    interceptors.append(MetricsInterceptor(max_send_message_bytes=max_bytes))
    # Each interceptor costs every call a coroutine: one with nothing to do is left out (no
    # callers to check in development mode, no limits configured).
    if not callers.development_mode:
        interceptors.append(CallerInterceptor.from_settings(callers, settings))
    limits = LimitsInterceptor(settings, callers, routes, ledger=limits_ledger)
    if limits.active:
        interceptors.append(limits)
    interceptors.append(RequestDecodingInterceptor())
    server = grpc.aio.server(
        interceptors=interceptors,
        options=[
            ("grpc.max_receive_message_length", max_bytes),
            ("grpc.max_send_message_length", max_bytes),
            # Off alone, so a taken port fails the bind; on when workers share the port.
            ("grpc.so_reuseport", int(shares_port(settings))),
            # Calls the handler loop has not taken yet: past 1,000 (grpc's default) the core
            # cancels a random share of them unseen, which cut bursts of 2,000 streams.
            ("grpc.server.max_pending_requests", 10_000),
            # No random share below this hard cut: a worker starts ~300 streams/s, so 10,000
            # is about the 30 s grpc lets a call wait (server_max_unrequested_time_in_server).
            ("grpc.server.max_pending_requests_hard_limit", 10_000),
        ],
    )
    opened.push_async_callback(server.stop, 0)
    usage_metrics = UsageMetrics(settings.metrics_label_keys)
    forwarder = Forwarder(
        routes,
        upstream,
        VALIDATORS,
        callers=callers,
        recorder=recorder if settings.record_usage else None,
        usage_metrics=usage_metrics,
        strip_labels=settings.strip_labels,
        log_capture=LogCapture(recorder, policies),
        tenancy=Tenancy.from_settings(store, callers, settings),
        batch_usage=BatchUsage(store, usage_metrics) if settings.record_usage else None,
    )
    sweeper = None
    # In pass-through mode the gateway has no key of its own to read a batch with.
    if settings.record_usage and not callers.requires_caller_key:
        sweeper = BatchSweeper(store, forwarder, settings.batch_meter_interval_s)
        sweeper.start()
        opened.push_async_callback(sweeper.stop)
    runs = RunServicer(store, callers, forwarder, prices, lease_s=settings.run_lease_s)
    await runs.start()
    opened.push_async_callback(runs.stop)
    # Before the forwarder's: its GetOperation answers the gateway's own operations too.
    server.add_generic_rpc_handlers(
        LocalOperations(forwarder, local_operations=runs.operation).generic_handlers()
    )
    server.add_generic_rpc_handlers(forwarder.generic_handlers())
    usage_pb2_grpc.add_UsageServiceServicer_to_server(UsageServicer(store, callers, prices), server)
    logs_pb2_grpc.add_LogServiceServicer_to_server(
        LogServicer(store, callers, policies, log_bus), server
    )
    datasets_pb2_grpc.add_DatasetServiceServicer_to_server(
        DatasetServicer(store, callers, forwarder), server
    )
    runs_pb2_grpc.add_RunServiceServicer_to_server(runs, server)

    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    service_names = [service.full_name for service in (*FORWARDED_SERVICES, *LOCAL_SERVICES)]
    reflection.enable_server_reflection([*service_names, health.SERVICE_NAME], server)

    address = f"{settings.host}:{settings.port}"
    try:
        if credentials is None:
            port = server.add_insecure_port(address)
        else:
            port = server.add_secure_port(address, credentials)
    except RuntimeError as exc:  # gRPC says "Failed to bind" only; a probe tells why
        startup.check_port(settings.host, settings.port)
        raise startup.listen_error("the gateway", settings.host, settings.port, None) from exc
    console_app = None
    console_socket_dir = None
    if settings.console_port is not None:  # built before serving: a bad http rule stops here
        face_target = target_of(settings.host, port)
        if credentials is not None:
            face_target, console_socket_dir = _console_socket(server, opened)
        console_app = build_http_face(
            [*LOCAL_SERVICES, *CONSOLE_FORWARDED_SERVICES],
            face_target,
            static_dir=CONSOLE_DIR,
            http_rules=load_service_config_rules(SERVICE_CONFIG),
            routes=[info_route(settings, callers)],
        )
    await server.start()
    console = None
    if console_app is not None:
        console_port = settings.console_port or 0
        try:
            console = await start_http_face(
                console_app,
                settings.host,
                console_port,
                reuse_port=shares_port(settings),
                ssl_context=startup.https_context(settings),
            )
        except OSError as exc:
            raise startup.listen_error(
                "the console", settings.host, console_port, exc, "--console-port"
            ) from exc
        opened.push_async_callback(console.close)
    for name in ["", *service_names]:
        await health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
    log.info(
        "gateway listening on %s:%d, upstream %s (%s)",
        settings.host,
        port,
        settings.upstream,
        getattr(upstream.flavour, "base_url", "?"),
    )
    return Gateway(
        settings,
        server,
        port,
        upstream,
        health_servicer,
        store,
        recorder,
        policies,
        log_bus,
        runs,
        emulator,
        console,
        tracing,
        console_socket_dir,
        sweeper,
    )


def _cli_name() -> str:
    """The command as the user can run it (.venv/bin/gemini-gateway outside the venv)."""
    cli = sys.argv[0] if os.path.basename(sys.argv[0]) == "gemini-gateway" else "gemini-gateway"
    if os.path.isabs(cli) and cli.startswith(os.getcwd()):
        cli = os.path.relpath(cli)
    return cli


def _buf() -> str:
    """buf through npx: the checkout's own (`make serve` installs it), else npm's @bufbuild/buf.

    Plain `npx buf` outside the checkout would fetch an unrelated npm package named `buf`.
    """
    return "npx buf" if Path("node_modules/.bin/buf").exists() else "npx -p @bufbuild/buf buf"


def banner(gateway: Gateway, metrics_port: int | None = None) -> str:
    """What `serve` prints: where it listens, and commands that call it, runnable as shown."""
    upstream_url = getattr(gateway.upstream.flavour, "base_url", "")
    console_url = gateway.console.url if gateway.console is not None else None
    return banner_text(gateway.settings, gateway.target, upstream_url, metrics_port, console_url)


def banner_text(
    settings: Settings,
    target: str,
    upstream_url: str,
    metrics_port: int | None = None,
    console_url: str | None = None,
) -> str:
    """banner() from its parts (the supervisor of several workers has no Gateway of its own)."""
    lines = [
        f"Gemini gRPC gateway listening on {target} (upstream: {settings.upstream} {upstream_url})",
        f"  upstream pool: {settings.max_connections} connections per process, one call each; "
        f"a call waits at most {settings.pool_wait_s:g} s for one (max_connections, pool_wait_s)",
    ]
    if settings.tls_cert_file is None:
        cli = _cli_name()
        curl = f"{_buf()} curl --protocol grpc --http2-prior-knowledge"
        commands = [
            f"{cli} generate 'Hello' --target {target}",
            f"{cli} stream 'Tell me a story' --target {target}",
            f"{curl} --list-methods http://{target}",
            f"{curl} http://{target}/google.ai.generativelanguage.v1beta.ModelService/ListModels",
        ]
    else:
        client = " --cert CLIENT.crt --key CLIENT.key" if settings.tls_client_ca_file else ""
        commands = [
            f"{_buf()} curl --protocol grpc --cacert CA.crt{client} --list-methods https://{target}"
        ]
    lines.extend(startup.security_lines(settings))
    lines.append(f"  try:  {commands[0]}")
    lines.extend(f"        {command}" for command in commands[1:])
    if metrics_port is not None:
        host = target.rsplit(":", 1)[0]
        lines.append(f"  metrics: http://{host}:{metrics_port}/metrics")
    if console_url is not None:
        lines.append(f"  console: {console_url}")
    return "\n".join(lines)


async def serve(settings: Settings) -> None:
    """Run until SIGINT/SIGTERM, then drain in-flight calls."""
    console_by_default = settings.console_port is None
    settings = with_console_default(settings)
    if settings.metrics_port is not None:
        startup.check_port(
            settings.host, settings.metrics_port, "the metrics server", "--metrics-port"
        )
    try:
        gateway = await start_gateway(settings)
    except startup.StartupError as exc:
        # The console `serve` opens by default never stops the gateway (a port taken since
        # it was checked): start without it. One asked for does stop it.
        if not console_by_default or settings.console_port is None or "console" not in exc.message:
            raise
        log.warning("no web console: %s", exc.message)
        gateway = await start_gateway(settings.model_copy(update={"console_port": None}))
    metrics_port = None
    if settings.metrics_port is not None:
        try:
            metrics_port = serve_metrics(settings.host, settings.metrics_port)
        except BaseException:
            await gateway.stop(0)
            raise
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    print(banner(gateway, metrics_port), flush=True)
    await stop.wait()
    log.info("shutting down")
    await gateway.stop()
