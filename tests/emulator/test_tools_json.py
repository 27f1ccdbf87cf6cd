"""Function calling and structured output (JSON mode, enum mode)."""

from __future__ import annotations

import json
from typing import Any

from tests.emulator.conftest import GENERATE, STREAM_SSE, Api, parse_sse, user

WEATHER = {
    "name": "get_weather",
    "description": "Current weather for a city",
    "parameters": {
        "type": "OBJECT",
        "properties": {
            "city": {"type": "STRING"},
            "unit": {"type": "STRING", "enum": ["celsius", "fahrenheit"]},
            "days": {"type": "INTEGER", "minimum": 1, "maximum": 7},
        },
        "required": ["city"],
    },
}
TIME = {
    "name": "get_time",
    "parametersJsonSchema": {
        "type": "object",
        "properties": {"zone": {"type": "string"}, "precise": {"type": "boolean"}},
    },
}
TOOLS = [{"functionDeclarations": [WEATHER, TIME]}]


def parts(body: dict[str, Any]) -> list[dict[str, Any]]:
    return body["candidates"][0]["content"]["parts"]


async def test_function_call_when_named(api: Api) -> None:
    _, body, _ = await api.post(GENERATE, user("what does get_weather say?") | {"tools": TOOLS})
    [part] = parts(body)
    call = part["functionCall"]
    assert call["name"] == "get_weather"
    args = call["args"]
    assert set(args) == {"city", "unit", "days"}
    assert isinstance(args["city"], str)
    assert args["unit"] == "celsius"
    assert 1 <= args["days"] <= 7
    _, again, _ = await api.post(GENERATE, user("what does get_weather say?") | {"tools": TOOLS})
    assert again == body


async def test_call_word_picks_first_and_json_schema_parameters(api: Api) -> None:
    _, body, _ = await api.post(GENERATE, user("please call a tool") | {"tools": TOOLS})
    assert parts(body)[0]["functionCall"]["name"] == "get_weather"
    _, body, _ = await api.post(GENERATE, user("GET_TIME now") | {"tools": TOOLS})
    args = parts(body)[0]["functionCall"]["args"]
    assert isinstance(args["zone"], str) and isinstance(args["precise"], bool)


async def test_several_functions_named(api: Api) -> None:
    _, body, _ = await api.post(GENERATE, user("get_time and get_weather") | {"tools": TOOLS})
    assert [p["functionCall"]["name"] for p in parts(body)] == ["get_weather", "get_time"]


async def test_modes(api: Api) -> None:
    plain = user("tell me a story") | {"tools": TOOLS}
    _, body, _ = await api.post(GENERATE, plain)
    assert "text" in parts(body)[0]  # AUTO without a reason to call
    forced = plain | {
        "toolConfig": {
            "functionCallingConfig": {"mode": "ANY", "allowedFunctionNames": ["get_time"]}
        }
    }
    _, body, _ = await api.post(GENERATE, forced)
    assert parts(body)[0]["functionCall"]["name"] == "get_time"
    disabled = user("call get_weather") | {
        "tools": TOOLS,
        "tool_config": {"function_calling_config": {"mode": "NONE"}},
    }
    _, body, _ = await api.post(GENERATE, disabled)
    assert "text" in parts(body)[0]


async def test_function_response_gets_text(api: Api) -> None:
    body = {
        "tools": TOOLS,
        "contents": [
            {"role": "user", "parts": [{"text": "call get_weather"}]},
            {"role": "model", "parts": [{"functionCall": {"name": "get_weather", "args": {}}}]},
            {
                "role": "user",
                "parts": [{"functionResponse": {"name": "get_weather", "response": {"temp": 21}}}],
            },
        ],
    }
    _, data, _ = await api.post(GENERATE, body)
    text = parts(data)[0]["text"]
    assert text.startswith('Echo: get_weather returned {"temp": 21}')


