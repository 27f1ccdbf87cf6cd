"""HTTP transports to the upstream: aiohttp (default) and httpx, chosen by settings.

Both keep one pooled client and stream response bodies as they arrive. A response is
closed (its connection dropped) as soon as the gRPC call ends early, so a cancelled call
never leaves an upstream request running. Network failures become UpstreamError:
UNAVAILABLE before or during the body, DEADLINE_EXCEEDED when the time limit runs out;
their messages say what happened in words, never an exception's class name.

A unary body is read up to `max_upstream_body_mb` (after decompression): a longer one is
refused with RESOURCE_EXHAUSTED as soon as the limit is passed (or at once, when its
Content-Length says so), and its connection is dropped rather than drained, so an
oversize body is never held in memory. Error bodies are read only as far as a message
needs (`ERROR_BODY_BYTES`). The two transports are compared in bench/.

The upstream pool (`max_connections` per process) is shared out by `ConnectionSlots`, the
same for both transports: a call takes a slot before its request is sent and gives it back
when its response is closed (a unary answer once read, a stream when it ends or its call
is cancelled), so each call in flight holds one connection. A call that finds every slot
taken waits at most `pool_wait_s` (never past its own time limit) and is then refused with
RESOURCE_EXHAUSTED naming the limit, never queued silently inside the HTTP library, whose
own pool has the same size and so never makes a call wait. `connect_timeout_s` bounds the
connection itself (DNS, TCP, TLS), not the wait for a slot. HTTP/1.1 carries one call per
connection; docs/limits.md has the sizing and the HTTP/2 measurements.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections import deque
from collections.abc import AsyncIterator
from contextlib import suppress
from dataclasses import dataclass
from http.cookiejar import CookieJar, DefaultCookiePolicy
from typing import Any, Protocol

import aiohttp
import grpc
from google.rpc import error_details_pb2
from prometheus_client import Counter, Gauge

from gemini_gateway.server import errors
from gemini_gateway.server.config import Settings
from gemini_gateway.server.limits import LimitExceeded, quota_refusal

USER_AGENT = "gemini-grpc-gateway/0.1"

MIB = 1024 * 1024
# Of a non-2xx body, this much is read: enough for any Google error object and a snippet.
ERROR_BODY_BYTES = 256 * 1024
BODY_SIZE_SETTING = "max_upstream_body_mb"
POOL_SIZE_SETTING = "max_connections"
POOL_WAIT_SETTING = "pool_wait_s"
# QuotaFailure's quota_id for the upstream pool (per-project shares use `upstream_pool`).
POOL_QUOTA_ID = "upstream_connections"
# How long a connection is expected to be held before any has been given back, and how
# much each one given back moves the running mean (an exponentially weighted average).
DEFAULT_HOLD_S = 1.0
HOLD_MEAN_WEIGHT = 0.2
# A call stops waiting for a connection this long before its own time runs out: the gateway,
# not gRPC's deadline timer, then ends it, with a status that says why (and it is counted).
POOL_WAIT_RESERVE_S = 0.05

POOL_EXHAUSTED = Counter(
    "gateway_upstream_pool_exhausted",
    "Calls that found all max_connections upstream connections in use until pool_wait_s (or "
    "their own shorter deadline) ran out, and so were refused without being sent.",
)
CONNECTIONS_IN_USE = Gauge(
    "gateway_upstream_connections_in_use",
    "Upstream connections held by calls in flight (at most max_connections per process).",
    multiprocess_mode="livesum",  # several workers: the sum over the live ones
)


@dataclass(frozen=True)
class BodyLimits:
    """How much of an upstream answer the gateway holds: a unary body, one stream event."""

    max_body_bytes: int = 32 * MIB
    max_sse_event_bytes: int = 16 * MIB

    @classmethod
    def from_settings(cls, settings: Settings) -> BodyLimits:
        return cls(
            max_body_bytes=int(settings.max_upstream_body_mb * MIB),
            max_sse_event_bytes=int(settings.max_sse_event_mb * MIB),
        )


def body_too_large(limit: int) -> errors.UpstreamError:
    return errors.UpstreamError(
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        f"upstream answer is larger than the {errors.size_text(limit)} limit "
        f"(setting {BODY_SIZE_SETTING})",
    )


class PoolExhausted(LimitExceeded):
    """RESOURCE_EXHAUSTED: every upstream connection was in use for as long as the call
    could wait. Nothing was sent, and it is not retried (it has no transport cause)."""


class PoolTimedOut(errors.UpstreamError):
    """DEADLINE_EXCEEDED: every upstream connection was in use until the call's own time
    ran out (it was shorter than `pool_wait_s`). Nothing was sent."""


# The refusals of a call that got no connection: nothing was sent upstream.
POOL_REFUSALS = (PoolExhausted, PoolTimedOut)


def pool_exhausted(size: int, waited_s: float, retry_s: float) -> PoolExhausted:
    """The refusal of a call that found all `size` connections in use for `waited_s`,
    with RetryInfo (`retry_s`, when one should free) and QuotaFailure details."""
    what = f"all {size} upstream connections are in use (setting {POOL_SIZE_SETTING})"
    violation = error_details_pb2.QuotaFailure.Violation(
        subject="gateway:upstream",
        description=what,
        quota_id=POOL_QUOTA_ID,
        quota_metric=POOL_SIZE_SETTING,
        quota_value=size,
    )
    problem = f"{what}; none was free within {waited_s:.2g} s (setting {POOL_WAIT_SETTING})"
    return quota_refusal(problem, violation, retry_s, PoolExhausted)


class ConnectionSlots:
    """The upstream pool's connections as calls take them: at most `size` at once.

    `take` is O(1) and allocates nothing while a slot is free; a call that finds none waits,
    first come first served, for one to be given back, at most `wait_s`. A slot given back
    goes straight to the first waiter, so a newcomer cannot overtake those waiting.
    """

    __slots__ = ("_waiters", "in_use", "mean_hold_s", "size", "wait_s")

    def __init__(self, size: int, wait_s: float) -> None:
        self.size = size
        self.wait_s = wait_s
        self.in_use = 0
        self.mean_hold_s = DEFAULT_HOLD_S
        self._waiters: deque[asyncio.Future[None]] = deque()

    def take_nowait(self) -> bool:
        """Take a slot if one is free and nobody is waiting for one."""
        if self.in_use < self.size and not self._waiters:
            self.in_use += 1
            CONNECTIONS_IN_USE.inc()
            return True
        return False

    async def take(self, timeout_s: float) -> float:
        """Take a slot, waiting for one if need be; what is left of `timeout_s` then.

        PoolExhausted (RESOURCE_EXHAUSTED) when none came within `wait_s`; PoolTimedOut
        (DEADLINE_EXCEEDED) when `timeout_s`, the call's own time, ran out first (less
        POOL_WAIT_RESERVE_S, so that the gateway ends the call before gRPC's deadline does).
        """
        if self.take_nowait():
            return timeout_s
        started = time.monotonic()
        usable_s = timeout_s - POOL_WAIT_RESERVE_S
        out_of_time = 0 < self.wait_s and usable_s < self.wait_s
        if await self._wait(max(0.0, min(usable_s, self.wait_s))):
            left_s = timeout_s - (time.monotonic() - started)
            if left_s > 0:
                return left_s
            self._pass_on()  # it came too late to be of use
            out_of_time = True
        if out_of_time:
            raise PoolTimedOut(
                grpc.StatusCode.DEADLINE_EXCEEDED,
                f"upstream did not answer within {timeout_s:.3g}s: all {self.size} upstream "
                f"connections were in use (setting {POOL_SIZE_SETTING})",
            )
        raise pool_exhausted(self.size, time.monotonic() - started, self.retry_s())

    async def _wait(self, wait_s: float) -> bool:
        """Wait at most `wait_s` for a slot to be handed over; whether one was."""
        if wait_s > 0:
            waiter = asyncio.get_running_loop().create_future()
            self._waiters.append(waiter)
            try:
                async with asyncio.timeout(wait_s):
                    await waiter
                return True
            except TimeoutError:
                if waiter.done() and not waiter.cancelled():
                    return True  # handed a slot as time ran out
            except BaseException:
                if waiter.done() and not waiter.cancelled():
                    self._pass_on()  # handed one, but the call went away
                raise
            finally:
                with suppress(ValueError):
                    self._waiters.remove(waiter)
        POOL_EXHAUSTED.inc()
        return False

    def give_back(self, taken_at: float) -> None:
        """Return the slot taken at `taken_at` (time.monotonic()): to the first waiter, or
        to the pool."""
        self.mean_hold_s += HOLD_MEAN_WEIGHT * (time.monotonic() - taken_at - self.mean_hold_s)
        self._pass_on()

    def _pass_on(self) -> None:
        waiters = self._waiters
        while waiters:
            waiter = waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)  # the slot changes hands; in_use stays
                return
        self.in_use -= 1
        CONNECTIONS_IN_USE.dec()

    @property
    def waiting(self) -> int:
        """Calls waiting for a slot."""
        return len(self._waiters)

    def retry_s(self) -> float:
        """When a slot should free, best estimate: the mean hold over the slots in use."""
        return self.mean_hold_s / max(self.in_use, 1)


class UpstreamResponse(Protocol):
    status: int
    content_type: str

    async def read(self) -> bytes:
        """The whole body; RESOURCE_EXHAUSTED past the transport's body limit."""
        ...

    async def read_prefix(self, limit: int) -> tuple[bytes, bool]:
        """At most `limit` bytes of the body, and whether there was more."""
        ...

    def iter_chunks(self) -> AsyncIterator[bytes]: ...

    async def close(self) -> None: ...


