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


async def test_thinking_model_reports_thoughts(client: genai.Client) -> None:
    response = await client.aio.models.generate_content(
        model="gemini-2.5-pro", contents="think about this"
    )
    usage = response.usage_metadata
    assert usage.thoughts_token_count > 0
    assert usage.total_token_count == (
        usage.prompt_token_count + usage.candidates_token_count + usage.thoughts_token_count
    )
    # No summary unless asked for: the answer is the only part.
    assert [part.thought for part in response.candidates[0].content.parts] == [None]


async def test_include_thoughts_adds_a_thought_part(client: genai.Client) -> None:
    plain = await client.aio.models.generate_content(
        model="gemini-2.5-flash", contents="explain tides"
    )
    config = types.GenerateContentConfig(
        thinking_config=types.ThinkingConfig(include_thoughts=True)
    )
    response = await client.aio.models.generate_content(
        model="gemini-2.5-flash", contents="explain tides", config=config
    )
    first, answer = response.candidates[0].content.parts
    assert first.thought is True
    assert "explain tides" in first.text
    assert not answer.thought
    # The SDK's .text leaves thoughts out; the answer is the one given without thoughts.
    assert response.text == answer.text == plain.text
    assert response.usage_metadata.thoughts_token_count == plain.usage_metadata.thoughts_token_count


async def test_include_thoughts_in_a_stream(client: genai.Client) -> None:
    config = types.GenerateContentConfig(
        thinking_config=types.ThinkingConfig(include_thoughts=True)
    )
    chunks = [
        chunk
        async for chunk in await client.aio.models.generate_content_stream(
            model="gemini-2.5-flash", contents="stream it [[chunks:3]]", config=config
        )
    ]
    assert len(chunks) == 4  # the thought summary first, then three answer chunks
    assert [p.thought for p in chunks[0].candidates[0].content.parts] == [True]
    assert all(not p.thought for c in chunks[1:] for p in c.candidates[0].content.parts)
    assert "".join(c.text or "" for c in chunks[1:]).startswith("Echo: stream it")
    assert chunks[-1].usage_metadata.thoughts_token_count > 0


async def test_thinking_budget_zero_turns_thinking_off(client: genai.Client) -> None:
    config = types.GenerateContentConfig(
        thinking_config=types.ThinkingConfig(thinking_budget=0, include_thoughts=True)
    )
    response = await client.aio.models.generate_content(
        model="gemini-2.5-flash", contents="no thinking", config=config
    )
    assert not response.usage_metadata.thoughts_token_count
    assert [part.thought for part in response.candidates[0].content.parts] == [None]
    # 2.5 Pro only works in thinking mode.
    with pytest.raises(errors.ClientError) as caught:
        await client.aio.models.generate_content(
            model="gemini-2.5-pro", contents="no thinking", config=config
        )
    assert caught.value.code == 400
    assert "thinking_budget to 0" in caught.value.message


async def test_thinking_level(client: genai.Client) -> None:
    async def thoughts(level: types.ThinkingLevel) -> int:
        config = types.GenerateContentConfig(
            thinking_config=types.ThinkingConfig(thinking_level=level)
        )
        response = await client.aio.models.generate_content(
            model="gemini-3.1-pro-preview", contents="a level", config=config
        )
        return response.usage_metadata.thoughts_token_count

    assert 0 < await thoughts(types.ThinkingLevel.LOW) < await thoughts(types.ThinkingLevel.HIGH)


async def test_unknown_field_is_refused(client: genai.Client) -> None:
    config = types.GenerateContentConfig(http_options=types.HttpOptions(extra_body={"fooBar": 1}))
    with pytest.raises(errors.ClientError) as caught:
        await client.aio.models.generate_content(
            model="gemini-2.5-flash", contents="hi", config=config
        )
    assert caught.value.code == 400
    assert caught.value.status == "INVALID_ARGUMENT"
    assert caught.value.message == (
        'Invalid JSON payload received. Unknown name "fooBar": Cannot find field.'
    )
    nested = types.GenerateContentConfig(
        http_options=types.HttpOptions(extra_body={"generationConfig": {"fooBar": 1}})
    )
    with pytest.raises(errors.ClientError) as caught:
        await client.aio.models.generate_content(
            model="gemini-2.5-flash", contents="hi", config=nested
        )
    assert "at 'generation_config'" in caught.value.message


async def test_everything_the_sdk_sends_is_known(client: genai.Client) -> None:
    """A request using many of the SDK's options passes the strict field check."""
    config = types.GenerateContentConfig(
        system_instruction="be brief",
        temperature=0.5,
        top_p=0.9,
        top_k=20,
        candidate_count=2,
        max_output_tokens=50,
        stop_sequences=["STOP"],
        presence_penalty=0.1,
        frequency_penalty=0.1,
        seed=7,
        response_mime_type="application/json",
        response_json_schema={"type": "object", "properties": {"a": {"type": "string"}}},
        safety_settings=[
            types.SafetySetting(
                category=types.HarmCategory.HARM_CATEGORY_HARASSMENT,
                threshold=types.HarmBlockThreshold.BLOCK_NONE,
            )
        ],
        thinking_config=types.ThinkingConfig(thinking_budget=256, include_thoughts=True),
        labels={"team": "search"},
        media_resolution=types.MediaResolution.MEDIA_RESOLUTION_LOW,
    )
    contents = [
        types.Content(role="user", parts=[types.Part.from_text(text="first")]),
        types.Content(role="model", parts=[types.Part.from_text(text="answer")]),
        types.Content(
            role="user",
            parts=[
                types.Part.from_text(text="second"),
                types.Part.from_bytes(data=b"\x89PNG", mime_type="image/png"),
            ],
        ),
    ]
    response = await client.aio.models.generate_content(
        model="gemini-2.5-flash", contents=contents, config=config
    )
    assert len(response.candidates) == 2
    assert response.usage_metadata.thoughts_token_count <= 2 * 256
