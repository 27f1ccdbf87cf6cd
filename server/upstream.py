"""The REST upstream client: sends transcoded calls through a flavour and a transport.

Where a call goes and how it authenticates is the flavour's (flavours.py: Gemini API,
emulator, Vertex AI); how it travels is the transport's (transports.py: aiohttp, httpx).
This module joins the two and turns non-2xx answers into UpstreamError. It also
re-exports the names other modules import from here.

Credentials travel only in headers (`x-goog-api-key`, `authorization`), never in the URL,
and each is registered for redaction (redaction.py) before the request leaves, so that no
error made while serving the call can quote it, whatever the upstream echoes.

Time limits: a call with a gRPC deadline gets what is left of it; one without gets
`default_timeout_s` (setting upstream_timeout_s) when unary and `stream_timeout_s`
(upstream_stream_timeout_s) for a whole stream. Retries included: every attempt gets only
what is left of the call's time.

Retries (retries.py): a request that failed before any byte of its answer arrived (HTTP
429, 503, a connection refused or broken) may be sent again, by the rule written there.
Only the opening of a stream is retried: once `stream()` has yielded, what follows reaches
the caller and is never repeated. Without a Retrier (retries off) each call is one request.

Each attempt holds one of the upstream pool's connections (transports.ConnectionSlots)
from its request until its response is closed; a failed attempt's is closed before any
retry, so a call never holds two. A call refused for want of a connection (POOL_REFUSALS)
is not retried: it carries no transport failure to retry.

Every attempt is measured (`gateway_upstream_request_seconds{method,code}`) and, with a
tracer, is a CLIENT span under the gRPC call's span, whose W3C trace context it carries
upstream in a `traceparent` header. Spans carry the method, host and path, the HTTP status
and how often the request was sent before; never the query, a header value, a body or an
error message (which may quote the prompt).
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass
from functools import lru_cache
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from gemini_gateway.server import errors, metrics, redaction, retries
from gemini_gateway.server.flavours import (
    Flavour,
    GeminiFlavour,
    Metadata,
    VertexFlavour,
    make_flavour,
)
from gemini_gateway.server.routes import HttpCall
from gemini_gateway.server.sse import SseReader
from gemini_gateway.server.transports import (
    ERROR_BODY_BYTES,
    POOL_REFUSALS,
    USER_AGENT,
    AiohttpTransport,
    BodyLimits,
    ConnectionSlots,
    HttpxTransport,
    Transport,
    UpstreamResponse,
    make_transport,
    timed_out,
)

if TYPE_CHECKING:
    from opentelemetry.trace import Span, Tracer

__all__ = [
    "USER_AGENT",
    "AiohttpTransport",
    "BodyLimits",
    "Flavour",
    "GeminiFlavour",
    "HttpxTransport",
    "Metadata",
    "Transport",
    "UpstreamClient",
    "UpstreamResponse",
    "VertexFlavour",
    "make_flavour",
    "make_transport",
]


@lru_cache(maxsize=512)
def method_label(selector: str) -> str:
    """A route's selector as the gRPC method path the call metrics use (`/pkg.Service/M`)."""
    service, _, name = selector.rpartition(".")
    return f"/{service}/{name}" if service else "unknown"


def _response_header(response: UpstreamResponse, name: str) -> str | None:
    """A header of the answer. The transports' responses keep their library's response
    (aiohttp's and httpx's both have case-insensitive `headers`) as `_response`."""
    headers = getattr(response, "headers", None)
    if headers is None:
        headers = getattr(getattr(response, "_response", None), "headers", None)
    if headers is None:
        return None
    value = headers.get(name)
    return value if isinstance(value, str) else None


@dataclass
class _Failed:
    """An attempt that got no usable answer: its error, and whether it may be retried."""

    error: errors.UpstreamError
    reason: retries.RetryReason | None
    server_delay_s: float | None
    took_s: float


class _Exchange:
    """One attempt: timed into gateway_upstream_request_seconds, and its span when traced."""

    __slots__ = ("_ended", "_method", "_started", "code", "span")

    def __init__(self, method: str, span: Span | None) -> None:
        self._method = method
        self._started = time.perf_counter()
        self._ended = False
        self.span = span
        self.code = "unreachable"

    def elapsed(self) -> float:
        return time.perf_counter() - self._started

    def answered(self, status: int) -> None:
        self.code = str(status) if 100 <= status <= 599 else "other"
        if self.span is not None:
            self.span.set_attribute("http.response.status_code", status)

    def end(self, error: BaseException | None = None) -> None:
        """Observe the attempt once, when its answer ended (or could not be had)."""
        if self._ended:
            return
        self._ended = True
        if self.code == "unreachable" and isinstance(error, errors.UpstreamError):
            if error.code.name == "DEADLINE_EXCEEDED":
                self.code = "timeout"
        # A call refused for want of a connection sent nothing: not an upstream request.
        if not isinstance(error, POOL_REFUSALS):
            metrics.UPSTREAM_SECONDS.labels(self._method, self.code).observe(self.elapsed())
        if self.span is not None:
            _end_span(self.span, self.code, error)


