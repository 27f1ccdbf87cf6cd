"""GenerativeService handlers: generateContent, streamGenerateContent, countTokens."""

from __future__ import annotations

from aiohttp import web

from gemini_gateway.emulator.catalog import find_model, supports, thinking_spec
from gemini_gateway.emulator.errors import model_not_found
from gemini_gateway.emulator.generation import build_answer, count_tokens_response, read_prompt
from gemini_gateway.emulator.injection import (
    before_headers,
    checked_plan,
    handles_own_faults,
    header_plan,
    settings_plan,
)
from gemini_gateway.emulator.known_fields import read_request
from gemini_gateway.emulator.settings import SETTINGS_KEY
from gemini_gateway.emulator.streaming import stream_chunks
from gemini_gateway.emulator.tuning import TUNING_KEY
from gemini_gateway.emulator.wire import json_response


def _catalog_model(request: web.Request, method: str) -> str:
    """The model id of a models/{model}:{method} call; 404 when unknown or unsupported."""
    model_id = request.match_info["model"]
    model = find_model(model_id)
    if model is None or not supports(model, method):
        raise model_not_found(model_id, request.match_info["version"], method)
    return model_id


async def _generate(request: web.Request, streaming: bool) -> web.StreamResponse:
    settings = request.app[SETTINGS_KEY]
    body = await read_request(request, "GenerateContentRequest")
    from_header = header_plan(request)
    prompt = read_prompt(body)
    plan = from_header.then(checked_plan(",".join(prompt.magic), "magic token in the prompt"))
    plan = plan.then(settings_plan(request))
    model_id = request.match_info["model"]

    replacement = await before_headers(request, plan, model_id, streaming)
    if replacement is not None:
        return replacement

    if request.match_info.get("collection") == "tunedModels":
        tuned_text, model_version = request.app[TUNING_KEY].answer(model_id, prompt.text)
        answer = build_answer(body, prompt, model_version, settings.seed, fixed_text=tuned_text)
    else:
        model_version = _catalog_model(request, "generateContent")
        answer = build_answer(
            body, prompt, model_version, settings.seed, thinking=thinking_spec(model_version)
        )

    if not streaming:
        return json_response(answer.response())
    count = plan.chunks if plan.chunks is not None else settings.chunk_count
    delay = plan.chunk_delay_ms if plan.chunk_delay_ms is not None else settings.chunk_delay_ms
    return await stream_chunks(request, answer.chunks(count), plan, delay, model_id)


@handles_own_faults
async def generate_content(request: web.Request) -> web.StreamResponse:
    return await _generate(request, streaming=False)


@handles_own_faults
async def stream_generate_content(request: web.Request) -> web.StreamResponse:
    return await _generate(request, streaming=True)


async def count_tokens(request: web.Request) -> web.Response:
    # Google parses the body (refusing unknown fields) before it looks the model up.
    body = await read_request(request, "CountTokensRequest")
    _catalog_model(request, "countTokens")
    return json_response(count_tokens_response(body))
