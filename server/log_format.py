"""Log lines as text or as JSON, and a request id for every gRPC call.

`log_format = "json"` (opt-in; `text` is the default) writes one JSON object per line:

    {"time": "2025-05-01T12:00:00.123Z", "level": "INFO", "logger": "gemini_gateway...",
     "message": "...", "request_id": "3f2c...", "trace_id": "...", "span_id": "..."}

`request_id` is there for every line logged while serving a call; `trace_id` and `span_id`
when tracing is on and a span is current; `exception` holds the traceback of a line logged
with one; `worker` the worker's number when several share the port. Messages and
tracebacks pass through the redactor (redaction.py) as every error does.

The request id: the caller's `x-request-id` metadata when it is a plausible id (1 to 128
characters of letters, digits and `-_.:/+=`), otherwise a new random one. It is kept in a
context variable for the whole call (each gRPC call runs in its own task), so every line
the call logs carries it, and it goes back to the caller as `x-request-id` trailing
metadata on every call, failed ones included (the handler's own trailers and an abort's
`grpc-status-details-bin` are kept beside it); a stream also gets it as initial metadata
with its first message (or with the headers a handler sends earlier, as TailLogs does), so
that its caller knows it while the stream runs. Trailers cost
nothing: they travel with the status. Initial metadata sent ahead of a unary answer would
be one more write per call.
"""

from __future__ import annotations

import inspect
import json
import logging
import random
import re
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping
from contextvars import ContextVar
from datetime import UTC, datetime
from typing import Any, Literal, NoReturn

import grpc

from gemini_gateway.server import redaction

REQUEST_ID_KEY = "x-request-id"
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
LogFormat = Literal["text", "json"]

_REQUEST_ID: ContextVar[str | None] = ContextVar("gateway_request_id", default=None)
_PLAUSIBLE_ID = re.compile(r"[A-Za-z0-9_.:/+=-]{1,128}")


def current_request_id() -> str | None:
    """The request id of the call being served, if any."""
    return _REQUEST_ID.get()


def new_request_id() -> str:
    # A correlation id, not a secret: the process's PRNG spares a getrandom() per call.
    return f"{random.getrandbits(128):032x}"


def request_id_from(metadata: Iterable[tuple[str, str | bytes]]) -> str:
    """The caller's `x-request-id` when plausible, else a new one."""
    for key, value in metadata:
        if key == REQUEST_ID_KEY and isinstance(value, str) and _PLAUSIBLE_ID.fullmatch(value):
            return value
    return new_request_id()


