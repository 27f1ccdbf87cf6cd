"""Thinking models: thoughtsTokenCount, thinkingConfig and thought summaries, unary and streamed."""

from __future__ import annotations

import json
from typing import Any

import pytest

from gemini_gateway.emulator.catalog import MODELS, thinking_spec
from gemini_gateway.emulator.tokens import count_text
from tests.emulator.conftest import Api, parse_sse, user


def generate(model: str) -> str:
    return f"/v1beta/models/{model}:generateContent"


def stream(model: str, sse: bool = True) -> str:
    return f"/v1beta/models/{model}:streamGenerateContent" + ("?alt=sse" if sse else "")


def thinking(**config: Any) -> dict[str, Any]:
    return {"generationConfig": {"thinkingConfig": config}}


def answer_parts(body: dict[str, Any], index: int = 0) -> list[dict[str, Any]]:
    return body["candidates"][index]["content"]["parts"]


def test_catalog_flag_matches_the_specs() -> None:
    for model in MODELS:
        assert bool(model.get("thinking")) == (thinking_spec(model["baseModelId"]) is not None)


@pytest.mark.parametrize("model", ["gemini-2.5-flash", "gemini-2.5-pro", "gemini-3.1-pro-preview"])
async def test_thinking_models_report_thoughts(api: Api, model: str) -> None:
    status, body, _ = await api.post(generate(model), user("why is the sky blue?"))
    assert status == 200
    usage = body["usageMetadata"]
    assert usage["thoughtsTokenCount"] > 0
    assert usage["totalTokenCount"] == (
        usage["promptTokenCount"] + usage["candidatesTokenCount"] + usage["thoughtsTokenCount"]
    )
    assert list(usage)[-1] == "thoughtsTokenCount"  # after promptTokensDetails, as at Google
    [part] = answer_parts(body)
    assert "thought" not in part


@pytest.mark.parametrize("model", ["gemini-2.0-flash", "gemini-2.5-flash-lite"])
async def test_models_that_do_not_think_by_default(api: Api, model: str) -> None:
    status, body, _ = await api.post(generate(model), user("hi") | thinking(includeThoughts=True))
    assert status == 200
    usage = body["usageMetadata"]
    assert "thoughtsTokenCount" not in usage
    assert usage["totalTokenCount"] == usage["promptTokenCount"] + usage["candidatesTokenCount"]
    assert len(answer_parts(body)) == 1


async def test_flash_lite_thinks_when_given_a_budget(api: Api) -> None:
    _, dynamic, _ = await api.post(
        generate("gemini-2.5-flash-lite"), user("hi") | thinking(thinkingBudget=-1)
    )
    assert dynamic["usageMetadata"]["thoughtsTokenCount"] > 0
    # Below the model's minimum of 512 the budget is raised to it, so nothing is cut.
    _, small, _ = await api.post(
        generate("gemini-2.5-flash-lite"), user("hi") | thinking(thinkingBudget=10)
    )
    assert (
        small["usageMetadata"]["thoughtsTokenCount"]
        == (dynamic["usageMetadata"]["thoughtsTokenCount"])
    )


async def test_thoughts_are_deterministic_and_follow_the_prompt(api: Api) -> None:
    path = generate("gemini-2.5-flash")
    _, first, _ = await api.post(path, user("the same prompt"))
    _, again, _ = await api.post(path, user("the same prompt"))
    long_prompt = " ".join(["word"] * 200)
    _, longer, _ = await api.post(path, user(long_prompt))
    thoughts = first["usageMetadata"]["thoughtsTokenCount"]
    assert again["usageMetadata"]["thoughtsTokenCount"] == thoughts
    assert longer["usageMetadata"]["thoughtsTokenCount"] > thoughts


async def test_budget_caps_the_thoughts(api: Api) -> None:
    body = user("a long question " * 20) | thinking(thinkingBudget=100)
    _, data, _ = await api.post(generate("gemini-2.5-flash"), body)
    assert data["usageMetadata"]["thoughtsTokenCount"] == 100


