"""Prometheus metrics for every gRPC call, collected by one server interceptor.

Per method: calls by final status code, duration (for streams: until the last message),
calls in flight and streamed messages. Exposed over HTTP when `metrics_port` is set.
Labels are bounded (method names and status codes): nothing from the request, and never
a credential, becomes a label.

With several workers (`--workers N`) each worker writes its metrics to files in
PROMETHEUS_MULTIPROC_DIR (prometheus-client's multiprocess mode, chosen when the module is
first imported) and the supervising parent serves their sum; a worker then also counts its
own calls in `gateway_worker_calls{pid}`, which shows how the kernel spreads connections.
"""

from __future__ import annotations

import inspect
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc
from prometheus_client import (
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    start_http_server,
    values,
)

from gemini_gateway.server.startup import listen_error

log = logging.getLogger(__name__)

# Forwarded calls take from a millisecond (errors) to minutes (long generations).
_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300)

CALLS = Counter("gateway_grpc_calls", "Finished gRPC calls.", ["method", "code"])
DURATION = Histogram(
    "gateway_grpc_call_duration_seconds", "gRPC call duration.", ["method"], buckets=_BUCKETS
)
IN_FLIGHT = Gauge(
    "gateway_grpc_calls_in_flight",
    "gRPC calls being served.",
    ["method"],
    multiprocess_mode="livesum",  # several workers: the sum over the live ones
)
STREAMED = Counter("gateway_grpc_streamed_messages", "Messages sent on server streams.", ["method"])
# Only in a worker of several: the supervisor's /metrics sums counters over the workers, so a
# per-worker count is a gauge kept per pid ("liveall": a dead worker's series goes with it).
WORKER_CALLS = (
    Gauge(
        "gateway_worker_calls",
        "gRPC calls this worker process has finished since it started.",
        multiprocess_mode="liveall",
    )
    if values.ValueClass is not values.MutexValue  # multiprocess mode
    else None
)


def _code(context: grpc.aio.ServicerContext, error: BaseException | None) -> str:
    code = context.code()
    if isinstance(code, grpc.StatusCode):
        return code.name
    if error is None:
        return "OK"
    if isinstance(error, BaseException) and error.__class__.__name__ == "CancelledError":
        return "CANCELLED"
    return "UNKNOWN"


def _finish(method: str, started: float, context: Any, error: BaseException | None) -> None:
    elapsed = time.perf_counter() - started
    code = _code(context, error)
    CALLS.labels(method, code).inc()
    DURATION.labels(method).observe(elapsed)
    IN_FLIGHT.labels(method).dec()
    if WORKER_CALLS is not None:
        WORKER_CALLS.inc()
    log.debug("%s %s %.1f ms", method, code, elapsed * 1000)


def _unary(method: str, behaviour: Callable[..., Awaitable[Any]]) -> Callable[..., Awaitable[Any]]:
    async def observed(request: Any, context: grpc.aio.ServicerContext) -> Any:
        IN_FLIGHT.labels(method).inc()
        started = time.perf_counter()
        error: BaseException | None = None
        try:
            return await behaviour(request, context)
        except BaseException as exc:
            error = exc
            raise
        finally:
            _finish(method, started, context, error)

    return observed


def _stream(method: str, behaviour: Callable[..., AsyncIterator[Any]]) -> Callable[..., Any]:
    async def observed(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
        IN_FLIGHT.labels(method).inc()
        started = time.perf_counter()
        error: BaseException | None = None
        streamed = STREAMED.labels(method)
        try:
            async for message in behaviour(request, context):
                streamed.inc()
                yield message
        except BaseException as exc:
            error = exc
            raise
        finally:
            _finish(method, started, context, error)

    return observed


class MetricsInterceptor(grpc.aio.ServerInterceptor):
    """Wraps unary-unary and unary-stream handlers (all this gateway serves) with metrics."""

    async def intercept_service(
        self,
        continuation: Callable[
            [grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler[Any, Any] | None]
        ],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[Any, Any] | None:
        # grpc's handlers are namedtuples (`_replace`), which its type stubs do not declare.
        handler: Any = await continuation(handler_call_details)
        if handler is None:
            return handler
        method = handler_call_details.method
        if handler.unary_unary is not None:
            return handler._replace(unary_unary=_unary(method, handler.unary_unary))
        if handler.unary_stream is not None:
            behaviour = handler.unary_stream
            # Async generators yield their messages; coroutines write them (Health.Watch).
            if inspect.isasyncgenfunction(behaviour):
                return handler._replace(unary_stream=_stream(method, behaviour))
            return handler._replace(unary_stream=_unary(method, behaviour))
        return handler  # client streaming (reflection): counted by nothing here


def serve_metrics(host: str, port: int, registry: CollectorRegistry = REGISTRY) -> int:
    """Expose /metrics on a background thread (prometheus-client's own HTTP server).

    Returns the bound port (port 0 picks a free one); a port that cannot be listened on
    raises StartupError saying which and how to choose another. `registry` is the process's
    own by default; the supervisor of several workers gives one that reads their files.
    """
    try:
        server, _thread = start_http_server(port, addr=host, registry=registry)
    except (OSError, OverflowError) as exc:
        raise listen_error("the metrics server", host, port, exc, "--metrics-port") from exc
    bound = int(server.server_port)
    log.info("metrics on http://%s:%d/metrics", host, bound)
    return bound