class Transport(Protocol):
    async def open(
        self,
        verb: str,
        url: str,
        params: list[tuple[str, str]],
        body: bytes | None,
        headers: dict[str, str],
        timeout_s: float,
    ) -> UpstreamResponse: ...

    async def aclose(self) -> None: ...


# Exception class names (ClientConnectorError, TransferEncodingError: ...) inside a message.
_CLASS_NAME = re.compile(r"<?\b[A-Z]\w*(?:Error|Exception)\b(?::\s*|>)?")


def describe(exc: BaseException) -> str:
    """What went wrong, in the library's words less any class name."""
    text = _CLASS_NAME.sub("", str(exc)).replace("<", "").replace(">", "")
    text = " ".join(text.split()).strip(" :,")
    if not text and exc.__cause__ is not None and exc.__cause__ is not exc:
        return describe(exc.__cause__)
    return text or "the connection failed"


def _unreachable(url: str, exc: BaseException) -> errors.UpstreamError:
    host = url.split("/")[2] if "://" in url else url
    return errors.UpstreamError(
        grpc.StatusCode.UNAVAILABLE, f"cannot reach upstream {host}: {describe(exc)}"
    )


def timed_out(timeout_s: float) -> errors.UpstreamError:
    """The error of an upstream call that ran out of time (also used before sending)."""
    return errors.UpstreamError(
        grpc.StatusCode.DEADLINE_EXCEEDED, f"upstream did not answer within {timeout_s:.3g}s"
    )


