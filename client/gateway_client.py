"""A small async Python client for the gateway, built on the generated stubs."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator, Mapping
from typing import Any, ClassVar

import grpc

from gemini_gateway.generated.google.ai.generativelanguage.v1beta import (
    content_pb2,
    generative_service_pb2,
    generative_service_pb2_grpc,
    model_pb2,
    model_service_pb2,
    model_service_pb2_grpc,
)

DEFAULT_TARGET = "127.0.0.1:50051"
DEFAULT_MODEL = "models/gemini-2.5-flash"


def model_name(model: str) -> str:
    """Accept "gemini-2.5-flash" as well as "models/gemini-2.5-flash" or "tunedModels/x"."""
    return model if "/" in model else f"models/{model}"


def text_request(
    model: str,
    prompt: str,
    labels: Mapping[str, str] | None = None,
    system_instruction: str | None = None,
    generation_config: generative_service_pb2.GenerationConfig | None = None,
) -> generative_service_pb2.GenerateContentRequest:
    request = generative_service_pb2.GenerateContentRequest(
        model=model_name(model),
        contents=[content_pb2.Content(role="user", parts=[content_pb2.Part(text=prompt)])],
        labels=dict(labels or {}),
    )
    if system_instruction:
        request.system_instruction.parts.add(text=system_instruction)
    if generation_config is not None:
        request.generation_config.CopyFrom(generation_config)
    return request


def response_text(response: generative_service_pb2.GenerateContentResponse) -> str:
    """The text parts of the first candidate, joined."""
    if not response.candidates:
        return ""
    return "".join(part.text for part in response.candidates[0].content.parts)


def call_metadata(api_key: str | None, token: str | None) -> tuple[tuple[str, str], ...]:
    """What every call carries: the caller's token (`authorization: Bearer`, how the gateway
    knows its callers) and, in the gateway's pass-through mode, the caller's own API key."""
    metadata: list[tuple[str, str]] = []
    if token:
        metadata.append(("authorization", f"Bearer {token}"))
    if api_key:
        metadata.append(("x-goog-api-key", api_key))
    return tuple(metadata)


OWN_PROJECT = "-"


def project_name(project: str | None) -> str:
    """`projects/{project}`; `projects/-` (the caller's own project) when None."""
    return f"projects/{project or OWN_PROJECT}"


def open_channel(
    target: str, *, secure: bool = False, root_certificates: bytes | None = None
) -> grpc.aio.Channel:
    """A grpc.aio channel to `target`: TLS when `secure` or given root certificates."""
    if secure or root_certificates:
        credentials = grpc.ssl_channel_credentials(root_certificates=root_certificates)
        return grpc.aio.secure_channel(target, credentials)
    return grpc.aio.insecure_channel(target)


class ProjectClient:
    """A channel to the gateway, the caller's credentials, and the project to work on: the
    base of the clients of the gateway's own services, each with its `stub_class`.

    The gateway knows callers by their bearer token (`token`); without one, a gateway that
    has no callers configured answers for its `default` project. `project` names the
    project (the caller's own when None). Pass `channel` to use a channel you own; `close`
    then leaves it open, so several clients can share one channel.
    """

    stub_class: ClassVar[type[Any]]
    stub: Any

    def __init__(
        self,
        target: str = DEFAULT_TARGET,
        *,
        token: str | None = None,
        api_key: str | None = None,
        root_certificates: bytes | None = None,
        secure: bool = False,
        project: str | None = None,
        channel: grpc.aio.Channel | None = None,
    ) -> None:
        self._owns_channel = channel is None
        self.channel = channel or open_channel(
            target, secure=secure, root_certificates=root_certificates
        )
        self.metadata = call_metadata(api_key, token)
        self.project = project
        self.parent = project_name(project)
        self.stub = self.stub_class(self.channel)

    async def close(self) -> None:
        if self._owns_channel:
            await self.channel.close()


class GatewayClient:
    """Async client (grpc.aio): one channel, stubs for the generative and model services."""

    def __init__(
        self,
        target: str = DEFAULT_TARGET,
        *,
        api_key: str | None = None,
        token: str | None = None,
        root_certificates: bytes | None = None,
        secure: bool = False,
    ) -> None:
        self.channel = open_channel(target, secure=secure, root_certificates=root_certificates)
        self._metadata = call_metadata(api_key, token)
        self.generative = generative_service_pb2_grpc.GenerativeServiceStub(self.channel)
        self.models = model_service_pb2_grpc.ModelServiceStub(self.channel)

    async def generate(
        self, request: generative_service_pb2.GenerateContentRequest, timeout: float | None = None
    ) -> generative_service_pb2.GenerateContentResponse:
        return await self.generative.GenerateContent(
            request, metadata=self._metadata, timeout=timeout
        )

    async def stream(
        self, request: generative_service_pb2.GenerateContentRequest, timeout: float | None = None
    ) -> AsyncIterator[generative_service_pb2.GenerateContentResponse]:
        call = self.generative.StreamGenerateContent(
            request, metadata=self._metadata, timeout=timeout
        )
        async for chunk in call:
            yield chunk

    async def count_tokens(
        self, model: str, prompt: str
    ) -> generative_service_pb2.CountTokensResponse:
        return await self.generative.CountTokens(
            _count_request(model, prompt), metadata=self._metadata
        )

    async def list_models(self, page_size: int = 0) -> list[model_pb2.Model]:
        models: list[model_pb2.Model] = []
        page_token = ""
        while True:
            page = await self.models.ListModels(
                model_service_pb2.ListModelsRequest(page_size=page_size, page_token=page_token),
                metadata=self._metadata,
            )
            models.extend(page.models)
            page_token = page.next_page_token
            if not page_token:
                return models

    async def close(self) -> None:
        await self.channel.close()

    async def __aenter__(self) -> GatewayClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()


def _count_request(model: str, prompt: str) -> generative_service_pb2.CountTokensRequest:
    return generative_service_pb2.CountTokensRequest(
        model=model_name(model),
        contents=[content_pb2.Content(role="user", parts=[content_pb2.Part(text=prompt)])],
    )


class SyncGatewayClient:
    """Blocking client for code without an event loop; the same calls as GatewayClient."""

    def __init__(
        self,
        target: str = DEFAULT_TARGET,
        *,
        api_key: str | None = None,
        token: str | None = None,
        root_certificates: bytes | None = None,
        secure: bool = False,
    ) -> None:
        if secure or root_certificates:
            credentials = grpc.ssl_channel_credentials(root_certificates=root_certificates)
            self.channel = grpc.secure_channel(target, credentials)
        else:
            self.channel = grpc.insecure_channel(target)
        self._metadata = call_metadata(api_key, token)
        self.generative = generative_service_pb2_grpc.GenerativeServiceStub(self.channel)
        self.models = model_service_pb2_grpc.ModelServiceStub(self.channel)

    def generate(
        self, request: generative_service_pb2.GenerateContentRequest, timeout: float | None = None
    ) -> generative_service_pb2.GenerateContentResponse:
        return self.generative.GenerateContent(request, metadata=self._metadata, timeout=timeout)

    def stream(
        self, request: generative_service_pb2.GenerateContentRequest, timeout: float | None = None
    ) -> Iterator[generative_service_pb2.GenerateContentResponse]:
        yield from self.generative.StreamGenerateContent(
            request, metadata=self._metadata, timeout=timeout
        )

    def count_tokens(self, model: str, prompt: str) -> generative_service_pb2.CountTokensResponse:
        return self.generative.CountTokens(_count_request(model, prompt), metadata=self._metadata)

    def list_models(self, page_size: int = 0) -> list[model_pb2.Model]:
        models: list[model_pb2.Model] = []
        page_token = ""
        while True:
            page = self.models.ListModels(
                model_service_pb2.ListModelsRequest(page_size=page_size, page_token=page_token),
                metadata=self._metadata,
            )
            models.extend(page.models)
            page_token = page.next_page_token
            if not page_token:
                return models

    def close(self) -> None:
        self.channel.close()

    def __enter__(self) -> SyncGatewayClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
