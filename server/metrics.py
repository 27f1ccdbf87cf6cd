"""Prometheus metrics for every gRPC call, collected by one server interceptor.

Per method: calls by final status code, duration (for streams: until the last message),
calls in flight and streamed messages. Exposed over HTTP when `metrics_port` is set.
Labels are bounded (method names and status codes): nothing from the request, and never
a credential, becomes a label.

The status counted is the one the client saw, as far as the server can know it: the code
the handler ended the call with; RESOURCE_EXHAUSTED when the call failed because an answer
was larger than the server may send (gRPC's own check, made after the handler returned or
yielded it, which the handler never hears of); CANCELLED when the client went away
(a stream's generator closed at a `yield`, or its task cancelled). What a client's own
checks refuse (a message over its receive limit) looks to the server like the client
going away: CANCELLED.

The upstream has metrics of its own, filled by upstream.py and retries.py: each HTTP
request's latency (`gateway_upstream_request_seconds{method,code}`, one observation per
attempt, separate from the gateway's call duration), and the retries made, skipped, and
refused by the retry budget (docs/observability.md lists them all).

With several workers (`--workers N`) each worker writes its metrics to files in
PROMETHEUS_MULTIPROC_DIR (prometheus-client's multiprocess mode, chosen when the module is
first imported) and the supervising parent serves their sum; a worker then also counts its
own calls in `gateway_worker_calls{pid}`, which shows how the kernel spreads connections.
"""

from __future__ import annotations

import asyncio
import functools
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
UPSTREAM_SECONDS = Histogram(
    "gateway_upstream_request_seconds",
    "Upstream HTTP requests (each attempt), from sending until the answer's last byte (for "
    "streams: the end of the stream), by gRPC method and the upstream's HTTP status "
    "(`unreachable` or `timeout` when no answer came).",
    ["method", "code"],
    buckets=_BUCKETS,
)
UPSTREAM_RETRIES = Counter(
    "gateway_upstream_retries",
    "Upstream requests sent again, by reason: resource_exhausted (HTTP 429), unavailable "
    "(HTTP 503), connect_failed, connection_broken.",
    ["reason"],
)
RETRY_BUDGET_EXHAUSTED = Counter(
    "gateway_upstream_retry_budget_exhausted",
    "Retryable upstream failures not retried because the retry budget was spent.",
)
RETRIES_SKIPPED = Counter(
    "gateway_upstream_retries_skipped",
    "Retryable upstream failures not retried, by why: deadline (the wait and another "
    "attempt would not fit in the call's time), server_delay (the upstream asked to wait "
    "longer than retry_max_server_delay_s).",
    ["why"],
)
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


def call_status(
    context: grpc.aio.ServicerContext, error: BaseException | None, oversize: bool = False
) -> str:
    """The status code name the client saw, as far as the server can know it.

    `oversize`: the last answer the handler gave was over the server's send limit, so gRPC
    ended the call with RESOURCE_EXHAUSTED ("Sent message larger than max") after the
    handler had finished with it: a unary call looks successful to the handler, a stream's
    generator is closed at its `yield` (GeneratorExit).
    """
    code = context.code()
    if isinstance(code, grpc.StatusCode):
        return code.name
    if oversize and (error is None or isinstance(error, GeneratorExit | asyncio.CancelledError)):
        return "RESOURCE_EXHAUSTED"
    if error is None:
        return "OK"
    # The client went away: its task was cancelled, or the stream was closed at a `yield`
    # because gRPC stopped taking its messages.
    if isinstance(error, asyncio.CancelledError | GeneratorExit):
        return "CANCELLED"
    return "UNKNOWN"


# A metric's child per label values, looked up once: labels() checks and locks on every call.
@functools.cache
def _calls(method: str, code: str) -> Any:
    return CALLS.labels(method, code)


@functools.cache
def _method_series(method: str) -> tuple[Any, Any, Any]:
    """The in-flight gauge, the duration histogram and the streamed counter of `method`."""
    return IN_FLIGHT.labels(method), DURATION.labels(method), STREAMED.labels(method)


def _finish(
    method: str,
    started: float,
    context: Any,
    error: BaseException | None,
    oversize: bool = False,
) -> None:
    elapsed = time.perf_counter() - started
    code = call_status(context, error, oversize)
    _calls(method, code).inc()
    in_flight, duration, _ = _method_series(method)
    duration.observe(elapsed)
    in_flight.dec()
    if WORKER_CALLS is not None:
        WORKER_CALLS.inc()
    log.debug("%s %s %.1f ms", method, code, elapsed * 1000)


def too_large(message: Any, limit: int | None) -> bool:
    """Whether gRPC refuses to send `message` (its size is over the send limit)."""
    if limit is None or message is None:
        return False
    size = getattr(message, "ByteSize", None)
    return size is not None and size() > limit


def _unary(
    method: str, behaviour: Callable[..., Awaitable[Any]], limit: int | None = None
) -> Callable[..., Awaitable[Any]]:
    async def observed(request: Any, context: grpc.aio.ServicerContext) -> Any:
        _method_series(method)[0].inc()
        started = time.perf_counter()
        error: BaseException | None = None
        response = None
        try:
            response = await behaviour(request, context)
            return response
        except BaseException as exc:
            error = exc
            raise
        finally:
            _finish(method, started, context, error, too_large(response, limit))

    return observed


def _stream(
    method: str, behaviour: Callable[..., AsyncIterator[Any]], limit: int | None = None
) -> Callable[..., Any]:
    async def observed(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
        in_flight, _, streamed = _method_series(method)
        in_flight.inc()
        started = time.perf_counter()
        error: BaseException | None = None
        message = None
        try:
            async for message in behaviour(request, context):
                streamed.inc()
                yield message
            message = None  # every message was taken: none was refused
        except BaseException as exc:
            error = exc
            raise
        finally:
            _finish(method, started, context, error, too_large(message, limit))

    return observed


class MetricsInterceptor(grpc.aio.ServerInterceptor):
    """Wraps every handler with metrics: unary and server-streaming calls (the gateway's own)
    and client-streaming ones (server reflection, which grpcurl and buf curl call).

    `max_send_message_bytes`: the server's `grpc.max_send_message_length`, so that a call
    gRPC ended because an answer was over it is counted RESOURCE_EXHAUSTED, as its client
    saw it (see call_status); unset, such a call counts as OK (unary) or CANCELLED (stream).
    """

    def __init__(self, max_send_message_bytes: int | None = None) -> None:
        self._limit = max_send_message_bytes

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
            return handler._replace(unary_unary=_unary(method, handler.unary_unary, self._limit))
        if handler.unary_stream is not None:
            behaviour = handler.unary_stream
            # Async generators yield their messages; coroutines write them (Health.Watch).
            if inspect.isasyncgenfunction(behaviour):
                return handler._replace(unary_stream=_stream(method, behaviour, self._limit))
            return handler._replace(unary_stream=_unary(method, behaviour))
        # Client streaming (reflection): the wrappers pass the request iterator through.
        if handler.stream_stream is not None:
            behaviour = handler.stream_stream
            if inspect.isasyncgenfunction(behaviour):
                return handler._replace(stream_stream=_stream(method, behaviour, self._limit))
            return handler._replace(stream_stream=_unary(method, behaviour))
        if handler.stream_unary is not None:
            return handler._replace(stream_unary=_unary(method, handler.stream_unary, self._limit))
        return handler


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
