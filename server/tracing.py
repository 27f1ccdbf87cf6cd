"""OpenTelemetry tracing of gRPC calls and their upstream requests; off by default.

On when the setting `tracing_enabled` is true, unless the standard OTEL_SDK_DISABLED=true
says otherwise. Each gateway holds its own TracerProvider (nothing global is set), built
from the standard variables:

- OTEL_TRACES_EXPORTER: `otlp` (default), `console`, `none`, or the name of any installed
  exporter entry point (group `opentelemetry_traces_exporter`); several, comma-separated.
- OTLP: OTEL_EXPORTER_OTLP_ENDPOINT (or ..._TRACES_ENDPOINT; default localhost:4317),
  OTEL_EXPORTER_OTLP_PROTOCOL (`grpc`, the default, or `http/protobuf` when
  opentelemetry-exporter-otlp-proto-http is installed), ..._HEADERS, ..._TIMEOUT,
  ..._INSECURE, ..._CERTIFICATE, ..._COMPRESSION: read by the exporter itself.
- OTEL_SERVICE_NAME / OTEL_RESOURCE_ATTRIBUTES (service.name defaults to
  `gemini-grpc-gateway`), OTEL_TRACES_SAMPLER / ..._ARG (default: parent-based, always on),
  OTEL_BSP_* for the batching of exports.

What is traced:

- a SERVER span per gRPC call (TracingInterceptor), named `package.Service/Method`, with
  rpc.system, rpc.service, rpc.method, rpc.grpc.status_code, the caller's project
  (`gateway.project`) and the call's request id (`gateway.request_id`); its parent is the
  W3C trace context the caller sent in `traceparent` / `tracestate` metadata;
- under it, a CLIENT span per upstream HTTP attempt (upstream.py) with the method, host,
  path (never the query), HTTP status and `http.request.resend_count`; retries are `retry`
  events on the call's span (reason, attempt, wait). The attempt's trace context goes
  upstream in a `traceparent` header.

Only W3C trace context crosses the gateway: no baggage is read or forwarded. Spans never
hold a header value, a request or response body, or an error message (which may quote
the prompt): an error is its gRPC status code name.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import os
from collections.abc import AsyncIterator, Awaitable, Callable, Collection
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import grpc
from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.propagators.textmap import Getter
from opentelemetry.trace import Span, SpanKind, Status, StatusCode, Tracer
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from gemini_gateway.server import log_format
from gemini_gateway.server.metrics import call_status, too_large

if TYPE_CHECKING:
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SpanExporter

    from gemini_gateway.server.config import Settings

log = logging.getLogger(__name__)

TRACER_NAME = "gemini_gateway.server"
DEFAULT_SERVICE_NAME = "gemini-grpc-gateway"
EXPORTER_GROUP = "opentelemetry_traces_exporter"

# A call's metadata as grpc.aio gives it.
Metadata = Collection[tuple[str, str | bytes]]

_PROPAGATOR = TraceContextTextMapPropagator()

# Server spans are errors for these codes (OpenTelemetry's semantic conventions for gRPC):
# the others describe the caller's request, not a fault of the server.
_SERVER_ERRORS = frozenset(
    {"UNKNOWN", "DEADLINE_EXCEEDED", "UNIMPLEMENTED", "INTERNAL", "UNAVAILABLE", "DATA_LOSS"}
)


def tracing_on(settings: Settings) -> bool:
    """`tracing_enabled`, unless OTEL_SDK_DISABLED=true."""
    disabled = os.environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true"
    return settings.tracing_enabled and not disabled


@dataclass
class Tracing:
    """A gateway's tracer and the provider that exports its spans."""

    provider: TracerProvider
    tracer: Tracer

    async def shutdown(self) -> None:
        """Export what is left and stop (in a thread: an exporter may block on the network)."""
        await asyncio.to_thread(self.provider.shutdown)


