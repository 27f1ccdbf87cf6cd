"""HTTP transports to the upstream: aiohttp (default) and httpx, chosen by settings.

Both keep one pooled client and stream response bodies as they arrive. A response is
closed (its connection dropped) as soon as the gRPC call ends early, so a cancelled call
never leaves an upstream request running. Network failures become UpstreamError:
UNAVAILABLE before or during the body, DEADLINE_EXCEEDED when the time limit runs out.
The two are compared in bench/.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any, Protocol

import aiohttp
import grpc

from gemini_gateway.server import errors
from gemini_gateway.server.config import Settings

USER_AGENT = "gemini-grpc-gateway/0.1"


class UpstreamResponse(Protocol):
    status: int
    content_type: str

    async def read(self) -> bytes: ...

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


def _unreachable(url: str, exc: BaseException) -> errors.UpstreamError:
    host = url.split("/")[2] if "://" in url else url
    return errors.UpstreamError(
        grpc.StatusCode.UNAVAILABLE, f"cannot reach upstream {host}: {type(exc).__name__}: {exc}"
    )


def timed_out(timeout_s: float) -> errors.UpstreamError:
    """The error of an upstream call that ran out of time (also used before sending)."""
    return errors.UpstreamError(
        grpc.StatusCode.DEADLINE_EXCEEDED, f"upstream did not answer within {timeout_s:.3g}s"
    )


def _broken_stream(exc: BaseException) -> errors.UpstreamError:
    return errors.UpstreamError(
        grpc.StatusCode.UNAVAILABLE,
        f"upstream closed the response before it ended: {type(exc).__name__}: {exc}",
    )


class _AiohttpResponse:
    def __init__(self, response: aiohttp.ClientResponse, timeout_s: float) -> None:
        self._response = response
        self._timeout_s = timeout_s
        self.status = response.status
        self.content_type = response.headers.get("content-type", "")

    async def read(self) -> bytes:
        try:
            return await self._response.read()
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
        return _AiohttpResponse(response, timeout_s)

    async def aclose(self) -> None:
        await self._session.close()


class _HttpxResponse:
    def __init__(self, response: Any, timeout_s: float) -> None:
        self._response = response
        self._timeout_s = timeout_s
        self.status = response.status_code
        self.content_type = response.headers.get("content-type", "")

    async def read(self) -> bytes:
        import httpx

        try:
            return await self._response.aread()
        except httpx.TimeoutException as exc:
            raise timed_out(self._timeout_s) from exc
        except httpx.HTTPError as exc:
            raise _broken_stream(exc) from exc
        finally:
            await self._response.aclose()

    async def iter_chunks(self) -> AsyncIterator[bytes]:
        import httpx

        try:
            async for chunk in self._response.aiter_raw():
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
        return _HttpxResponse(response, timeout_s)

    async def aclose(self) -> None:
        await self._client.aclose()


def make_transport(settings: Settings) -> Transport:
    """The HTTP client the settings name (`http_client`)."""
    if settings.http_client == "httpx":
        return HttpxTransport(settings)
    return AiohttpTransport(settings)
