"""Upstream flavours: where a transcoded call goes and how it authenticates there.

- GeminiFlavour: Google's Gemini API with an API key (the gateway's own, or the caller's
  `x-goog-api-key` in pass-through mode); also the emulator, which speaks the same API.
- VertexFlavour: Vertex AI with an OAuth token from Application Default Credentials. Its
  paths are http rules in a service-config file (vertex_ai_v1.yaml, shipped with the
  stubs), so serving one more method there is one more rule; methods without a rule
  answer UNIMPLEMENTED.

A flavour turns a call made for the Gemini API into the call it serves (`adapt`), joins a
path to its base URL (`url`) and gives the auth headers (`headers`).
"""

from __future__ import annotations

import asyncio
from collections.abc import Collection
from pathlib import Path
from typing import Any, Protocol

import grpc

import gemini_gateway.generated.google.ai.generativelanguage.v1beta as v1beta
from gemini_gateway.generated.google.ai.generativelanguage.v1beta import (
    generative_service_pb2,
    model_service_pb2,
)
from gemini_gateway.server import errors
from gemini_gateway.server.config import GEMINI_API_URL, Settings
from gemini_gateway.server.routes import HttpCall, UpstreamRules

# A call's metadata as grpc.aio gives it (grpc.aio.Metadata or a tuple of pairs).
Metadata = Collection[tuple[str, str | bytes]]

# Vertex AI's paths for the v1beta methods; `project` and `location` come from settings.
VERTEX_SERVICE_CONFIG = Path(next(iter(v1beta.__path__))) / "vertex_ai_v1.yaml"
VERTEX_VARIABLES = ("project", "location")
# The rules name methods of these modules; importing them puts the methods in the pool.
_RULE_MODULES = (generative_service_pb2, model_service_pb2)


class Flavour(Protocol):
    def adapt(self, call: HttpCall) -> HttpCall:
        """The call as this upstream serves it; UpstreamError when it serves no such call."""
        ...

    def url(self, path: str) -> str: ...

    async def headers(self, metadata: Metadata) -> dict[str, str]: ...


def metadata_value(metadata: Metadata, key: str) -> str | None:
    """The first value of a gRPC metadata key, as text."""
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

    def adapt(self, call: HttpCall) -> HttpCall:
        return call  # calls are transcoded for this API in the first place

    def url(self, path: str) -> str:
        return self.base_url + path

    async def headers(self, metadata: Metadata) -> dict[str, str]:
        key = metadata_value(metadata, "x-goog-api-key") if self._pass_through else None
        key = key or self._api_key
        return {"x-goog-api-key": key} if key else {}


def vertex_host(location: str) -> str:
    """Vertex AI's regional host; the `global` location has a host of its own."""
    if location == "global":
        return "aiplatform.googleapis.com"
    return f"{location}-aiplatform.googleapis.com"


def load_vertex_rules(path: Path = VERTEX_SERVICE_CONFIG) -> UpstreamRules:
    """Vertex AI's http rules; a bad rule raises RouteTableError naming it."""
    return UpstreamRules.load(path, VERTEX_VARIABLES)


class VertexFlavour:
    """Vertex AI: same JSON bodies, paths from its service config, OAuth bearer tokens."""

    def __init__(
        self,
        project: str,
        location: str,
        base_url: str | None,
        credentials: Any,
        rules: UpstreamRules | None = None,
    ) -> None:
        if not project or not location:
            raise ValueError("the vertex upstream needs a project and a location")
        self.base_url = (base_url or f"https://{vertex_host(location)}").rstrip("/")
        self.rules = rules if rules is not None else load_vertex_rules()
        self._values = {"project": project, "location": location}
        self._credentials = credentials
        self._refresh_lock = asyncio.Lock()

    def adapt(self, call: HttpCall) -> HttpCall:
        if call.selector not in self.rules or call.request is None:
            served = ", ".join(_short(selector) for selector in self.rules.selectors)
            what = _short(call.selector) if call.selector else f"{call.verb.upper()} {call.path}"
            raise errors.UpstreamError(
                grpc.StatusCode.UNIMPLEMENTED,
                f"{what} has no Vertex AI equivalent (the Vertex AI upstream serves {served})",
            )
        adapted = self.rules.to_http(call, self._values)
        if adapted is None:
            # A request of a served method that fits no Vertex AI path: a tuned model.
            raise errors.UpstreamError(
                grpc.StatusCode.UNIMPLEMENTED,
                f"{_short(call.selector)} on {call.path} has no Vertex AI equivalent "
                f"(Vertex AI serves it for {self.rules.accepts(call.selector)})",
            )
        return adapted

    def url(self, path: str) -> str:
        return self.base_url + path

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


def _short(selector: str) -> str:
    """`google.ai.generativelanguage.v1beta.ModelService.ListModels` -> `ModelService.ListModels`"""
    return ".".join(selector.split(".")[-2:])


def make_flavour(settings: Settings, emulator_url: str | None = None) -> Flavour:
    """The flavour the settings name; `emulator_url` is the embedded emulator's, if any."""
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
