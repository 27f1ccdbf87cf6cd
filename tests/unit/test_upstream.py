"""Upstream flavours (URLs, paths and auth headers) and the client that uses them."""

import grpc
import pytest
from google.oauth2 import credentials as oauth2

from gemini_gateway.generated.google.ai.generativelanguage.v1beta import (
    content_pb2,
    generative_service_pb2,
    model_service_pb2,
)
from gemini_gateway.server import errors
from gemini_gateway.server.app import build_route_table
from gemini_gateway.server.config import Settings
from gemini_gateway.server.routes import HttpCall, RouteTable
from gemini_gateway.server.upstream import (
    AiohttpTransport,
    GeminiFlavour,
    UpstreamClient,
    VertexFlavour,
    make_flavour,
)

V1BETA = "/google.ai.generativelanguage.v1beta"
GENERATE = f"{V1BETA}.GenerativeService/GenerateContent"
STREAM = f"{V1BETA}.GenerativeService/StreamGenerateContent"
COUNT = f"{V1BETA}.GenerativeService/CountTokens"
LIST_MODELS = f"{V1BETA}.ModelService/ListModels"


@pytest.fixture(scope="module")
def table() -> RouteTable:
    return build_route_table()


def _generate(model: str, **labels: str) -> generative_service_pb2.GenerateContentRequest:
    return generative_service_pb2.GenerateContentRequest(
        model=model,
        contents=[content_pb2.Content(role="user", parts=[content_pb2.Part(text="hi")])],
        labels=labels,
    )


async def test_gemini_flavour_prefers_callers_key_only_in_pass_through() -> None:
    caller = (("x-goog-api-key", "caller"), ("other", "x"))
    own = GeminiFlavour("https://example.test/", "gateway", pass_through=False)
    assert await own.headers(caller) == {"x-goog-api-key": "gateway"}
    assert own.url("/v1beta/models") == "https://example.test/v1beta/models"
    passing = GeminiFlavour("https://example.test", "gateway", pass_through=True)
    assert await passing.headers(caller) == {"x-goog-api-key": "caller"}
    assert await passing.headers(()) == {"x-goog-api-key": "gateway"}
    assert await GeminiFlavour("https://example.test", None, pass_through=True).headers(()) == {}


def test_gemini_flavour_sends_calls_as_transcoded(table: RouteTable) -> None:
    call = table[GENERATE].to_http(_generate("models/m"))
    assert GeminiFlavour("https://example.test", None, pass_through=False).adapt(call) is call


def test_default_urls_per_upstream_kind() -> None:
    gemini = make_flavour(Settings(upstream="gemini"))
    assert gemini.url("/v1beta/models") == "https://generativelanguage.googleapis.com/v1beta/models"
    with pytest.raises(ValueError, match="emulator upstream needs"):
        make_flavour(Settings(upstream="emulator"))
    emulated = make_flavour(Settings(upstream="emulator"), emulator_url="http://127.0.0.1:9")
    assert emulated.url("/v1beta/models") == "http://127.0.0.1:9/v1beta/models"


async def test_vertex_paths_and_bearer_token(table: RouteTable) -> None:
    creds = oauth2.Credentials(token="ya29.token", quota_project_id="billing-project")
    flavour = VertexFlavour("proj", "europe-west4", None, creds)
    call = table[STREAM].to_http(_generate("models/gemini-2.5-flash", team="search"))
    vertex = flavour.adapt(call)
    assert flavour.url(vertex.path) == (
        "https://europe-west4-aiplatform.googleapis.com/v1/projects/proj/locations/"
        "europe-west4/publishers/google/models/gemini-2.5-flash:streamGenerateContent"
    )
    assert vertex.body == call.body and vertex.body["labels"] == {"team": "search"}
    assert await flavour.headers(()) == {
        "authorization": "Bearer ya29.token",
        "x-goog-user-project": "billing-project",
    }
    global_flavour = VertexFlavour("proj", "global", None, creds)
    count = table[COUNT].to_http(generative_service_pb2.CountTokensRequest(model="models/m"))
    assert global_flavour.url(global_flavour.adapt(count).path) == (
        "https://aiplatform.googleapis.com/v1/projects/proj/locations/global/"
        "publishers/google/models/m:countTokens"
    )


def test_vertex_needs_project_and_location() -> None:
    with pytest.raises(ValueError, match="needs a project and a location"):
        VertexFlavour("", "us-central1", None, oauth2.Credentials(token="t"))


def test_method_without_vertex_rule_is_unimplemented(table: RouteTable) -> None:
    flavour = VertexFlavour("p", "us-central1", None, oauth2.Credentials(token="t"))
    call = table[LIST_MODELS].to_http(model_service_pb2.ListModelsRequest())
    with pytest.raises(errors.UpstreamError) as info:
        flavour.adapt(call)
    assert info.value.code is grpc.StatusCode.UNIMPLEMENTED
    assert info.value.message == (
        "ModelService.ListModels has no Vertex AI equivalent (the Vertex AI upstream serves "
        "GenerativeService.CountTokens, GenerativeService.GenerateContent, "
        "GenerativeService.StreamGenerateContent)"
    )
    # A call made by hand, not from the route table, is named by its path.
    with pytest.raises(errors.UpstreamError, match=r"GET /v1beta/models has no Vertex AI"):
        flavour.adapt(HttpCall("get", "/v1beta/models", [], None))


def test_vertex_has_no_tuned_models(table: RouteTable) -> None:
    flavour = VertexFlavour("p", "us-central1", None, oauth2.Credentials(token="t"))
    with pytest.raises(errors.UpstreamError) as info:
        flavour.adapt(table[GENERATE].to_http(_generate("tunedModels/x")))
    assert info.value.code is grpc.StatusCode.UNIMPLEMENTED
    assert info.value.message == (
        "GenerativeService.GenerateContent on /v1beta/tunedModels/x:generateContent has no "
        "Vertex AI equivalent (Vertex AI serves it for model matching models/*)"
    )


async def test_unserved_call_fails_before_auth_and_network(table: RouteTable) -> None:
    # No token and nothing to refresh it with: asking for headers would raise RefreshError.
    flavour = VertexFlavour("p", "us-central1", "http://127.0.0.1:9", oauth2.Credentials(None))
    client = UpstreamClient(flavour, AiohttpTransport(Settings()), default_timeout_s=5)
    try:
        call = table[LIST_MODELS].to_http(model_service_pb2.ListModelsRequest())
        with pytest.raises(errors.UpstreamError) as info:
            await client.call(call, (), None)
        assert info.value.code is grpc.StatusCode.UNIMPLEMENTED
    finally:
        await client.aclose()