def start_tracing(settings: Settings) -> Tracing | None:
    """The gateway's tracing as the settings and OTEL_* variables say; None when off.

    An exporter that cannot be had (unknown name, package not installed) raises
    startup.StartupError saying which and what to do.
    """
    if not tracing_on(settings):
        return None
    try:
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor
    except ModuleNotFoundError as exc:
        from gemini_gateway.server.startup import StartupError

        raise StartupError(
            "tracing_enabled needs opentelemetry-sdk, which is not installed",
            "pip install opentelemetry-sdk opentelemetry-exporter-otlp-proto-grpc, "
            "or set tracing_enabled = false",
        ) from exc

    resource = Resource.create()  # OTEL_SERVICE_NAME, OTEL_RESOURCE_ATTRIBUTES
    if str(resource.attributes.get("service.name", "")).startswith("unknown_service"):
        resource = resource.merge(Resource({"service.name": DEFAULT_SERVICE_NAME}))
    provider = TracerProvider(resource=resource)  # sampler from OTEL_TRACES_SAMPLER
    for exporter in _exporters():
        provider.add_span_processor(BatchSpanProcessor(exporter))
    log.info("tracing on, exporting to %s", os.environ.get("OTEL_TRACES_EXPORTER", "otlp"))
    return Tracing(provider, provider.get_tracer(TRACER_NAME))


def _exporters() -> list[SpanExporter]:
    names = os.environ.get("OTEL_TRACES_EXPORTER", "otlp")
    found = []
    for name in (part.strip().lower() for part in names.split(",")):
        if name and name != "none":
            found.append(_exporter(name))
    return found


def _exporter(name: str) -> SpanExporter:
    from gemini_gateway.server.startup import StartupError

    if name == "otlp":
        protocol = os.environ.get(
            "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", os.environ.get("OTEL_EXPORTER_OTLP_PROTOCOL")
        )
        http = (protocol or "grpc").strip() == "http/protobuf"
        name = "otlp_proto_http" if http else "otlp_proto_grpc"
    if name == "console":
        from opentelemetry.sdk.trace.export import ConsoleSpanExporter

        return ConsoleSpanExporter()
    from importlib.metadata import entry_points

    for entry in entry_points(group=EXPORTER_GROUP, name=name):
        exporter: SpanExporter = entry.load()()
        return exporter
    package = {
        "otlp_proto_grpc": "opentelemetry-exporter-otlp-proto-grpc",
        "otlp_proto_http": "opentelemetry-exporter-otlp-proto-http",
    }.get(name)
    hint = (
        f"install {package} in the gateway's environment"
        if package
        else "use otlp, console or none, or install the exporter's package"
    )
    raise StartupError(f"no trace exporter named {name!r} (OTEL_TRACES_EXPORTER)", hint)


def inject_trace_context(headers: dict[str, str], span: Span) -> None:
    """Add the span's W3C trace context (`traceparent`, `tracestate`) to HTTP headers."""
    _PROPAGATOR.inject(headers, context=trace.set_span_in_context(span))


class _MetadataGetter(Getter[Metadata]):
    """Reads text values of gRPC metadata for the W3C propagator."""

    def get(self, carrier: Metadata, key: str) -> list[str] | None:
        values = [value for name, value in carrier if name == key and isinstance(value, str)]
        return values or None

    def keys(self, carrier: Metadata) -> list[str]:
        return [name for name, _ in carrier]


_GETTER = _MetadataGetter()


def incoming_context(metadata: Metadata) -> otel_context.Context:
    """The trace context the caller sent (`traceparent` metadata), if any."""
    return _PROPAGATOR.extract(metadata, context=otel_context.Context(), getter=_GETTER)


def project_resolver(callers: Any) -> Callable[[grpc.aio.ServicerContext], str | None]:
    """`gateway.project` of a call, from the caller directory (identity.CallerDirectory):
    by its token or certificate; None when the caller is not known (the call says so)."""
    identify_call = getattr(callers, "identify_call", None)

    def project_of(context: grpc.aio.ServicerContext) -> str | None:
        try:
            if identify_call is not None:
                return str(identify_call(context).project)
            return str(callers.identify(tuple(context.invocation_metadata() or ())).project)
        except Exception:  # an unknown caller: the call itself will say so
            return None

    return project_of


