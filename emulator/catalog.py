"""The models the emulator offers, and ModelService.GetModel / ListModels."""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from gemini_gateway.emulator.errors import bad_request, not_found
from gemini_gateway.emulator.fields import as_int
from gemini_gateway.emulator.wire import json_response

DEFAULT_PAGE_SIZE = 50
MAX_PAGE_SIZE = 1000


@dataclass(frozen=True)
class ThinkingSpec:
    """How a thinking model takes `generationConfig.thinkingConfig` (Google's thinking guide)."""

    min_budget: int
    """Smallest positive thinkingBudget; smaller positive budgets are raised to it."""
    max_budget: int
    """Largest thinkingBudget; a larger one is refused, as by Google."""
    can_disable: bool
    """Whether thinkingBudget 0 turns thinking off (else it is refused)."""
    by_default: bool
    """Whether the model thinks when the request sets no budget (2.5 Flash-Lite does not)."""
    levels: bool = False
    """Whether the model takes thinkingLevel (Gemini 3)."""


_GENERATE_METHODS = [
    "generateContent",
    "countTokens",
    "createCachedContent",
    "batchGenerateContent",
]


# The thinking models' settings; Model JSON only says `"thinking": true`.
_THINKING: dict[str, ThinkingSpec] = {}


def _chat_model(
    model_id: str,
    display_name: str,
    description: str,
    version: str,
    output_limit: int,
    top_k: int,
    thinking: ThinkingSpec | None,
) -> dict[str, Any]:
    model: dict[str, Any] = {
        "name": f"models/{model_id}",
        "baseModelId": model_id,
        "version": version,
        "displayName": display_name,
        "description": description,
        "inputTokenLimit": 1048576,
        "outputTokenLimit": output_limit,
        "supportedGenerationMethods": _GENERATE_METHODS,
        "temperature": 1,
        "topP": 0.95,
        "topK": top_k,
        "maxTemperature": 2,
    }
    if thinking is not None:
        model["thinking"] = True
        _THINKING[model_id] = thinking
    return model


def _embedding_model(
    model_id: str, display_name: str, description: str, version: str, methods: list[str]
) -> dict[str, Any]:
    return {
        "name": f"models/{model_id}",
        "baseModelId": model_id,
        "version": version,
        "displayName": display_name,
        "description": description,
        "inputTokenLimit": 2048,
        "outputTokenLimit": 1,
        "supportedGenerationMethods": methods,
    }


MODELS: list[dict[str, Any]] = [
    _chat_model(
        "gemini-2.5-flash",
        "Gemini 2.5 Flash",
        "Stable version of Gemini 2.5 Flash, our mid-size multimodal model that supports up "
        "to 1 million tokens, released in June of 2025.",
        "001",
        65536,
        64,
        ThinkingSpec(1, 24576, can_disable=True, by_default=True),
    ),
    _chat_model(
        "gemini-2.5-pro",
        "Gemini 2.5 Pro",
        "Stable release (June 17th, 2025) of Gemini 2.5 Pro",
        "2.5",
        65536,
        64,
        ThinkingSpec(128, 32768, can_disable=False, by_default=True),
    ),
    _chat_model(
        "gemini-2.5-flash-lite",
        "Gemini 2.5 Flash-Lite",
        "Stable version of Gemini 2.5 Flash-Lite, released in July of 2025",
        "001",
        65536,
        64,
        ThinkingSpec(512, 24576, can_disable=True, by_default=False),
    ),
    _chat_model(
        "gemini-2.0-flash",
        "Gemini 2.0 Flash",
        "Gemini 2.0 Flash",
        "2.0",
        8192,
        40,
        None,
    ),
    _chat_model(
        "gemini-3.1-pro-preview",
        "Gemini 3.1 Pro Preview",
        "Preview release of Gemini 3.1 Pro",
        "3.1-pro-preview",
        65536,
        64,
        ThinkingSpec(128, 32768, can_disable=False, by_default=True, levels=True),
    ),
    _embedding_model(
        "gemini-embedding-001",
        "Gemini Embedding 001",
        "Obtain a distributed representation of a text.",
        "001",
        ["embedContent", "countTextTokens", "countTokens", "asyncBatchEmbedContent"],
    ),
    _embedding_model(
        "text-embedding-004",
        "Text Embedding 004",
        "Obtain a distributed representation of a text.",
        "004",
        ["embedContent"],
    ),
]

_BY_ID = {m["baseModelId"]: m for m in MODELS}


def find_model(model_id: str) -> dict[str, Any] | None:
    """The catalogue entry for `gemini-2.5-flash` (or `models/gemini-2.5-flash`)."""
    return _BY_ID.get(model_id.removeprefix("models/"))


def thinking_spec(model_id: str) -> ThinkingSpec | None:
    """How the catalogue model thinks; None for models that do not (and unknown ones)."""
    return _THINKING.get(model_id.removeprefix("models/"))


def supports(model: dict[str, Any], method: str) -> bool:
    # Embedding calls are answered by any embedding model even when Google's listing of
    # that model names only embedContent; Google behaves the same for batchEmbedContents.
    methods = model["supportedGenerationMethods"]
    if method == "batchEmbedContents":
        return "embedContent" in methods
    return method in methods


def encode_page_token(offset: int) -> str:
    return base64.urlsafe_b64encode(f"offset:{offset}".encode()).decode()


def decode_page_token(token: str) -> int:
    """Offset from an opaque page token; 400 when the token was not issued by us."""
    if not token:
        return 0
    try:
        text = base64.urlsafe_b64decode(token.encode()).decode()
        prefix, _, number = text.partition(":")
        if prefix == "offset" and number.isdigit():
            return int(number)
    except (binascii.Error, UnicodeDecodeError, ValueError):
        pass
    raise bad_request("Invalid page token.", [("page_token", "Invalid page token.")])


def page_size(query: Any, default: int, maximum: int) -> int:
    """pageSize from the query: 0 or missing means the default; above the maximum is capped."""
    raw = query.get("pageSize", query.get("page_size"))
    size = as_int(raw) if raw is not None else 0
    if size is None or size < 0:
        raise bad_request("page_size must not be negative.", [("page_size", "must be >= 0")])
    return min(size or default, maximum)


def paginate(
    entries: list[dict[str, Any]], query: Any, default: int, maximum: int
) -> tuple[list[dict[str, Any]], str | None]:
    """One page of `entries` and the token for the next page (None on the last page)."""
    size = page_size(query, default, maximum)
    offset = decode_page_token(query.get("pageToken", query.get("page_token", "")))
    page = entries[offset : offset + size]
    following = offset + size
    return page, encode_page_token(following) if following < len(entries) else None


async def list_models(request: web.Request) -> web.Response:
    page, token = paginate(MODELS, request.query, DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE)
    body: dict[str, Any] = {"models": page}
    if token:
        body["nextPageToken"] = token
    return json_response(body)


async def get_model(request: web.Request) -> web.Response:
    model_id, version = request.match_info["model"], request.match_info["version"]
    model = find_model(model_id)
    if model is None:
        raise not_found(f"models/{model_id} is not found for API version {version}.")
    return json_response(model)
