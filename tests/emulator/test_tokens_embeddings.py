"""countTokens (consistent with usageMetadata) and the embedding endpoints."""

from __future__ import annotations

import math

from tests.emulator.conftest import GENERATE, Api, user

COUNT = "/v1beta/models/gemini-2.5-flash:countTokens"
EMBED = "/v1beta/models/gemini-embedding-001:embedContent"
BATCH = "/v1beta/models/text-embedding-004:batchEmbedContents"


def cosine(a: list[float], b: list[float]) -> float:
    return sum(x * y for x, y in zip(a, b, strict=True))


async def test_count_tokens_matches_usage(api: Api) -> None:
    request = user("Hello, world! How are you today?")
    status, counted, _ = await api.post(COUNT, request)
    assert status == 200
    assert counted == {
        "totalTokens": 9,
        "promptTokensDetails": [{"modality": "TEXT", "tokenCount": 9}],
    }
    _, generated, _ = await api.post(GENERATE, request)
    assert generated["usageMetadata"]["promptTokenCount"] == counted["totalTokens"]


async def test_count_tokens_generate_content_request(api: Api) -> None:
    inner = user("one two [[fault:429]]") | {
        "model": "models/gemini-2.5-flash",
        "systemInstruction": {"parts": [{"text": "three"}]},
    }
    status, counted, _ = await api.post(COUNT, {"generateContentRequest": inner})
    assert status == 200
    assert counted["totalTokens"] == 3  # magic tokens do not count
    body = dict(inner)
    body["contents"] = user("one two")["contents"]
    _, generated, _ = await api.post(GENERATE, body)
    assert generated["usageMetadata"]["promptTokenCount"] == 3


async def test_count_tokens_v1_and_errors(api: Api) -> None:
    status, _, _ = await api.post("/v1/models/gemini-2.0-flash:countTokens", user("a b"))
    assert status == 200
    status, body, _ = await api.post(COUNT, {})
    assert status == 400
    assert body["error"]["status"] == "INVALID_ARGUMENT"
    status, _, _ = await api.post("/v1beta/models/nope:countTokens", user("a"))
    assert status == 404


async def test_embed_content(api: Api) -> None:
    body = {"content": {"parts": [{"text": "the quick brown fox"}]}}
    status, first, _ = await api.post(EMBED, body)
    assert status == 200
    values = first["embedding"]["values"]
    assert len(values) == 768
    assert math.isclose(math.sqrt(sum(v * v for v in values)), 1.0, abs_tol=1e-6)
    _, again, _ = await api.post(EMBED, body)
    assert again == first
    _, similar, _ = await api.post(EMBED, {"content": {"parts": [{"text": "the quick fox"}]}})
    _, other, _ = await api.post(EMBED, {"content": {"parts": [{"text": "tax law 1999"}]}})
    assert cosine(values, similar["embedding"]["values"]) > cosine(
        values, other["embedding"]["values"]
    )


async def test_embed_dimensions_and_errors(api: Api) -> None:
    body = {"content": {"parts": [{"text": "x"}]}, "output_dimensionality": 256}
    _, data, _ = await api.post("/v1/models/gemini-embedding-001:embedContent", body)
    assert len(data["embedding"]["values"]) == 256
    status, _, _ = await api.post(
        EMBED, {"content": {"parts": [{"text": "x"}]}, "outputDimensionality": 5000}
    )
    assert status == 400
    status, _, _ = await api.post(EMBED, {"content": {"parts": []}})
    assert status == 400
    status, body, _ = await api.post(
        "/v1beta/models/gemini-2.5-flash:embedContent", {"content": {"parts": [{"text": "x"}]}}
    )
    assert status == 404


async def test_batch_embed_contents(api: Api) -> None:
    requests = [
        {"model": "models/text-embedding-004", "content": {"parts": [{"text": t}]}}
        for t in ("alpha", "beta", "alpha")
    ]
    status, data, _ = await api.post(BATCH, {"requests": requests})
    assert status == 200
    embeddings = data["embeddings"]
    assert len(embeddings) == 3
    assert embeddings[0] == embeddings[2] != embeddings[1]
    bad = [{"model": "models/gemini-embedding-001", "content": {"parts": [{"text": "a"}]}}]
    status, body, _ = await api.post(BATCH, {"requests": bad})
    assert status == 400
    assert body["error"]["details"][0]["fieldViolations"][0]["field"] == "requests[0].model"
