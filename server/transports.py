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
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any, Protocol

import aiohttp
import grpc

from gemini_gateway.server import errors
from gemini_gateway.server.config import Settings

USER_AGENT = "gemini-grpc-gateway/0.1"

MIB = 1024 * 1024
# Of a non-2xx body, this much is read: enough for any Google error object and a snippet.
ERROR_BODY_BYTES = 256 * 1024
BODY_SIZE_SETTING = "max_upstream_body_mb"


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


class _AiohttpResponse:
    def __init__(
        self, response: aiohttp.ClientResponse, timeout_s: float, max_body_bytes: int
    ) -> None:
        self._response = response
        self._timeout_s = timeout_s
        self._max_body_bytes = max_body_bytes
        self.status = response.status
        self.content_type = response.headers.get("content-type", "")

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


class AiohttpTransport:
    def __init__(self, settings: Settings) -> None:
        self.limits = BodyLimits.from_settings(settings)
        self._connect_timeout_s = settings.connect_timeout_s
        self._session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=settings.max_connections, ttl_dns_cache=300),
            headers={"user-agent": USER_AGENT},
            auto_decompress=True,
            skip_auto_headers=("content-type",),
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
        timeout = aiohttp.ClientTimeout(
            total=timeout_s, connect=min(timeout_s, self._connect_timeout_s)
        )
        try:
            response = await self._session.request(
                verb.upper(),
                url,
                params=params or None,
                data=body,
                headers=headers,
                timeout=timeout,
            )
        except TimeoutError as exc:
            raise timed_out(timeout_s) from exc
        except aiohttp.ClientError as exc:
            raise _unreachable(url, exc) from exc
        return _AiohttpResponse(response, timeout_s, self.limits.max_body_bytes)

    async def aclose(self) -> None:
        await self._session.close()


class _HttpxResponse:
    def __init__(self, response: Any, timeout_s: float, max_body_bytes: int) -> None:
        self._response = response
        self._timeout_s = timeout_s
        self._max_body_bytes = max_body_bytes
        self.status = response.status_code
        self.content_type = response.headers.get("content-type", "")

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
            await self._response.aclose()

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
        await self._response.aclose()


class HttpxTransport:
    def __init__(self, settings: Settings) -> None:
        import httpx

        self._httpx = httpx
        self.limits = BodyLimits.from_settings(settings)
        self._connect_timeout_s = settings.connect_timeout_s
        self._client = httpx.AsyncClient(
            limits=httpx.Limits(
                max_connections=settings.max_connections,
                max_keepalive_connections=settings.max_connections,
            ),
            headers={"user-agent": USER_AGENT},
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
        timeout = httpx.Timeout(timeout_s, connect=min(timeout_s, self._connect_timeout_s))
        request = self._client.build_request(
            verb.upper(),
            url,
            params=tuple(params) or None,
            content=body,
            headers=headers,
            timeout=timeout,
        )
        try:
            response = await self._client.send(request, stream=True)
        except httpx.TimeoutException as exc:
            raise timed_out(timeout_s) from exc
        except httpx.HTTPError as exc:
            raise _unreachable(url, exc) from exc
        return _HttpxResponse(response, timeout_s, self.limits.max_body_bytes)

    async def aclose(self) -> None:
        await self._client.aclose()


def make_transport(settings: Settings) -> Transport:
    """The HTTP client the settings name (`http_client`)."""
    if settings.http_client == "httpx":
        return HttpxTransport(settings)
    return AiohttpTransport(settings)
