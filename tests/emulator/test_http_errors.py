"""Unknown paths and wrong methods answer Google's JSON error body, not aiohttp's text."""

from __future__ import annotations

import json

import pytest

from gemini_gateway.emulator import EmulatorSettings, start_emulator
from tests.emulator.conftest import Api


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/v1beta/nothing-here"),
        ("POST", "/v1beta/models/gemini-2.5-flash:fooBar"),
        ("GET", "/v2/models"),
        ("POST", "/v1beta/corpora/c:query"),
        ("GET", "/_emulator/unknown"),
    ],
)
async def test_unknown_path_is_json_404(api: Api, method: str, path: str) -> None:
    status, body, raw = await api.call(method, path)
    assert status == 404
    assert raw.startswith('{\n  "error": {\n    "code": 404,')  # pretty-printed like Google
    assert body == {
        "error": {
            "code": 404,
            "message": f"The requested URL {path.split('?')[0]} was not found on this server.",
            "status": "NOT_FOUND",
        }
    }


@pytest.mark.parametrize(
    ("method", "path", "allowed"),
    [
        ("GET", "/v1beta/models/gemini-2.5-flash:generateContent", "POST"),
        ("PUT", "/v1/models/gemini-2.5-flash:streamGenerateContent", "POST"),
        ("DELETE", "/v1beta/models", "GET, HEAD"),
        ("POST", "/v1beta/models/gemini-2.5-flash", "GET, HEAD"),
        ("PATCH", "/v1beta/tunedModels", "GET, HEAD, POST"),
    ],
)
async def test_wrong_method_is_json_405(api: Api, method: str, path: str, allowed: str) -> None:
    async with api.session.request(method, api.url(path)) as resp:
        assert resp.status == 405
        assert resp.content_type == "application/json"
        assert resp.headers["Allow"] == allowed
        raw = await resp.text()
    assert raw.startswith('{\n  "error": {')
    assert json.loads(raw) == {
        "error": {
            "code": 405,
            "message": f"The request method {method} is inappropriate for the URL {path}.",
            "status": "UNIMPLEMENTED",
        }
    }


async def test_404_is_counted_and_recorded(api: Api) -> None:
    await api.call("DELETE", "/_emulator/requests")
    await api.get("/v1beta/nothing-here")
    _, requests, _ = await api.get("/_emulator/requests")
    assert [r["path"] for r in requests] == ["/v1beta/nothing-here"]


async def test_api_key_is_checked_before_the_path(http) -> None:
    handle = await start_emulator(EmulatorSettings(api_key="secret"))
    try:
        async with http.get(handle.url + "/v1beta/nothing-here") as resp:
            assert resp.status == 403
        headers = {"x-goog-api-key": "secret"}
        async with http.get(handle.url + "/v1beta/nothing-here", headers=headers) as resp:
            assert resp.status == 404
            assert (await resp.json())["error"]["status"] == "NOT_FOUND"
    finally:
        await handle.close()