async def test_budget_zero(api: Api) -> None:
    body = user("hi") | thinking(thinkingBudget=0, includeThoughts=True)
    status, data, _ = await api.post(generate("gemini-2.5-flash"), body)
    assert status == 200
    assert "thoughtsTokenCount" not in data["usageMetadata"]
    assert len(answer_parts(data)) == 1
    for model in ("gemini-2.5-pro", "gemini-3.1-pro-preview"):
        status, data, _ = await api.post(generate(model), body)
        assert status == 400
        assert data["error"] == {
            "code": 400,
            "message": "The model does not support setting thinking_budget to 0.",
            "status": "INVALID_ARGUMENT",
        }


@pytest.mark.parametrize("budget", [-2, 24577])
async def test_invalid_budget(api: Api, budget: int) -> None:
    status, data, _ = await api.post(
        generate("gemini-2.5-flash"), user("hi") | thinking(thinkingBudget=budget)
    )
    assert status == 400
    assert data["error"]["message"] == f"The thinking budget ({budget}) is invalid."


async def test_snake_case_thinking_config(api: Api) -> None:
    body = user("hi") | {
        "generation_config": {"thinking_config": {"thinking_budget": 0, "include_thoughts": True}}
    }
    _, data, _ = await api.post(generate("gemini-2.5-flash"), body)
    assert "thoughtsTokenCount" not in data["usageMetadata"]
    body = user("hi") | {"generation_config": {"thinking_config": {"include_thoughts": True}}}
    _, data, _ = await api.post(generate("gemini-2.5-flash"), body)
    assert answer_parts(data)[0]["thought"] is True


async def test_thinking_levels(api: Api) -> None:
    path = generate("gemini-3.1-pro-preview")
    counts = []
    for level in ("minimal", "LOW", "medium", "HIGH"):
        status, data, _ = await api.post(path, user("levels") | thinking(thinkingLevel=level))
        assert status == 200
        counts.append(data["usageMetadata"]["thoughtsTokenCount"])
    assert counts == sorted(counts) and len(set(counts)) == 4
    _, default, _ = await api.post(path, user("levels"))
    assert default["usageMetadata"]["thoughtsTokenCount"] == counts[-1]  # HIGH is the default


async def test_thinking_level_errors(api: Api) -> None:
    path = generate("gemini-3.1-pro-preview")
    body = user("hi") | thinking(thinkingLevel="LOW", thinkingBudget=1024)
    status, data, _ = await api.post(path, body)
    assert status == 400
    assert data["error"]["message"] == (
        "You can only set only one of thinking budget and thinking level."
    )
    status, data, _ = await api.post(path, user("hi") | thinking(thinkingLevel="extreme"))
    assert status == 400
    field = "generation_config.thinking_config.thinking_level"
    assert data["error"]["message"] == (
        f"Invalid value at '{field}' (type.googleapis.com/google.ai.generativelanguage.v1beta."
        'ThinkingConfig.ThinkingLevel), "extreme"'
    )
    assert data["error"]["details"][0]["fieldViolations"][0]["field"] == field


async def test_include_thoughts_unary(api: Api) -> None:
    path = generate("gemini-2.5-flash")
    _, plain, _ = await api.post(path, user("tell me about owls"))
    _, data, _ = await api.post(path, user("tell me about owls") | thinking(includeThoughts=True))
    thought, answer = answer_parts(data)
    assert thought["thought"] is True
    assert list(thought) == ["text", "thought"]
    assert thought["text"].startswith("**")
    assert '"tell me about owls"' in thought["text"]
    assert answer == answer_parts(plain)[0]  # the answer is unchanged
    usage, plain_usage = data["usageMetadata"], plain["usageMetadata"]
    # The summary is part of the thoughts, not of the candidates.
    assert usage == plain_usage
    assert usage["candidatesTokenCount"] == count_text(answer["text"])


