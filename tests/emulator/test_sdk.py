"""Google's own SDK (google-genai) works against the emulator."""

from __future__ import annotations

import asyncio

import pytest
from google import genai
from google.genai import errors, types

from gemini_gateway.emulator import EmulatorHandle

# The SDK's own aiohttp session subclass triggers this warning inside aiohttp.
pytestmark = pytest.mark.filterwarnings(
    "ignore:Inheritance class AiohttpClientSession:DeprecationWarning"
)


@pytest.fixture
def client(emulator: EmulatorHandle) -> genai.Client:
    return genai.Client(api_key="test-key", http_options=types.HttpOptions(base_url=emulator.url))


async def test_generate_content(client: genai.Client) -> None:
    response = await client.aio.models.generate_content(model="gemini-2.5-flash", contents="hello")
    assert response.text.startswith("Echo: hello")
    assert response.usage_metadata.prompt_token_count == 1
    assert response.candidates[0].finish_reason == types.FinishReason.STOP


async def test_generate_content_stream(client: genai.Client) -> None:
    chunks = [
        chunk
        async for chunk in await client.aio.models.generate_content_stream(
            model="gemini-2.5-flash", contents="hello [[chunks:4]]"
        )
    ]
    assert len(chunks) == 4
    assert "".join(c.text for c in chunks).startswith("Echo: hello")
    assert chunks[-1].usage_metadata.candidates_token_count > 0


async def test_count_tokens(client: genai.Client) -> None:
    response = await client.aio.models.count_tokens(
        model="gemini-2.5-flash", contents="Hello, world!"
    )
    assert response.total_tokens == 4


async def test_sync_client_and_v1beta(emulator: EmulatorHandle) -> None:
    client = genai.Client(
        api_key="test-key",
        http_options=types.HttpOptions(base_url=emulator.url, api_version="v1beta"),
    )
    # The blocking client runs in a thread: the emulator shares this test's event loop.
    response = await asyncio.to_thread(
        client.models.generate_content, model="gemini-2.0-flash", contents="sync"
    )
    assert response.text.startswith("Echo: sync")


async def test_structured_output_and_tools(client: genai.Client) -> None:
    config = types.GenerateContentConfig(
        response_mime_type="application/json",
        response_schema={"type": "OBJECT", "properties": {"n": {"type": "INTEGER"}}},
    )
    response = await client.aio.models.generate_content(
        model="gemini-2.5-flash", contents="a number", config=config
    )
    assert isinstance(response.parsed["n"], int)

    def get_weather(city: str) -> str:
        """Weather for a city."""
        return "sunny"

    config = types.GenerateContentConfig(
        tools=[get_weather],
        automatic_function_calling=types.AutomaticFunctionCallingConfig(disable=True),
    )
    response = await client.aio.models.generate_content(
        model="gemini-2.5-flash", contents="call get_weather", config=config
    )
    assert response.function_calls[0].name == "get_weather"
    assert isinstance(response.function_calls[0].args["city"], str)


async def test_embed_and_list(client: genai.Client) -> None:
    response = await client.aio.models.embed_content(
        model="gemini-embedding-001", contents=["a", "b"]
    )
    assert len(response.embeddings) == 2
    names = [m.name async for m in await client.aio.models.list()]
    assert "models/gemini-2.5-flash" in names


async def test_errors_reach_the_sdk(client: genai.Client) -> None:
    with pytest.raises(errors.ClientError) as caught:
        await client.aio.models.generate_content(
            model="gemini-2.5-flash", contents="hi [[fault:429]]"
        )
    assert caught.value.code == 429
    assert caught.value.status == "RESOURCE_EXHAUSTED"
    with pytest.raises(errors.ServerError) as server:
        await client.aio.models.generate_content(
            model="gemini-2.5-flash", contents="hi [[fault:503]]"
        )
    assert server.value.code == 503
