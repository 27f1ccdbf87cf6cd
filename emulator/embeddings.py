"""embedContent and batchEmbedContents with deterministic unit vectors.

A text's vector is the normalised sum of one pseudo-random vector per (case-folded) token,
so equal texts embed equally and texts sharing words point in similar directions.
"""

from __future__ import annotations

import functools
import hashlib
import math
import random
from collections.abc import Mapping
from typing import Any

from aiohttp import web

from gemini_gateway.emulator.catalog import find_model, supports
from gemini_gateway.emulator.errors import invalid_field, model_not_found
from gemini_gateway.emulator.fields import as_int, field, items, mapping
from gemini_gateway.emulator.known_fields import read_request
from gemini_gateway.emulator.settings import SETTINGS_KEY
from gemini_gateway.emulator.tokens import TOKEN
from gemini_gateway.emulator.wire import json_response

DEFAULT_DIMENSIONS = 768
MAX_DIMENSIONS = 3072


@functools.lru_cache(maxsize=4096)
def _token_vector(token: str, dimensions: int, seed: int) -> tuple[float, ...]:
    digest = hashlib.sha256(f"{seed}\x1f{token}".encode()).digest()
    rng = random.Random(int.from_bytes(digest[:8], "big"))
    return tuple(rng.gauss(0.0, 1.0) for _ in range(dimensions))


def embed_text(text: str, dimensions: int = DEFAULT_DIMENSIONS, seed: int = 0) -> list[float]:
    """The unit vector of `text` (an all-blank text still gets a fixed vector)."""
    total = [0.0] * dimensions
    tokens = [m.group(0).casefold() for m in TOKEN.finditer(text)] or [""]
    for token in tokens:
        for i, value in enumerate(_token_vector(token, dimensions, seed)):
            total[i] += value
    norm = math.sqrt(sum(v * v for v in total)) or 1.0
    return [round(v / norm, 9) for v in total]


def _embed_request(
    request_body: Mapping[str, Any], request_type: str, prefix: str, seed: int
) -> dict[str, Any]:
    content = mapping(request_body, "content")
    texts = [field(p, "text") for p in items(content, "parts") if isinstance(field(p, "text"), str)]
    if not texts:
        raise invalid_field(request_type, f"{prefix}content", "content is not specified")
    dimensions = as_int(field(request_body, "outputDimensionality"), 0) or DEFAULT_DIMENSIONS
    if not 1 <= dimensions <= MAX_DIMENSIONS:
        raise invalid_field(
            request_type,
            f"{prefix}output_dimensionality",
            f"output_dimensionality must be between 1 and {MAX_DIMENSIONS}",
        )
    return {"values": embed_text("\n".join(texts), dimensions, seed)}


def _embedding_model(request: web.Request) -> str:
    model_id = request.match_info["model"]
    model = find_model(model_id)
    if model is None or not supports(model, "embedContent"):
        raise model_not_found(model_id, request.match_info["version"], "embedContent")
    return model_id


async def embed_content(request: web.Request) -> web.Response:
    # Google parses the body (refusing unknown fields) before it looks the model up.
    body = await read_request(request, "EmbedContentRequest")
    _embedding_model(request)
    seed = request.app[SETTINGS_KEY].seed
    return json_response({"embedding": _embed_request(body, "EmbedContentRequest", "", seed)})


async def batch_embed_contents(request: web.Request) -> web.Response:
    body = await read_request(request, "BatchEmbedContentsRequest")
    model_id = _embedding_model(request)
    seed = request.app[SETTINGS_KEY].seed
    requests = items(body, "requests")
    if not requests:
        raise invalid_field("BatchEmbedContentsRequest", "requests", "requests is not specified")
    embeddings = []
    for index, entry in enumerate(requests):
        model = field(entry, "model")
        if model and str(model).removeprefix("models/") != model_id:
            raise invalid_field(
                "BatchEmbedContentsRequest",
                f"requests[{index}].model",
                f"Model in request must match the batch model models/{model_id}.",
            )
        embeddings.append(
            _embed_request(entry, "BatchEmbedContentsRequest", f"requests[{index}].", seed)
        )
    return json_response({"embeddings": embeddings})