class TracingInterceptor(grpc.aio.ServerInterceptor):
    """A SERVER span around every unary-unary and unary-stream call.

    The span is current only while the handler runs (for a stream: while it makes each
    message), never across a `yield`, so the upstream request inside is its child and no
    context is left attached when gRPC closes a stream from elsewhere.
    """

    def __init__(
        self,
        tracer: Tracer,
        project_of: Callable[[grpc.aio.ServicerContext], str | None] | None = None,
        *,
        max_send_message_bytes: int | None = None,
    ) -> None:
        self._tracer = tracer
        self._project_of = project_of
        self._limit = max_send_message_bytes  # as MetricsInterceptor's: the status seen

    async def intercept_service(
        self,
        continuation: Callable[
            [grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler[Any, Any] | None]
        ],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[Any, Any] | None:
        handler: Any = await continuation(handler_call_details)
        if handler is None:
            return handler
        method = handler_call_details.method
        if handler.unary_unary is not None:
            return handler._replace(unary_unary=self._unary(method, handler.unary_unary))
        if handler.unary_stream is not None:
            behaviour = handler.unary_stream
            if inspect.isasyncgenfunction(behaviour):
                return handler._replace(unary_stream=self._stream(method, behaviour))
            return handler._replace(unary_stream=self._unary(method, behaviour))
        return handler

    def _start(self, method: str, context: grpc.aio.ServicerContext) -> Span:
        metadata = tuple(context.invocation_metadata() or ())
        service, _, name = method.lstrip("/").partition("/")
        attributes: dict[str, Any] = {
            "rpc.system": "grpc",
            "rpc.service": service,
            "rpc.method": name,
        }
        if self._project_of is not None:
            project = self._project_of(context)
            if project is not None:
                attributes["gateway.project"] = project
        request_id = log_format.current_request_id()
        if request_id is not None:
            attributes["gateway.request_id"] = request_id
        return self._tracer.start_span(
            method.lstrip("/"),
            context=incoming_context(metadata),
            kind=SpanKind.SERVER,
            attributes=attributes,
        )

    def _unary(
        self, method: str, behaviour: Callable[..., Awaitable[Any]]
    ) -> Callable[..., Awaitable[Any]]:
        async def traced(request: Any, context: grpc.aio.ServicerContext) -> Any:
            span = self._start(method, context)
            error: BaseException | None = None
            response = None
            try:
                with trace.use_span(span, end_on_exit=False):
                    response = await behaviour(request, context)
                    return response
            except BaseException as exc:
                error = exc
                raise
            finally:
                _end(span, call_status(context, error, too_large(response, self._limit)))

        return traced

    def _stream(
        self, method: str, behaviour: Callable[..., AsyncIterator[Any]]
    ) -> Callable[..., AsyncIterator[Any]]:
        async def traced(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
            span = self._start(method, context)
            current = trace.set_span_in_context(span)
            messages = behaviour(request, context).__aiter__()
            error: BaseException | None = None
            message = None
            try:
                while True:
                    token = otel_context.attach(current)
                    try:
                        message = await messages.__anext__()
                    except StopAsyncIteration:
                        message = None  # every message was taken
                        break
                    finally:
                        otel_context.detach(token)
                    yield message
            except BaseException as exc:
                error = exc
                raise
            finally:
                close = getattr(messages, "aclose", None)
                if close is not None and error is not None:
                    await _closed(close)
                _end(span, call_status(context, error, too_large(message, self._limit)))

        return traced


async def _closed(close: Callable[[], Awaitable[None]]) -> None:
    """Close the handler's generator (it runs its own cleanup: the upstream request)."""
    try:
        await close()
    except Exception:  # already closed, or failing in its own cleanup: its own to log
        pass


def _end(span: Span, code: str) -> None:
    span.set_attribute("rpc.grpc.status_code", grpc.StatusCode[code].value[0])
    if code in _SERVER_ERRORS:
        span.set_status(Status(StatusCode.ERROR))
    span.end()