async def test_function_call_streams_as_one_chunk(api: Api) -> None:
    _, _, raw = await api.post(STREAM_SSE, user("call get_weather") | {"tools": TOOLS})
    [chunk] = [json.loads(p) for p in parse_sse(raw)]
    candidate = chunk["candidates"][0]
    assert candidate["content"]["parts"][0]["functionCall"]["name"] == "get_weather"
    assert candidate["finishReason"] == "STOP"
    assert chunk["usageMetadata"]["candidatesTokenCount"] > 0


def check_google_schema(value: Any, schema: dict[str, Any]) -> None:
    kind = schema["type"]
    if kind == "OBJECT":
        assert isinstance(value, dict)
        assert set(schema.get("required", [])) <= set(value)
        if "propertyOrdering" in schema:
            assert list(value)[: len(schema["propertyOrdering"])] == schema["propertyOrdering"]
        for name, sub in schema["properties"].items():
            check_google_schema(value[name], sub)
    elif kind == "ARRAY":
        assert isinstance(value, list) and value
        for item in value:
            check_google_schema(item, schema["items"])
    elif kind == "STRING":
        assert isinstance(value, str)
        if "enum" in schema:
            assert value in schema["enum"]
    elif kind == "INTEGER":
        assert isinstance(value, int) and not isinstance(value, bool)
    elif kind == "NUMBER":
        assert isinstance(value, int | float)
    elif kind == "BOOLEAN":
        assert isinstance(value, bool)


async def test_json_mode_with_response_schema(api: Api) -> None:
    schema = {
        "type": "OBJECT",
        "properties": {
            "title": {"type": "STRING"},
            "rating": {"type": "NUMBER"},
            "year": {"type": "INTEGER", "nullable": True},
            "genre": {"type": "STRING", "enum": ["drama", "comedy"]},
            "tags": {"type": "ARRAY", "items": {"type": "STRING"}},
            "cast": {
                "type": "ARRAY",
                "items": {
                    "type": "OBJECT",
                    "properties": {"name": {"type": "STRING"}, "lead": {"type": "BOOLEAN"}},
                },
            },
        },
        "required": ["title", "rating"],
        "propertyOrdering": ["year", "title"],
    }
    config = {"responseMimeType": "application/json", "responseSchema": schema}
    _, body, _ = await api.post(GENERATE, user("a film") | {"generationConfig": config})
    value = json.loads(parts(body)[0]["text"])
    check_google_schema(value, schema)


async def test_json_mode_with_json_schema(api: Api) -> None:
    schema = {
        "type": "object",
        "properties": {
            "items": {"type": "array", "items": {"$ref": "#/$defs/item"}, "minItems": 3},
            "total": {"type": ["number", "null"], "minimum": 10, "maximum": 20},
            "status": {"enum": ["ok", "error"]},
        },
        "required": ["items", "total"],
        "$defs": {
            "item": {
                "type": "object",
                "properties": {"sku": {"type": "string"}, "qty": {"type": "integer"}},
            }
        },
    }
    config = {"response_mime_type": "application/json", "response_json_schema": schema}
    _, body, _ = await api.post(GENERATE, user("an order") | {"generation_config": config})
    value = json.loads(parts(body)[0]["text"])
    assert len(value["items"]) == 3
    assert all(isinstance(i["sku"], str) and isinstance(i["qty"], int) for i in value["items"])
    assert 10 <= value["total"] <= 20
    assert value["status"] == "ok"


async def test_json_mode_without_schema_and_enum_mode(api: Api) -> None:
    config = {"responseMimeType": "application/json"}
    _, body, _ = await api.post(GENERATE, user("anything") | {"generationConfig": config})
    assert isinstance(json.loads(parts(body)[0]["text"]), dict)
    config = {
        "responseMimeType": "text/x.enum",
        "responseSchema": {"type": "STRING", "enum": ["red", "green"]},
    }
    _, body, _ = await api.post(GENERATE, user("a colour") | {"generationConfig": config})
    assert parts(body)[0]["text"] == "red"
