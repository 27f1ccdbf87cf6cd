"""generateContent: response shape, determinism, generation config, request errors."""

from __future__ import annotations

import pytest

from gemini_gateway.emulator.tokens import count_text
from tests.emulator.conftest import GENERATE, Api, user


@pytest.mark.parametrize("version", ["v1beta", "v1"])
async def test_unary_response_shape(api: Api, version: str) -> None:
    status, body, raw = await api.post(
        f"/{version}/models/gemini-2.5-flash:generateContent", user("hello")
    )
    assert status == 200
    assert raw.startswith('{\n  "candidates"')  # pretty-printed like Google
    [candidate] = body["candidates"]
    assert candidate["content"]["role"] == "model"
    assert candidate["content"]["parts"][0]["text"].startswith("Echo: hello")
    assert candidate["finishReason"] == "STOP"
    assert candidate["index"] == 0
    assert body["modelVersion"] == "gemini-2.5-flash"
    assert len(body["responseId"]) == 22
    usage = body["usageMetadata"]
    assert usage["promptTokenCount"] == 1
    assert usage["candidatesTokenCount"] == count_text(candidate["content"]["parts"][0]["text"])
    # gemini-2.5-flash thinks by default; its thoughts count in the total.
    assert usage["thoughtsTokenCount"] > 0
    assert usage["totalTokenCount"] == (
        usage["promptTokenCount"] + usage["candidatesTokenCount"] + usage["thoughtsTokenCount"]
    )
    assert usage["promptTokensDetails"] == [{"modality": "TEXT", "tokenCount": 1}]
    assert [part.get("thought") for part in candidate["content"]["parts"]] == [None]


async def test_same_request_same_answer(api: Api) -> None:
    _, first, _ = await api.post(GENERATE, user("what is up?"))
    _, second, _ = await api.post(GENERATE, user("what is up?"))
    _, other, _ = await api.post(GENERATE, user("something else"))
    assert first == second
    assert first["candidates"] != other["candidates"]
    assert first["responseId"] != other["responseId"]


async def test_system_instruction_and_last_user_turn(api: Api) -> None:
    body = {
        "system_instruction": {"parts": [{"text": "be brief"}]},
        "contents": [
            {"role": "user", "parts": [{"text": "first"}]},
            {"role": "model", "parts": [{"text": "answer"}]},
            {"role": "user", "parts": [{"text": "second"}]},
        ],
    }
    _, data, _ = await api.post(GENERATE, body)
    text = data["candidates"][0]["content"]["parts"][0]["text"]
    assert text.startswith("Echo: second\n(system: be brief)")
    assert data["usageMetadata"]["promptTokenCount"] == 5


async def test_candidate_count_and_max_tokens(api: Api) -> None:
    body = user("hello") | {"generationConfig": {"candidateCount": 3, "maxOutputTokens": 4}}
    _, data, _ = await api.post(GENERATE, body)
    candidates = data["candidates"]
    assert [c["index"] for c in candidates] == [0, 1, 2]
    for candidate in candidates:
        text = candidate["content"]["parts"][0]["text"]
        assert count_text(text) == 4
        assert candidate["finishReason"] == "MAX_TOKENS"
    assert data["usageMetadata"]["candidatesTokenCount"] == 12


async def test_snake_case_request_fields(api: Api) -> None:
    body = user("hello") | {"generation_config": {"max_output_tokens": 3}}
    _, data, _ = await api.post(GENERATE, body)
    assert data["candidates"][0]["finishReason"] == "MAX_TOKENS"


async def test_stop_sequences(api: Api) -> None:
    body = user("hello") | {"generationConfig": {"stopSequences": ["\n"]}}
    _, data, _ = await api.post(GENERATE, body)
    assert data["candidates"][0]["content"]["parts"][0]["text"] == "Echo: hello"


async def test_malformed_json_body(api: Api) -> None:
    async with api.session.post(api.url(GENERATE), data=b"{not json") as resp:
        assert resp.status == 400
        body = await resp.json()
    assert body["error"]["status"] == "INVALID_ARGUMENT"
    assert body["error"]["code"] == 400
    assert "Invalid JSON payload" in body["error"]["message"]


async def test_empty_contents(api: Api) -> None:
    status, body, raw = await api.post(GENERATE, {"contents": []})
    assert status == 400
    assert raw.startswith('{\n  "error": {')
    error = body["error"]
    assert error["status"] == "INVALID_ARGUMENT"
    [detail] = error["details"]
    assert detail["@type"] == "type.googleapis.com/google.rpc.BadRequest"
    assert detail["fieldViolations"][0]["field"] == "contents"


async def test_empty_parts(api: Api) -> None:
    status, body, _ = await api.post(GENERATE, {"contents": [{"role": "user", "parts": []}]})
    assert status == 400
    assert body["error"]["details"][0]["fieldViolations"][0]["field"] == "contents[0].parts"


@pytest.mark.parametrize(
    "path",
    [
        "/v1beta/models/gemini-9-ultra:generateContent",
        "/v1/models/gemini-9-ultra:streamGenerateContent?alt=sse",
        "/v1beta/models/text-embedding-004:generateContent",
    ],
)
async def test_unknown_model(api: Api, path: str) -> None:
    status, body, _ = await api.post(path, user("hi"))
    assert status == 404
    assert body["error"]["status"] == "NOT_FOUND"
    assert body["error"]["code"] == 404


async def test_multimodal_prompt_tokens(api: Api) -> None:
    body = {
        "contents": [
            {
                "role": "user",
                "parts": [
                    {"text": "describe"},
                    {"inlineData": {"mimeType": "image/png", "data": "iVBORw0KGgo="}},
                ],
            }
        ]
    }
    _, data, _ = await api.post(GENERATE, body)
    usage = data["usageMetadata"]
    assert usage["promptTokenCount"] == 259
    assert usage["promptTokensDetails"] == [
        {"modality": "TEXT", "tokenCount": 1},
        {"modality": "IMAGE", "tokenCount": 258},
    ]
