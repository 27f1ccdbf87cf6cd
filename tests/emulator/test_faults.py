"""Fault injection: every fault, the three ways to select one, and the API key check."""

from __future__ import annotations

import json
import time
from typing import Any

import aiohttp
import pytest

from gemini_gateway.emulator import EmulatorSettings, start_emulator
from tests.emulator.conftest import GENERATE, STREAM_ARRAY, STREAM_SSE, Api, parse_sse, user

RPC = "type.googleapis.com/google.rpc."

ERRORS = [
    ("400", 400, "INVALID_ARGUMENT"),
    ("403", 403, "PERMISSION_DENIED"),
    ("404", 404, "NOT_FOUND"),
    ("429", 429, "RESOURCE_EXHAUSTED"),
    ("500", 500, "INTERNAL"),
    ("503", 503, "UNAVAILABLE"),
]


def fault(name: str) -> dict[str, str]:
    return {"x-emulator-fault": name}


@pytest.mark.parametrize(("name", "code", "status"), ERRORS)
@pytest.mark.parametrize("path", [GENERATE, STREAM_SSE, STREAM_ARRAY])
async def test_error_faults(api: Api, path: str, name: str, code: int, status: str) -> None:
    got, body, raw = await api.post(path, user("hi"), headers=fault(name))
    assert got == code
    assert raw.startswith('{\n  "error": {\n')
    assert body["error"]["code"] == code
    assert body["error"]["status"] == status
    assert body["error"]["message"]


async def test_quota_error_details(api: Api) -> None:
    _, body, _ = await api.post(GENERATE, user("hi [[fault:429]]"))
    details = {d["@type"].removeprefix(RPC): d for d in body["error"]["details"]}
    assert set(details) == {"QuotaFailure", "Help", "RetryInfo"}
    assert details["RetryInfo"]["retryDelay"] == "7s"
    assert details["QuotaFailure"]["violations"][0]["quotaMetric"]
    assert details["Help"]["links"][0]["url"].startswith("https://")


async def test_unavailable_message(api: Api) -> None:
    _, body, _ = await api.post(GENERATE, user("hi"), headers=fault("503"))
    assert body["error"]["message"] == "The model is overloaded. Please try again later."


async def test_html_fault(api: Api) -> None:
    for path in (GENERATE, STREAM_SSE):
        async with api.session.post(api.url(path), json=user("x"), headers=fault("html")) as r:
            assert r.status == 502
            assert r.headers["Content-Type"].startswith("text/html")
            assert "<html" in await r.text()


async def test_malformed_unary(api: Api) -> None:
    status, body, raw = await api.post(GENERATE, user("x [[fault:malformed]]"))
    assert status == 200
    assert body is None
    with pytest.raises(ValueError):
        json.loads(raw)


async def test_malformed_stream(api: Api) -> None:
    _, _, raw = await api.post(STREAM_SSE, user("x"), headers=fault("malformed"))
    first, second = parse_sse(raw)
    assert json.loads(first)["candidates"]
    assert second == "{not json"
    _, _, raw = await api.post(STREAM_ARRAY, user("x"), headers=fault("malformed"))
    assert raw.endswith("\r\n,\r\n{not json\r\n]")


async def test_stream_error_sse(api: Api) -> None:
    status, _, raw = await api.post(STREAM_SSE, user("x [[fault:stream_error]]"))
    assert status == 200
    first, second = parse_sse(raw)
    assert json.loads(first)["candidates"]
    error = json.loads(second)["error"]
    assert error["code"] == 500 and error["status"] == "INTERNAL"


async def test_stream_error_with_code_in_array_form(api: Api) -> None:
    _, body, _ = await api.post(STREAM_ARRAY, user("x"), headers=fault("stream_error:503"))
    assert body[0]["candidates"]
    assert body[1]["error"]["status"] == "UNAVAILABLE"


async def test_stream_error_raw(api: Api) -> None:
    status, _, raw = await api.post(STREAM_SSE, user("x"), headers=fault("stream_error_raw"))
    assert status == 200
    head, tail = raw.split("\r\n\r\n", 1)
    assert json.loads(head.removeprefix("data: "))["candidates"]
    assert tail.startswith('{\n  "error": {\n')
    assert json.loads(tail)["error"]["status"] == "INTERNAL"


async def test_stream_error_on_unary_is_plain_error(api: Api) -> None:
    status, body, _ = await api.post(GENERATE, user("x"), headers=fault("stream_error"))
    assert status == 500
    assert body["error"]["status"] == "INTERNAL"


async def test_headers_delay(api: Api) -> None:
    started = time.monotonic()
    status, _, _ = await api.post(GENERATE, user("x [[fault:headers_delay:300]]"))
    assert status == 200
    assert time.monotonic() - started >= 0.3
    started = time.monotonic()
    async with api.session.post(
        api.url(STREAM_SSE), json=user("x"), headers=fault("headers_delay:200")
    ) as resp:
        assert time.monotonic() - started >= 0.2
        await resp.read()