def _broken_stream(exc: BaseException) -> errors.UpstreamError:
    return errors.UpstreamError(
        grpc.StatusCode.UNAVAILABLE,
        f"upstream closed the response before it ended: {describe(exc)}",
    )


def _declared_length(headers: Any) -> int | None:
    """The body's length as sent, when the headers give it (and no content coding)."""
    if headers.get("content-encoding", "identity").lower() != "identity":
        return None  # the limit is on the decoded body
    try:
        length = int(headers.get("content-length", ""))
    except ValueError:
        return None
    return length if length >= 0 else None


async def _collect(chunks: AsyncIterator[bytes], limit: int) -> tuple[bytes, bool]:
    """Up to `limit` bytes of `chunks`, and whether there were more; stops reading there."""
    parts: list[bytes] = []
    size = 0
    try:
        async for chunk in chunks:
            room = limit - size
            if len(chunk) > room:
                parts.append(chunk[:room])
                return b"".join(parts), True
            parts.append(chunk)
            size += len(chunk)
    finally:
        close = getattr(chunks, "aclose", None)  # an async generator left early
        if close is not None:
            await close()
    return b"".join(parts), False


async def _read_capped(response: UpstreamResponse, headers: Any, limit: int) -> bytes:
    """The whole body, or RESOURCE_EXHAUSTED as soon as it is known to pass `limit`."""
    declared = _declared_length(headers)
    if declared is not None and declared > limit:
        raise body_too_large(limit)  # before reading any of it
    body, more = await response.read_prefix(limit)
    if more:
        raise body_too_large(limit)
    return body