class RequestIdInterceptor(grpc.aio.ServerInterceptor):
    """Gives each call its request id (context variable) and returns it to the caller."""

    async def intercept_service(
        self,
        continuation: Callable[
            [grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler[Any, Any] | None]
        ],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[Any, Any] | None:
        # This runs in the call's own task, before any other interceptor's or the
        # handler's code: everything the call logs from here on carries the id.
        request_id = request_id_from(handler_call_details.invocation_metadata or ())
        _REQUEST_ID.set(request_id)
        handler: Any = await continuation(handler_call_details)
        if handler is None:
            return handler
        if handler.unary_unary is not None:
            return handler._replace(unary_unary=_unary(request_id, handler.unary_unary))
        if handler.unary_stream is not None:
            if inspect.isasyncgenfunction(handler.unary_stream):
                return handler._replace(unary_stream=_stream(request_id, handler.unary_stream))
            return handler._replace(unary_stream=_unary(request_id, handler.unary_stream))
        return handler


class _WithRequestId:
    """The call's context, whose trailing metadata always carries the request id: what the
    handler sets, and what an abort sends, get it added."""

    __slots__ = ("_context", "_pair")

    def __init__(self, context: grpc.aio.ServicerContext, request_id: str) -> None:
        self._context = context
        self._pair = (REQUEST_ID_KEY, request_id)
        context.set_trailing_metadata((self._pair,))

    def __getattr__(self, name: str) -> Any:
        return getattr(self._context, name)

    def set_trailing_metadata(self, trailing_metadata: Iterable[tuple[str, Any]]) -> None:
        self._context.set_trailing_metadata((*trailing_metadata, self._pair))

    async def send_initial_metadata(self, initial_metadata: Iterable[tuple[str, Any]]) -> None:
        # A handler that sends its headers early (TailLogs) sends the request id with them.
        await self._context.send_initial_metadata((*initial_metadata, self._pair))

    async def abort(
        self, code: grpc.StatusCode, details: str = "", trailing_metadata: Any = ()
    ) -> NoReturn:
        # Empty: gRPC sends the trailers set before (ours among them); else ours are added.
        trailing = (*trailing_metadata, self._pair) if trailing_metadata else ()
        await self._context.abort(code, details, trailing)
        raise AssertionError("abort returned")  # pragma: no cover (abort always raises)

    async def abort_with_status(self, status: Any) -> NoReturn:
        await self.abort(status.code, status.details, status.trailing_metadata)


def _unary(
    request_id: str, behaviour: Callable[..., Awaitable[Any]]
) -> Callable[..., Awaitable[Any]]:
    async def with_id(request: Any, context: grpc.aio.ServicerContext) -> Any:
        return await behaviour(request, _WithRequestId(context, request_id))

    return with_id


def _stream(
    request_id: str, behaviour: Callable[..., AsyncIterator[Any]]
) -> Callable[..., AsyncIterator[Any]]:
    async def with_id(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
        first = True
        async for message in behaviour(request, _WithRequestId(context, request_id)):
            if first:
                first = False
                try:
                    await context.send_initial_metadata(((REQUEST_ID_KEY, request_id),))
                except grpc.aio.UsageError:
                    pass  # the handler sent its headers (and the id) itself: TailLogs
            yield message

    return with_id


class RequestIdFilter(logging.Filter):
    """Stamps each record with the request id of the call that logged it (or None)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not hasattr(record, "request_id"):
            record.request_id = _REQUEST_ID.get()
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, request_id, trace ids."""

    def __init__(self, fields: Mapping[str, Any] | None = None) -> None:
        super().__init__()
        self._fields = dict(fields or {})

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": _utc(record.created),
            "level": record.levelname,
            "logger": record.name,
            "message": redaction.redact(record.getMessage()),
        }
        request_id = getattr(record, "request_id", None) or _REQUEST_ID.get()
        if request_id is not None:
            entry["request_id"] = request_id
        entry.update(_trace_ids())
        entry.update(self._fields)
        if record.exc_info:
            entry["exception"] = redaction.redact(self.formatException(record.exc_info))
        if record.stack_info:
            entry["stack"] = redaction.redact(self.formatStack(record.stack_info))
        return json.dumps(entry, ensure_ascii=False, default=str)


def _utc(created: float) -> str:
    return datetime.fromtimestamp(created, UTC).isoformat(timespec="milliseconds")[:-6] + "Z"


def _trace_ids() -> dict[str, str]:
    """trace_id and span_id of the current span, when tracing is on and one is current."""
    trace = sys.modules.get("opentelemetry.trace")
    if trace is None:
        return {}
    span_context = trace.get_current_span().get_span_context()
    if not span_context.is_valid:
        return {}
    return {
        "trace_id": format(span_context.trace_id, "032x"),
        "span_id": format(span_context.span_id, "016x"),
    }


def make_handler(
    log_format: LogFormat,
    stream: Any = None,
    *,
    text_format: str = TEXT_FORMAT,
    fields: Mapping[str, Any] | None = None,
) -> logging.Handler:
    """A handler writing to `stream` (stderr) in the format asked for."""
    handler = logging.StreamHandler(stream)
    handler.addFilter(RequestIdFilter())
    if log_format == "json":
        handler.setFormatter(JsonFormatter(fields))
    else:
        handler.setFormatter(logging.Formatter(text_format))
    return handler


def configure_logging(
    level: str,
    log_format: LogFormat = "text",
    *,
    text_format: str = TEXT_FORMAT,
    fields: Mapping[str, Any] | None = None,
) -> None:
    """Set up the root logger: what `serve` and each worker call at start."""
    handler = make_handler(log_format, text_format=text_format, fields=fields)
    logging.basicConfig(level=level.upper(), handlers=[handler], force=True)