def _end_span(span: Span, code: str, error: BaseException | None) -> None:
    from opentelemetry.trace import Status, StatusCode

    failed = not code.isdigit() or int(code) >= 400
    if isinstance(error, errors.UpstreamError):
        # The gRPC status only: the message may quote the request (never in a span).
        span.set_attribute("error.type", error.code.name)
        failed = True
    elif error is not None:
        span.set_attribute("error.type", "cancelled" if _cancelled(error) else "error")
        failed = True
    elif failed:
        span.set_attribute("error.type", code)
    if failed:
        span.set_status(Status(StatusCode.ERROR))
    span.end()


def _cancelled(error: BaseException) -> bool:
    return isinstance(error, asyncio.CancelledError | GeneratorExit)


class UpstreamClient:
    """Sends transcoded calls upstream; non-2xx answers become UpstreamError.

    `retrier`: a Retrier sends failed requests again by the rule of retries.py (None: each
    call is exactly one request). `tracer`: an OpenTelemetry tracer for the attempts' spans
    (None: no tracing work at all).
    """

    def __init__(
        self,
        flavour: Flavour,
        transport: Transport,
        default_timeout_s: float,
        *,
        stream_timeout_s: float | None = None,
        limits: BodyLimits | None = None,
        retrier: retries.Retrier | None = None,
        tracer: Tracer | None = None,
    ) -> None:
        self.flavour = flavour
        self._transport = transport
        self._default_timeout_s = default_timeout_s
        self._stream_timeout_s = default_timeout_s if stream_timeout_s is None else stream_timeout_s
        self.limits = limits or getattr(transport, "limits", None) or BodyLimits()
        self.retrier = retrier
        self.tracer = tracer

    @property
    def pool(self) -> ConnectionSlots | None:
        """The upstream pool's connection slots (None for a transport without them)."""
        slots = getattr(self._transport, "slots", None)
        return slots if isinstance(slots, ConnectionSlots) else None

    async def _open(
        self, call: HttpCall, metadata: Metadata, timeout_s: float | None, stream: bool
    ) -> tuple[UpstreamResponse, _Exchange]:
        if timeout_s is None:
            timeout_s = self._stream_timeout_s if stream else self._default_timeout_s
        if timeout_s <= 0:
            raise timed_out(0)
        deadline = time.monotonic() + timeout_s
        # Of the method called, before adapting.
        safe = self.retrier is not None and retries.side_effect_free(call)
        method = method_label(call.selector)
        call = self.flavour.adapt(call)  # before auth: an unserved call costs no token
        headers = await self.flavour.headers(metadata)
        redaction.remember_sent(headers, metadata)  # before anything can echo them
        params = call.query
        body = None
        if call.body is not None:
            body = json.dumps(call.body, separators=(",", ":"), ensure_ascii=False).encode()
            headers["content-type"] = "application/json"
        if stream:
            params = [*params, ("alt", "sse")]
        url = self.flavour.url(call.path)
        retrier = self.retrier
        if retrier is not None:
            retrier.call_started()
        attempt = 1
        while True:
            left = deadline - time.monotonic() if attempt > 1 else timeout_s
            outcome = await self._attempt(
                call.verb, url, params, body, headers, left, method, attempt, safe
            )
            if not isinstance(outcome, _Failed):
                return outcome
            delay = None
            if retrier is not None:
                delay = retrier.delay_s(
                    outcome.reason,
                    outcome.server_delay_s,
                    attempt,
                    outcome.took_s,
                    deadline - time.monotonic(),
                )
            if delay is None:
                raise outcome.error
            if self.tracer is not None:
                _note_retry(outcome, attempt, delay)
            await asyncio.sleep(delay)
            attempt += 1

    async def _attempt(
        self,
        verb: str,
        url: str,
        params: list[tuple[str, str]],
        body: bytes | None,
        headers: dict[str, str],
        timeout_s: float,
        method: str,
        attempt: int,
        safe: bool,
    ) -> tuple[UpstreamResponse, _Exchange] | _Failed:
        """Send the request once: the opened answer, or why it failed."""
        span = None
        if self.tracer is not None:
            span, headers = self._traced(verb, url, headers, attempt)
        exchange = _Exchange(method, span)
        try:
            response = await self._transport.open(verb, url, params, body, headers, timeout_s)
        except errors.UpstreamError as exc:
            exchange.end(exc)
            reason = retries.connection_reason(exc, safe) if self.retrier is not None else None
            return _Failed(exc, reason, None, exchange.elapsed())
        except BaseException as exc:  # cancelled while connecting
            exchange.end(exc)
            raise
        exchange.answered(response.status)
        if 200 <= response.status < 300:
            return response, exchange
        try:
            try:
                error_body, _cut = await response.read_prefix(ERROR_BODY_BYTES)
            finally:
                await response.close()
            error = errors.from_http_response(response.status, response.content_type, error_body)
        except BaseException as exc:
            exchange.end(exc)
            raise
        exchange.end(error)
        reason = None
        delay = None
        if self.retrier is not None:
            reason = retries.status_reason(response.status, safe)
            if reason is not None:
                retry_after = _response_header(response, "retry-after")
                delay = retries.server_delay_s(error, retry_after)
        return _Failed(error, reason, delay, exchange.elapsed())

    def _traced(
        self, verb: str, url: str, headers: dict[str, str], attempt: int
    ) -> tuple[Span, dict[str, str]]:
        """The attempt's CLIENT span, and the headers with its trace context added."""
        from opentelemetry import trace

        from gemini_gateway.server.tracing import inject_trace_context

        assert self.tracer is not None
        parts = urlsplit(url)
        host = parts.hostname or ""
        if ":" in host:
            host = f"[{host}]"  # an IPv6 literal
        where = host if parts.port is None else f"{host}:{parts.port}"
        attributes: dict[str, Any] = {
            "http.request.method": verb.upper(),
            "url.scheme": parts.scheme,
            "url.path": parts.path,
            # Without user info or query: the path says what was called, the query is
            # request data.
            "url.full": f"{parts.scheme}://{where}{parts.path}",
            "server.address": parts.hostname or "",
        }
        if parts.port is not None:
            attributes["server.port"] = parts.port
        if attempt > 1:
            attributes["http.request.resend_count"] = attempt - 1
        span = self.tracer.start_span(
            verb.upper(), kind=trace.SpanKind.CLIENT, attributes=attributes
        )
        sent = dict(headers)
        inject_trace_context(sent, span)
        return span, sent

    async def call(self, call: HttpCall, metadata: Metadata, timeout_s: float | None) -> bytes:
        """The body of a unary answer (at most limits.max_body_bytes)."""
        response, exchange = await self._open(call, metadata, timeout_s, stream=False)
        error: BaseException | None = None
        try:
            return await response.read()
        except BaseException as exc:
            error = exc
            raise
        finally:
            await response.close()
            exchange.end(error)

    @asynccontextmanager
    async def stream(
        self, call: HttpCall, metadata: Metadata, timeout_s: float | None
    ) -> AsyncIterator[AsyncIterator[bytes]]:
        """Open an SSE stream; yields the body's chunks as they arrive off the network.

        Retries (when on) happen only here, before this yields: the opening is the boundary
        after which nothing is sent again. An UpstreamError raised inside the block (by
        whoever parses the events) leaves it with the call's secrets redacted, wherever it
        was built.
        """
        try:
            response, exchange = await self._open(call, metadata, timeout_s, stream=True)
        except errors.UpstreamError as exc:
            raise exc.redact(redaction.current(self._call_secrets(metadata))) from None
        error: BaseException | None = None
        try:
            yield response.iter_chunks()
        except errors.UpstreamError as exc:
            error = exc
            raise exc.redact(redaction.current(self._call_secrets(metadata))) from None
        except BaseException as exc:
            error = exc
            raise
        finally:
            # Runs on normal end, on error, and when the gRPC call is cancelled.
            with suppress(Exception):
                await response.close()
            exchange.end(error)

    @asynccontextmanager
    async def stream_events(
        self, call: HttpCall, metadata: Metadata, timeout_s: float | None
    ) -> AsyncIterator[AsyncIterator[str]]:
        """Open an SSE stream; yields each event's data as soon as its last byte arrives.

        One event may hold at most limits.max_sse_event_bytes (RESOURCE_EXHAUSTED past it).
        """
        async with self.stream(call, metadata, timeout_s) as chunks:
            yield sse_events(chunks, SseReader(self.limits.max_sse_event_bytes))

    @staticmethod
    def _call_secrets(metadata: Metadata) -> list[str]:
        found = redaction.caller_credentials(metadata)
        return [
            secret
            for name, value in found.items()
            for secret in redaction.header_secrets(name, value)
        ]

    async def aclose(self) -> None:
        await self._transport.aclose()


def _note_retry(failed: _Failed, attempt: int, delay_s: float) -> None:
    """A `retry` event on the call's span: why, after which attempt, and the wait."""
    from opentelemetry import trace

    trace.get_current_span().add_event(
        "retry",
        {
            "gateway.retry.reason": failed.reason.value if failed.reason else "",
            "gateway.retry.attempt": attempt,
            "gateway.retry.delay_s": round(delay_s, 6),
            "gateway.retry.status": failed.error.code.name,
        },
    )


async def sse_events(chunks: AsyncIterator[bytes], reader: SseReader) -> AsyncIterator[str]:
    """Each SSE event's data as soon as its last byte arrives, then what the end completes."""
    async for chunk in chunks:
        for payload in reader.feed(chunk):
            yield payload
    for payload in reader.close():
        yield payload
