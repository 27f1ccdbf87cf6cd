"""The REST upstream: where calls go (flavour: base URL, path and auth) and how (HTTP client).

Flavours: the Gemini API (API key: the gateway's own or the caller's) and the emulator,
which speaks the same API on a loopback port; and Vertex AI (OAuth token from Application
Default Credentials, paths under projects/*/locations/*/publishers/google/models/*).
Transports: aiohttp (default) and httpx, chosen by settings and compared in bench/. Both
keep one pooled client; a response is closed (its connection dropped) as soon as the
gRPC call ends early, so a cancelled call never leaves an upstream request running.
"""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager, suppress
from typing import Any, Protocol

import aiohttp
import grpc

from gemini_gateway.server import errors
from gemini_gateway.server.config import GEMINI_API_URL, Settings
from gemini_gateway.server.routes import HttpCall

USER_AGENT = "gemini-grpc-gateway/0.1"
Metadata = Sequence[tuple[str, str | bytes]]


# --- flavours -------------------------------------------------------------------------


class Flavour(Protocol):
    def url(self, path: str) -> str: ...

    async def headers(self, metadata: Metadata) -> dict[str, str]: ...


def _metadata_value(metadata: Metadata, key: str) -> str | None:
    for name, value in metadata:
        if name == key:
            return value.decode() if isinstance(value, bytes) else value
    return None


class GeminiFlavour:
    """Google's Gemini API, or anything that speaks it (the emulator)."""

    def __init__(self, base_url: str, api_key: str | None, pass_through: bool) -> None:
        self.base_url = base_url.rstrip("/")
        self._api_key = api_key
        self._pass_through = pass_through

    def url(self, path: str) -> str:
        return self.base_url + path

    async def headers(self, metadata: Metadata) -> dict[str, str]:
        key = _metadata_value(metadata, "x-goog-api-key") if self._pass_through else None
        key = key or self._api_key
        return {"x-goog-api-key": key} if key else {}


# /v1beta/models/{model}:{verb} -> Vertex AI's publisher-model path.
_VERTEX_MODEL_PATH = re.compile(
    r"^/v1beta/models/([^/:]+):(generateContent|streamGenerateContent|countTokens)$"
)


class VertexFlavour:
    """Vertex AI: same JSON bodies, other paths, OAuth bearer tokens."""

    def __init__(self, project: str, location: str, base_url: str | None, credentials: Any) -> None:
        host = (
            "aiplatform.googleapis.com"
            if location == "global"
            else (f"{location}-aiplatform.googleapis.com")
        )
        self.base_url = (base_url or f"https://{host}").rstrip("/")
        self._prefix = f"/v1/projects/{project}/locations/{location}/publishers/google/models/"
        self._credentials = credentials
        self._refresh_lock = asyncio.Lock()

    def url(self, path: str) -> str:
        match = _VERTEX_MODEL_PATH.match(path)
        if match is None:
            raise errors.UpstreamError(
                grpc.StatusCode.UNIMPLEMENTED,
                "the Vertex AI upstream serves generateContent, streamGenerateContent and "
                f"countTokens on models/*; {path} has no Vertex AI equivalent",
            )
        return f"{self.base_url}{self._prefix}{match.group(1)}:{match.group(2)}"

    async def headers(self, metadata: Metadata) -> dict[str, str]:
        credentials = self._credentials
        if not credentials.valid:
            async with self._refresh_lock:
                if not credentials.valid:
                    # google-auth refreshes synchronously; keep it off the event loop.
                    import google.auth.transport.requests

                    request = google.auth.transport.requests.Request()
                    await asyncio.to_thread(credentials.refresh, request)
        headers = {"authorization": f"Bearer {credentials.token}"}
        quota_project = getattr(credentials, "quota_project_id", None)
        if quota_project:
            headers["x-goog-user-project"] = quota_project
        return headers