class _SlotHolder:
    """A response holding a connection slot until it is closed (once, however often), with
    what both transports keep of it: the library's response, its status and content type,
    and the call's time and body limits."""

    __slots__ = (
        "_max_body_bytes", "_response", "_slots", "_taken_at", "_timeout_s", "content_type",
        "status",
    )  # fmt: skip

    def __init__(
        self,
        response: Any,
        status: int,
        timeout_s: float,
        max_body_bytes: int,
        slots: ConnectionSlots,
        taken_at: float,
    ) -> None:
        self._response = response
        self.status = status
        self.content_type = response.headers.get("content-type", "")
        self._timeout_s = timeout_s
        self._max_body_bytes = max_body_bytes
        self._slots: ConnectionSlots | None = slots
        self._taken_at = taken_at

    def _give_back(self) -> None:
        slots = self._slots
        if slots is not None:
            self._slots = None
            slots.give_back(self._taken_at)


class _AiohttpResponse(_SlotHolder):
    __slots__ = ()
    _response: aiohttp.ClientResponse

    async def read(self) -> bytes:
        return await _read_capped(self, self._response.headers, self._max_body_bytes)

    async def read_prefix(self, limit: int) -> tuple[bytes, bool]:
        try:
            return await _collect(self._response.content.iter_any(), limit)
        except TimeoutError as exc:
            raise timed_out(self._timeout_s) from exc
        except aiohttp.ClientError as exc:
            raise _broken_stream(exc) from exc

    async def iter_chunks(self) -> AsyncIterator[bytes]:
        try:
            async for chunk in self._response.content.iter_any():
                yield chunk
        except TimeoutError as exc:
            raise timed_out(self._timeout_s) from exc
        except aiohttp.ClientError as exc:
            raise _broken_stream(exc) from exc

    async def close(self) -> None:
        self._response.close()  # drops the connection unless the body was fully read
        self._give_back()


class AiohttpTransport:
    def __init__(self, settings: Settings) -> None:
        self.limits = BodyLimits.from_settings(settings)
        self.slots = ConnectionSlots(settings.max_connections, settings.pool_wait_s)
        self._connect_timeout_s = settings.connect_timeout_s
        self._session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=settings.max_connections, ttl_dns_cache=300),
            headers={"user-agent": USER_AGENT},
            auto_decompress=True,
            skip_auto_headers=("content-type",),
            # Every caller shares this session: a cookie kept from one caller's answer would
            # go out with the next caller's request.
            cookie_jar=aiohttp.DummyCookieJar(),
        )

    async def open(
        self,
        verb: str,
        url: str,
        params: list[tuple[str, str]],
        body: bytes | None,
        headers: dict[str, str],
        timeout_s: float,
    ) -> UpstreamResponse:
        slots = self.slots
        # No coroutine made while a slot is free: this is every call's path.
        left_s = timeout_s if slots.take_nowait() else await slots.take(timeout_s)
        taken_at = time.monotonic()
        # The slot wait is over, so `connect` (pool, DNS, TCP, TLS) and `sock_connect` (TCP,
        # TLS) both bound only the connection itself.
        connect_s = min(left_s, self._connect_timeout_s)
        timeout = aiohttp.ClientTimeout(total=left_s, connect=connect_s, sock_connect=connect_s)
        try:
            response = await self._session.request(
                verb.upper(),
                url,
                params=params or None,
                data=body,
                headers=headers,
                timeout=timeout,
            )
        except BaseException as exc:
            slots.give_back(taken_at)
            if isinstance(exc, TimeoutError):
                raise timed_out(timeout_s) from exc
            if isinstance(exc, aiohttp.ClientError):
                raise _unreachable(url, exc) from exc
            raise
        return _AiohttpResponse(
            response, response.status, timeout_s, self.limits.max_body_bytes, slots, taken_at
        )

    async def aclose(self) -> None:
        await self._session.close()


