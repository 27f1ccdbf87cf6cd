"""streamGenerateContent in both wire forms: framing, chunking, usage, pacing."""

from __future__ import annotations

import asyncio
import itertools
import json
import time

import pytest

from gemini_gateway.emulator import EmulatorSettings, start_emulator
from tests.emulator.conftest import GENERATE, STREAM_ARRAY, STREAM_SSE, Api, parse_sse, user


def chunk_text(chunk: dict) -> str:
    return chunk["candidates"][0]["content"]["parts"][0]["text"]


async def test_sse_framing_chunks_and_usage(api: Api) -> None:
    async with api.session.post(api.url(STREAM_SSE), json=user("hello there")) as resp:
        assert resp.status == 200
        assert resp.headers["Content-Type"].startswith("text/event-stream")
        raw = await resp.text()
    chunks = [json.loads(payload) for payload in parse_sse(raw)]
    assert len(chunks) == 3  # the default chunk_count
    _, unary, _ = await api.post(GENERATE, user("hello there"))
    assert "".join(chunk_text(c) for c in chunks) == chunk_text(unary)
    for chunk in chunks[:-1]:
        assert "finishReason" not in chunk["candidates"][0]
        assert chunk["usageMetadata"]["promptTokenCount"] == 2
        assert "candidatesTokenCount" not in chunk["usageMetadata"]
    last = chunks[-1]
    assert last["candidates"][0]["finishReason"] == "STOP"
    assert last["usageMetadata"] == unary["usageMetadata"]
    assert {c["modelVersion"] for c in chunks} == {"gemini-2.5-flash"}
    assert {c["responseId"] for c in chunks} == {unary["responseId"]}


async def test_json_array_stream(api: Api) -> None:
    async with api.session.post(api.url(STREAM_ARRAY), json=user("hello")) as resp:
        assert resp.status == 200
        assert resp.headers["Content-Type"].startswith("application/json")
        raw = await resp.text()
    assert raw.startswith("[{\n")
    assert raw.endswith("}\r\n]")
    assert raw.count("\r\n,\r\n") == 2
    chunks = json.loads(raw)
    assert len(chunks) == 3
    assert chunks[-1]["usageMetadata"]["candidatesTokenCount"] > 0


@pytest.mark.parametrize("version", ["v1beta", "v1"])
async def test_magic_chunk_count(api: Api, version: str) -> None:
    path = f"/{version}/models/gemini-2.5-flash:streamGenerateContent?alt=sse"
    _, _, raw = await api.post(path, user("hello [[chunks:7]]"))
    chunks = [json.loads(p) for p in parse_sse(raw)]
    assert len(chunks) == 7
    assert chunk_text(chunks[0]).startswith("Echo: hello\n")  # token removed from the echo


async def test_chunk_count_from_header_and_short_text(api: Api) -> None:
    headers = {"x-emulator-fault": "chunks:1"}
    _, _, raw = await api.post(STREAM_SSE, user("hello"), headers=headers)
    assert len(parse_sse(raw)) == 1
    # A 2-token limit leaves "Echo:" (5 characters): at most 5 chunks, never an empty one.
    body = user("hi [[chunks:50]]") | {"generationConfig": {"maxOutputTokens": 2}}
    _, _, raw = await api.post(STREAM_SSE, body)
    chunks = [json.loads(p) for p in parse_sse(raw)]
    assert "".join(chunk_text(c) for c in chunks) == "Echo:"
    assert all(chunk_text(c) for c in chunks)
    assert chunks[-1]["candidates"][0]["finishReason"] == "MAX_TOKENS"


async def test_chunks_arrive_spaced_in_time(api: Api) -> None:
    """Each event is flushed when produced, not buffered until the end."""
    arrivals: list[float] = []
    body = user("pace me [[chunks:4]] [[chunk_delay_ms:150]]")
    started = time.monotonic()
    async with api.session.post(api.url(STREAM_SSE), json=body) as resp:
        buffer = b""
        async for data in resp.content.iter_any():
            buffer += data
            while b"\r\n\r\n" in buffer:
                _, buffer = buffer.split(b"\r\n\r\n", 1)
                arrivals.append(time.monotonic() - started)
    assert len(arrivals) == 4
    gaps = [b - a for a, b in itertools.pairwise(arrivals)]
    assert all(gap > 0.1 for gap in gaps), gaps
    assert arrivals[0] < 0.1


async def test_settings_chunking_and_delay(http) -> None:
    handle = await start_emulator(EmulatorSettings(chunk_count=5, chunk_delay_ms=40))
    try:
        started = time.monotonic()
        async with http.post(handle.url + STREAM_SSE, json=user("x")) as resp:
            raw = await resp.text()
        assert len(parse_sse(raw)) == 5
        assert time.monotonic() - started >= 0.16
    finally:
        await handle.close()


async def test_concurrent_streams(api: Api) -> None:
    async def one(i: int) -> int:
        _, _, raw = await api.post(STREAM_SSE, user(f"n{i} [[chunk_delay_ms:50]]"))
        return len(parse_sse(raw))

    started = time.monotonic()
    counts = await asyncio.gather(*(one(i) for i in range(10)))
    assert counts == [3] * 10
    assert time.monotonic() - started < 1.0