async def test_include_thoughts_with_candidates_and_function_calls(api: Api) -> None:
    path = generate("gemini-2.5-flash")
    body = user("hello") | {
        "generationConfig": {"candidateCount": 2, "thinkingConfig": {"includeThoughts": True}}
    }
    _, data, _ = await api.post(path, body)
    _, single, _ = await api.post(path, user("hello"))
    for index in (0, 1):
        assert [p.get("thought") for p in answer_parts(data, index)] == [True, None]
    assert data["usageMetadata"]["thoughtsTokenCount"] == (
        2 * single["usageMetadata"]["thoughtsTokenCount"]
    )
    tools = {"tools": [{"functionDeclarations": [{"name": "get_weather"}]}]}
    body = user("call get_weather") | tools | thinking(includeThoughts=True)
    _, data, _ = await api.post(path, body)
    thought, call = answer_parts(data)
    assert "get_weather" in thought["text"]
    assert call["functionCall"]["name"] == "get_weather"


async def test_count_tokens_counts_no_thoughts(api: Api) -> None:
    request = user("hi") | thinking(includeThoughts=True)
    _, counted, _ = await api.post(
        "/v1beta/models/gemini-2.5-pro:countTokens", {"generateContentRequest": request}
    )
    assert counted == {
        "totalTokens": 1,
        "promptTokensDetails": [{"modality": "TEXT", "tokenCount": 1}],
    }


async def test_sse_stream_with_thoughts(api: Api) -> None:
    body = user("stream owls [[chunks:3]]") | thinking(includeThoughts=True)
    _, unary, _ = await api.post(generate("gemini-2.5-flash"), body)
    _, _, raw = await api.post(stream("gemini-2.5-flash"), body)
    chunks = [json.loads(p) for p in parse_sse(raw)]
    assert len(chunks) == 4
    first = chunks[0]["candidates"][0]
    assert first["content"]["parts"] == [answer_parts(unary)[0]]
    assert "finishReason" not in first
    texts = [c["candidates"][0]["content"]["parts"] for c in chunks[1:]]
    assert all(len(parts) == 1 and "thought" not in parts[0] for parts in texts)
    assert "".join(parts[0]["text"] for parts in texts) == answer_parts(unary)[1]["text"]
    thoughts = unary["usageMetadata"]["thoughtsTokenCount"]
    for chunk in chunks[:-1]:
        usage = chunk["usageMetadata"]
        assert usage["thoughtsTokenCount"] == thoughts
        assert "candidatesTokenCount" not in usage
    assert chunks[-1]["usageMetadata"] == unary["usageMetadata"]
    assert chunks[-1]["candidates"][0]["finishReason"] == "STOP"


async def test_array_stream_with_thoughts(api: Api) -> None:
    body = user("array owls [[chunks:2]]") | thinking(includeThoughts=True)
    async with api.session.post(api.url(stream("gemini-2.5-pro", sse=False)), json=body) as resp:
        chunks = json.loads(await resp.text())
    assert len(chunks) == 3
    assert chunks[0]["candidates"][0]["content"]["parts"][0]["thought"] is True
    assert chunks[-1]["usageMetadata"]["thoughtsTokenCount"] > 0


async def test_stream_without_thoughts_is_unchanged(api: Api) -> None:
    _, _, raw = await api.post(stream("gemini-2.5-flash"), user("plain [[chunks:3]]"))
    chunks = [json.loads(p) for p in parse_sse(raw)]
    assert len(chunks) == 3
    assert all(
        "thought" not in part for c in chunks for part in c["candidates"][0]["content"]["parts"]
    )
    assert chunks[-1]["usageMetadata"]["thoughtsTokenCount"] > 0


async def test_models_without_levels_ignore_the_level(api: Api) -> None:
    _, default, _ = await api.post(generate("gemini-2.5-flash"), user("lvl"))
    _, low, _ = await api.post(
        generate("gemini-2.5-flash"), user("lvl") | thinking(thinkingLevel="LOW")
    )
    assert low["usageMetadata"] == default["usageMetadata"]
    _, lite, _ = await api.post(
        generate("gemini-2.5-flash-lite"), user("lvl") | thinking(thinkingLevel="HIGH")
    )
    assert "thoughtsTokenCount" not in lite["usageMetadata"]