def make_flavour(settings: Settings, emulator_url: str | None = None) -> Flavour:
    api_key = settings.api_key.get_secret_value() if settings.api_key else None
    if settings.upstream == "vertex":
        import google.auth

        credentials, project = google.auth.default(
            scopes=["https://www.googleapis.com/auth/cloud-platform"]
        )
        project = settings.vertex_project or project
        if not project:
            raise ValueError("the vertex upstream needs vertex_project (or a default project)")
        return VertexFlavour(project, settings.vertex_location, settings.upstream_url, credentials)
    if settings.upstream == "emulator":
        base_url = settings.upstream_url or emulator_url
        if not base_url:
            raise ValueError("the emulator upstream needs upstream_url or an embedded emulator")
    else:
        base_url = settings.upstream_url or GEMINI_API_URL
    return GeminiFlavour(base_url, api_key, settings.pass_through_api_key)


# --- transports -----------------------------------------------------------------------


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


def _timed_out(timeout_s: float) -> errors.UpstreamError:
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
            raise _timed_out(self._timeout_s) from exc
        except aiohttp.ClientError as exc:
            raise _broken_stream(exc) from exc

    async def iter_chunks(self) -> AsyncIterator[bytes]:
        try:
            async for chunk in self._response.content.iter_any():
                yield chunk
        except TimeoutError as exc:
            raise _timed_out(self._timeout_s) from exc
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
            raise _timed_out(timeout_s) from exc
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
            raise _timed_out(self._timeout_s) from exc
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
            raise _timed_out(self._timeout_s) from exc
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
            params=params or None,
            content=body,
            headers=headers,
            timeout=timeout,
        )
        try:
            response = await self._client.send(request, stream=True)
        except httpx.TimeoutException as exc:
            raise _timed_out(timeout_s) from exc
        except httpx.HTTPError as exc:
            raise _unreachable(url, exc) from exc
        return _HttpxResponse(response, timeout_s)

    async def aclose(self) -> None:
        await self._client.aclose()


def make_transport(settings: Settings) -> Transport:
    if settings.http_client == "httpx":
        return HttpxTransport(settings)
    return AiohttpTransport(settings)


# --- the client -----------------------------------------------------------------------


class UpstreamClient:
    """Sends transcoded calls upstream; non-2xx answers become UpstreamError."""

    def __init__(self, flavour: Flavour, transport: Transport, default_timeout_s: float) -> None:
        self.flavour = flavour
        self._transport = transport
        self._default_timeout_s = default_timeout_s

    async def _open(
        self, call: HttpCall, metadata: Metadata, timeout_s: float | None, stream: bool
    ) -> UpstreamResponse:
        timeout_s = timeout_s if timeout_s is not None else self._default_timeout_s
        if timeout_s <= 0:
            raise _timed_out(0)
        headers = await self.flavour.headers(metadata)
        params = call.query
        body = None
        if call.body is not None:
            body = json.dumps(call.body, separators=(",", ":"), ensure_ascii=False).encode()
            headers["content-type"] = "application/json"
        if stream:
            params = [*params, ("alt", "sse")]
        response = await self._transport.open(
            call.verb, self.flavour.url(call.path), params, body, headers, timeout_s
        )
        if not 200 <= response.status < 300:
            try:
                error_body = await response.read()
            finally:
                await response.close()
            raise errors.from_http_response(response.status, response.content_type, error_body)
        return response

    async def call(self, call: HttpCall, metadata: Metadata, timeout_s: float | None) -> bytes:
        response = await self._open(call, metadata, timeout_s, stream=False)
        try:
            return await response.read()
        finally:
            await response.close()

    @asynccontextmanager
    async def stream(
        self, call: HttpCall, metadata: Metadata, timeout_s: float | None
    ) -> AsyncIterator[AsyncIterator[bytes]]:
        """Open an SSE stream; yields the body's chunks as they arrive off the network."""
        response = await self._open(call, metadata, timeout_s, stream=True)
        try:
            yield response.iter_chunks()
        finally:
            # Runs on normal end, on error, and when the gRPC call is cancelled.
            with suppress(Exception):
                await response.close()

    async def aclose(self) -> None:
        await self._transport.aclose()
