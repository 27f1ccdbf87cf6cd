"""Upstream flavours: URLs and auth headers for the Gemini API and Vertex AI."""

import grpc
import pytest
from google.oauth2 import credentials as oauth2

from gemini_gateway.server import errors
from gemini_gateway.server.config import Settings
from gemini_gateway.server.upstream import GeminiFlavour, VertexFlavour, make_flavour


async def test_gemini_flavour_prefers_callers_key_only_in_pass_through() -> None:
    caller = (("x-goog-api-key", "caller"), ("other", "x"))
    own = GeminiFlavour("https://example.test/", "gateway", pass_through=False)
    assert await own.headers(caller) == {"x-goog-api-key": "gateway"}
    assert own.url("/v1beta/models") == "https://example.test/v1beta/models"
    passing = GeminiFlavour("https://example.test", "gateway", pass_through=True)
    assert await passing.headers(caller) == {"x-goog-api-key": "caller"}
    assert await passing.headers(()) == {"x-goog-api-key": "gateway"}
    assert await GeminiFlavour("https://example.test", None, pass_through=True).headers(()) == {}


def test_default_urls_per_upstream_kind() -> None:
    gemini = make_flavour(Settings(upstream="gemini"))
    assert gemini.url("/v1beta/models") == "https://generativelanguage.googleapis.com/v1beta/models"
    with pytest.raises(ValueError, match="emulator upstream needs"):
        make_flavour(Settings(upstream="emulator"))
    emulated = make_flavour(Settings(upstream="emulator"), emulator_url="http://127.0.0.1:9")
    assert emulated.url("/v1beta/models") == "http://127.0.0.1:9/v1beta/models"


async def test_vertex_paths_and_bearer_token() -> None:
    creds = oauth2.Credentials(token="ya29.token", quota_project_id="billing-project")
    flavour = VertexFlavour("proj", "europe-west4", None, creds)
    assert flavour.url("/v1beta/models/gemini-2.5-flash:streamGenerateContent") == (
        "https://europe-west4-aiplatform.googleapis.com/v1/projects/proj/locations/"
        "europe-west4/publishers/google/models/gemini-2.5-flash:streamGenerateContent"
    )
    assert await flavour.headers(()) == {
        "authorization": "Bearer ya29.token",
        "x-goog-user-project": "billing-project",
    }
    global_flavour = VertexFlavour("proj", "global", None, creds)
    assert global_flavour.url("/v1beta/models/m:countTokens").startswith(
        "https://aiplatform.googleapis.com/v1/projects/proj/locations/global/"
    )


def test_vertex_has_no_tuned_models() -> None:
    flavour = VertexFlavour("p", "us-central1", None, oauth2.Credentials(token="t"))
    with pytest.raises(errors.UpstreamError) as info:
        flavour.url("/v1beta/tunedModels/x:generateContent")
    assert info.value.code is grpc.StatusCode.UNIMPLEMENTED
