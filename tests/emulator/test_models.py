"""ModelService: ListModels with pagination and GetModel."""

from __future__ import annotations

import pytest

from tests.emulator.conftest import Api

EXPECTED = {
    "gemini-2.5-flash",
    "gemini-2.5-pro",
    "gemini-2.0-flash",
    "gemini-2.5-flash-lite",
    "gemini-3.1-pro-preview",
    "gemini-embedding-001",
    "text-embedding-004",
}


@pytest.mark.parametrize("version", ["v1beta", "v1"])
async def test_list_models(api: Api, version: str) -> None:
    status, body, _ = await api.get(f"/{version}/models")
    assert status == 200
    assert "nextPageToken" not in body
    assert {m["name"].removeprefix("models/") for m in body["models"]} == EXPECTED
    flash = next(m for m in body["models"] if m["name"] == "models/gemini-2.5-flash")
    for key in (
        "baseModelId",
        "version",
        "displayName",
        "description",
        "inputTokenLimit",
        "outputTokenLimit",
        "supportedGenerationMethods",
        "temperature",
        "maxTemperature",
        "topP",
        "topK",
        "thinking",
    ):
        assert key in flash, key
    assert "generateContent" in flash["supportedGenerationMethods"]
    thinking = {m["baseModelId"] for m in body["models"] if m.get("thinking")}
    assert thinking == {
        "gemini-2.5-flash",
        "gemini-2.5-pro",
        "gemini-2.5-flash-lite",
        "gemini-3.1-pro-preview",
    }


async def test_pagination(api: Api) -> None:
    seen: list[str] = []
    token = ""
    pages = 0
    while True:
        status, body, _ = await api.get(f"/v1beta/models?pageSize=5&pageToken={token}")
        assert status == 200
        pages += 1
        seen += [m["name"] for m in body["models"]]
        token = body.get("nextPageToken", "")
        if not token:
            break
    assert pages == 2
    assert len(seen) == len(set(seen)) == len(EXPECTED)


async def test_bad_page_token(api: Api) -> None:
    status, body, _ = await api.get("/v1beta/models?pageToken=garbage")
    assert status == 400
    assert body["error"]["status"] == "INVALID_ARGUMENT"


async def test_get_model(api: Api) -> None:
    status, body, _ = await api.get("/v1/models/gemini-2.5-pro")
    assert status == 200
    assert body["name"] == "models/gemini-2.5-pro"
    status, body, raw = await api.get("/v1beta/models/unknown-model")
    assert status == 404
    assert body["error"] == {
        "code": 404,
        "message": body["error"]["message"],
        "status": "NOT_FOUND",
    }
    assert raw.startswith('{\n  "error"')