async def test_disconnect_unary(api: Api) -> None:
    with pytest.raises(aiohttp.ClientConnectionError):
        await api.post(GENERATE, user("x"), headers=fault("disconnect"))


async def test_disconnect_stream(api: Api) -> None:
    received = b""
    async with api.session.post(api.url(STREAM_SSE), json=user("x [[fault:disconnect]]")) as resp:
        assert resp.status == 200
        with pytest.raises(aiohttp.ClientPayloadError):
            async for data in resp.content.iter_any():
                received += data
    first = received.decode().split("\r\n\r\n")[0]
    assert json.loads(first.removeprefix("data: "))["candidates"]
    _, stats, _ = await api.get("/_emulator/stats")
    assert stats["aborted"] == 1 and stats["cancelled"] == 0


async def test_several_faults_and_precedence(api: Api) -> None:
    # The header wins over the prompt; a list combines different kinds of fault.
    started = time.monotonic()
    status, _, _ = await api.post(
        GENERATE, user("x [[fault:500]]"), headers=fault("headers_delay:100, 503")
    )
    assert status == 503
    assert time.monotonic() - started >= 0.1
    status, _, _ = await api.post(GENERATE, user("x [[fault:500]] [[fault:404]]"))
    assert status == 500


async def test_magic_token_only_in_last_user_turn(api: Api) -> None:
    body = {
        "contents": [
            {"role": "user", "parts": [{"text": "[[fault:429]] earlier"}]},
            {"role": "model", "parts": [{"text": "ok"}]},
            {"role": "user", "parts": [{"text": "now"}]},
        ]
    }
    status, _, _ = await api.post(GENERATE, body)
    assert status == 200


async def test_unknown_fault_is_rejected(api: Api) -> None:
    status, body, _ = await api.post(GENERATE, user("x"), headers=fault("explode"))
    assert status == 400
    assert "explode" in body["error"]["message"]
    status, _, _ = await api.post(GENERATE, user("x [[fault:418]]"))
    assert status == 400


async def test_header_faults_on_other_routes(api: Api) -> None:
    status, body, _ = await api.get("/v1beta/models", headers=fault("429"))
    assert status == 429
    assert body["error"]["details"][-1]["retryDelay"] == "7s"
    count = "/v1beta/models/gemini-2.5-flash:countTokens"
    status, _, _ = await api.post(count, user("x"), headers=fault("503"))
    assert status == 503


async def settings_call(settings: EmulatorSettings, path: str, body: Any, **kw: Any) -> Any:
    handle = await start_emulator(settings)
    try:
        async with aiohttp.ClientSession() as session:
            async with session.post(handle.url + path, json=body, **kw) as resp:
                return resp.status, await resp.text()
    finally:
        await handle.close()


async def test_settings_fault() -> None:
    status, _ = await settings_call(EmulatorSettings(fault="503"), GENERATE, user("x"))
    assert status == 503
    # A request's own choice wins over the configured fault.
    status, _ = await settings_call(
        EmulatorSettings(fault="503"), GENERATE, user("x [[fault:429]]")
    )
    assert status == 429
    status, raw = await settings_call(EmulatorSettings(fault="stream_error"), STREAM_SSE, user("x"))
    assert status == 200
    assert json.loads(parse_sse(raw)[-1])["error"]["code"] == 500


def test_settings_reject_unknown_fault() -> None:
    with pytest.raises(ValueError):
        EmulatorSettings(fault="nonsense")


def test_settings_from_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GEMINI_EMULATOR_CHUNK_COUNT", "9")
    monkeypatch.setenv("GEMINI_EMULATOR_FAULT", "429")
    settings = EmulatorSettings()
    assert settings.chunk_count == 9
    assert settings.fault == "429"


async def test_api_key() -> None:
    settings = EmulatorSettings(api_key="secret")
    status, raw = await settings_call(settings, GENERATE, user("x"))
    assert status == 403
    assert json.loads(raw)["error"]["status"] == "PERMISSION_DENIED"
    status, raw = await settings_call(
        settings, GENERATE, user("x"), headers={"x-goog-api-key": "wrong"}
    )
    assert status == 400
    error = json.loads(raw)["error"]
    assert error["status"] == "INVALID_ARGUMENT"
    info = error["details"][0]
    assert info["@type"] == RPC + "ErrorInfo"
    assert (info["reason"], info["domain"]) == ("API_KEY_INVALID", "googleapis.com")
    status, _ = await settings_call(
        settings, GENERATE, user("x"), headers={"x-goog-api-key": "secret"}
    )
    assert status == 200
    status, _ = await settings_call(settings, GENERATE + "?key=secret", user("x"))
    assert status == 200