class _HttpxResponse(_SlotHolder):
    __slots__ = ()

    async def read(self) -> bytes:
        return await _read_capped(self, self._response.headers, self._max_body_bytes)

    async def read_prefix(self, limit: int) -> tuple[bytes, bool]:
        import httpx

        try:
            return await _collect(self._response.aiter_bytes(), limit)
        except httpx.TimeoutException as exc:
            raise timed_out(self._timeout_s) from exc
        except httpx.HTTPError as exc:
            raise _broken_stream(exc) from exc
        finally:
            await self.close()

    async def iter_chunks(self) -> AsyncIterator[bytes]:
        import httpx

        try:
            async for chunk in self._response.aiter_bytes():  # decoded, as aiohttp's
                yield chunk
        except httpx.TimeoutException as exc:
            raise timed_out(self._timeout_s) from exc
        except httpx.HTTPError as exc:
            raise _broken_stream(exc) from exc

    async def close(self) -> None:
        try:
            await self._response.aclose()
        finally:
            self._give_back()


class HttpxTransport:
    def __init__(self, settings: Settings) -> None:
        import httpx

        self._httpx = httpx
        self.limits = BodyLimits.from_settings(settings)
        self.slots = ConnectionSlots(settings.max_connections, settings.pool_wait_s)
        self._connect_timeout_s = settings.connect_timeout_s
        self._client = httpx.AsyncClient(
            limits=httpx.Limits(
                max_connections=settings.max_connections,
                max_keepalive_connections=settings.max_connections,
            ),
            headers={"user-agent": USER_AGENT},
            # Shared by every caller, so it keeps no cookie (see AiohttpTransport).
            cookies=CookieJar(DefaultCookiePolicy(allowed_domains=[])),
        )

    async def open(
        self,
        verb: str,
        url: str,
        params: list[tuple[str, str]],
        body: bytes | None,
        headers: dict[str, str],
        timeout_s: float,
    ) -> UpstreamResponse:
        httpx = self._httpx
        slots = self.slots
        # No coroutine made while a slot is free: this is every call's path.
        left_s = timeout_s if slots.take_nowait() else await slots.take(timeout_s)
        taken_at = time.monotonic()
        timeout = httpx.Timeout(left_s, connect=min(left_s, self._connect_timeout_s))
        try:
            request = self._client.build_request(
                verb.upper(),
                url,
                params=tuple(params) or None,
                content=body,
                headers=headers,
                timeout=timeout,
            )
            response = await self._client.send(request, stream=True)
        except BaseException as exc:
            slots.give_back(taken_at)
            if isinstance(exc, httpx.TimeoutException):
                raise timed_out(timeout_s) from exc
            if isinstance(exc, httpx.HTTPError):
                raise _unreachable(url, exc) from exc
            raise
        return _HttpxResponse(
            response, response.status_code, timeout_s, self.limits.max_body_bytes, slots, taken_at
        )

    async def aclose(self) -> None:
        await self._client.aclose()


def make_transport(settings: Settings) -> Transport:
    """The HTTP client the settings name (`http_client`)."""
    if settings.http_client == "httpx":
        return HttpxTransport(settings)
    return AiohttpTransport(settings)
