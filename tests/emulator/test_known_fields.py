"""Unknown request fields are refused as Google refuses them; known ones pass in both spellings."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
from google.protobuf import json_format
from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import Message

from gemini_gateway.emulator import EmulatorSettings, start_emulator
from gemini_gateway.emulator.errors import ApiError
from gemini_gateway.emulator.known_fields import (
    REQUEST_TYPES,
    check_known_fields,
    unknown_fields,
)
from gemini_gateway.generated.google.ai.generativelanguage.v1beta import generative_service_pb2
from tests.emulator.conftest import GENERATE, STREAM_SSE, Api, parse_sse, user

BAD_REQUEST = "type.googleapis.com/google.rpc.BadRequest"
COUNT = "/v1beta/models/gemini-2.5-flash:countTokens"
EMBED = "/v1beta/models/gemini-embedding-001:embedContent"
BATCH = "/v1beta/models/gemini-embedding-001:batchEmbedContents"
VERTEX = "/v1/projects/p/locations/l/publishers/google/models/gemini-2.5-flash:generateContent"


def sentence(name: str, path: str = "") -> str:
    where = f" at '{path}'" if path else ""
    return f'Invalid JSON payload received. Unknown name "{name}"{where}: Cannot find field.'


async def test_top_level_unknown_field(api: Api) -> None:
    status, body, raw = await api.post(GENERATE, user("hi") | {"fooBar": 1})
    assert status == 400
    assert raw.startswith('{\n  "error": {')
    assert body == {
        "error": {
            "code": 400,
            "message": sentence("fooBar"),
            "status": "INVALID_ARGUMENT",
            "details": [
                {"@type": BAD_REQUEST, "fieldViolations": [{"description": sentence("fooBar")}]}
            ],
        }
    }


async def test_nested_unknown_fields(api: Api) -> None:
    body = {
        "contents": [{"role": "user", "parts": [{"text": "hi"}, {"text": "x", "colour": "red"}]}],
        "generationConfig": {"fooBar": 1, "thinkingConfig": {"depth": 3}},
        "tools": [
            {
                "functionDeclarations": [
                    {
                        "name": "f",
                        "parameters": {
                            "type": "OBJECT",
                            "properties": {
                                "a": {"type": "STRING"},
                                "b": {"type": "ARRAY", "items": {"additionalProperties": False}},
                            },
                        },
                    }
                ]
            }
        ],
    }
    status, data, _ = await api.post(GENERATE, body)
    assert status == 400
    expected = [
        ("contents[0].parts[1]", "colour"),
        ("generation_config", "fooBar"),
        ("generation_config.thinking_config", "depth"),
        (
            "tools[0].function_declarations[0].parameters.properties[1].value.items",
            "additionalProperties",
        ),
    ]
    error = data["error"]
    assert error["message"] == "\n".join(sentence(name, path) for path, name in expected)
    [detail] = error["details"]
    assert detail["@type"] == BAD_REQUEST
    assert detail["fieldViolations"] == [
        {"field": path, "description": sentence(name, path)} for path, name in expected
    ]


async def test_unknown_field_is_named_as_sent(api: Api) -> None:
    body = user("hi") | {"generation_config": {"max_output_tokens": 3, "top_q": 1}}
    status, data, _ = await api.post(GENERATE, body)
    assert status == 400
    assert data["error"]["message"] == sentence("top_q", "generation_config")


async def test_snake_case_and_camel_case_are_both_known(api: Api) -> None:
    body = {
        "contents": [
            {
                "role": "user",
                "parts": [
                    {"text": "describe"},
                    {"inline_data": {"mime_type": "image/png", "data": "iVBORw0KGgo="}},
                    {"fileData": {"mimeType": "application/pdf", "fileUri": "gs://b/f.pdf"}},
                ],
            }
        ],
        "system_instruction": {"parts": [{"text": "be brief"}]},
        "safety_settings": [{"category": "HARM_CATEGORY_HARASSMENT", "threshold": "BLOCK_NONE"}],
        "generation_config": {
            "max_output_tokens": 5,
            "stopSequences": ["zzz"],
            "response_mime_type": "text/plain",
            "thinking_config": {"thinking_budget": 0, "includeThoughts": False},
        },
        "tool_config": {"function_calling_config": {"mode": "NONE"}},
        "cached_content": "cachedContents/none",
    }
    status, data, _ = await api.post(GENERATE, body)
    assert status == 200, data
    assert data["candidates"][0]["finishReason"] == "MAX_TOKENS"


@pytest.mark.parametrize(
    "extra",
    [
        {"labels": {"team": "search"}},
        {"serviceTier": "standard"},
        {"service_tier": "flex"},
        {"store": True},
        {"labels": {"a": "b"}, "store": False, "serviceTier": "priority"},
    ],
)
async def test_live_api_top_level_fields_are_accepted(api: Api, extra: dict[str, Any]) -> None:
    status, _, _ = await api.post(GENERATE, user("hi") | extra)
    assert status == 200


async def test_free_form_values_are_not_looked_into(api: Api) -> None:
    """Struct, Value and map keys hold the caller's own names."""
    body = {
        "contents": [
            {"role": "user", "parts": [{"text": "call f"}]},
            {"role": "model", "parts": [{"functionCall": {"name": "f", "args": {"anyName": 1}}}]},
            {
                "role": "user",
                "parts": [{"functionResponse": {"name": "f", "response": {"whatever": [1]}}}],
            },
        ],
        "tools": [
            {
                "functionDeclarations": [
                    {
                        "name": "f",
                        "parametersJsonSchema": {
                            "type": "object",
                            "additionalProperties": False,
                            "properties": {"myField": {"type": "integer"}},
                        },
                    }
                ]
            }
        ],
        "generationConfig": {
            "responseMimeType": "application/json",
            "responseJsonSchema": {"$defs": {}, "type": "object", "additionalProperties": True},
        },
        "labels": {"anyKey": "v"},
    }
    status, data, _ = await api.post(GENERATE, body)
    assert status == 200, data


async def test_stream_refuses_before_streaming(api: Api) -> None:
    async with api.session.post(api.url(STREAM_SSE), json=user("hi") | {"nope": 1}) as resp:
        assert resp.status == 400
        assert (await resp.json())["error"]["message"] == sentence("nope")


@pytest.mark.parametrize(
    ("path", "body", "message"),
    [
        (COUNT, user("hi") | {"fooBar": 1}, sentence("fooBar")),
        (
            COUNT,
            {"generateContentRequest": user("hi") | {"generationConfig": {"x": 1}}},
            sentence("x", "generate_content_request.generation_config"),
        ),
        (
            EMBED,
            {"content": {"parts": [{"text": "a"}]}, "taskType": "CLUSTERING", "dims": 3},
            sentence("dims"),
        ),
        (
            BATCH,
            {"requests": [{"content": {"parts": [{"text": "a"}]}, "extra": 1}]},
            sentence("extra", "requests[0]"),
        ),
        (VERTEX, user("hi") | {"fooBar": 1}, sentence("fooBar")),
    ],
)
async def test_other_calls_refuse_unknown_fields(
    api: Api, path: str, body: dict[str, Any], message: str
) -> None:
    status, data, _ = await api.post(path, body)
    assert status == 400
    assert data["error"]["message"] == message


async def test_known_fields_of_other_calls_pass(api: Api) -> None:
    status, _, _ = await api.post(
        EMBED,
        {
            "model": "models/gemini-embedding-001",
            "content": {"parts": [{"text": "a"}]},
            "task_type": "RETRIEVAL_DOCUMENT",
            "title": "t",
            "output_dimensionality": 8,
        },
    )
    assert status == 200
    status, _, _ = await api.post(COUNT, {"generate_content_request": user("hi")})
    assert status == 200


async def test_unknown_field_comes_before_model_lookup_and_labels(api: Api) -> None:
    status, data, _ = await api.post(
        "/v1beta/models/gemini-9:generateContent", user("hi") | {"fooBar": 1}
    )
    assert (status, data["error"]["message"]) == (400, sentence("fooBar"))
    bad_labels = user("hi") | {"fooBar": 1, "labels": {"Upper": "x"}}
    status, data, _ = await api.post(VERTEX, bad_labels)
    assert (status, data["error"]["message"]) == (400, sentence("fooBar"))


@pytest.mark.parametrize("how", ["settings", "environment"])
async def test_lenient_switch(http, monkeypatch: pytest.MonkeyPatch, how: str) -> None:
    if how == "settings":
        settings = EmulatorSettings(strict_fields=False)
    else:
        monkeypatch.setenv("GEMINI_EMULATOR_STRICT_FIELDS", "false")
        settings = EmulatorSettings()
    assert settings.strict_fields is False
    handle = await start_emulator(settings)
    try:
        body = user("hi") | {"fooBar": 1, "generationConfig": {"maxOutputTokens": 2, "x": 1}}
        async with http.post(handle.url + GENERATE, json=body) as resp:
            assert resp.status == 200
            assert (await resp.json())["candidates"][0]["finishReason"] == "MAX_TOKENS"
        async with http.post(handle.url + STREAM_SSE, json=body) as resp:
            assert resp.status == 200
            assert parse_sse(await resp.text())
        async with http.post(handle.url + COUNT, json=user("hi") | {"x": 1}) as resp:
            assert resp.status == 200
    finally:
        await handle.close()


def test_strict_by_default() -> None:
    assert EmulatorSettings().strict_fields is True


# --- Everything the gateway's protos can express is known, in both spellings ---------------

_WELL_KNOWN_JSON = {
    "google.protobuf.Value": "v",
    "google.protobuf.Struct": {"k": "v"},
    "google.protobuf.ListValue": ["v"],
    "google.protobuf.Duration": "1.5s",
    "google.protobuf.Timestamp": "2025-01-01T00:00:00Z",
    "google.protobuf.FieldMask": "a,b",
}


def _fill(message: Message, choice: int, path: tuple[str, ...]) -> None:
    """Set every field of `message` (the `choice`-th member of each oneof), recursively.

    A message type already filled twice further up is left out, so recursive types (Schema)
    end after one nested level.
    """
    descriptor = message.DESCRIPTOR
    for field in descriptor.fields:
        oneof = field.containing_oneof
        if oneof is not None and oneof.fields[choice % len(oneof.fields)] is not field:
            continue
        _fill_field(message, field, choice, (*path, descriptor.full_name))


def _fill_field(
    message: Message, field: FieldDescriptor, choice: int, path: tuple[str, ...]
) -> None:
    target = field.message_type
    if target is not None and target.GetOptions().map_entry:
        value_field = target.fields_by_name["value"]
        container = getattr(message, field.name)
        if value_field.message_type is None:
            container["key"] = _scalar(value_field)
        elif _may_nest(value_field.message_type.full_name, path):
            _fill(container["key"], choice, path)
        return
    if target is not None and target.full_name.startswith("google.protobuf."):
        # ParseDict merges: the fields set so far stay.
        value = _WELL_KNOWN_JSON[target.full_name]
        json_format.ParseDict({field.json_name: [value] if field.is_repeated else value}, message)
        return
    if target is not None:
        if not _may_nest(target.full_name, path):
            return
        child = getattr(message, field.name).add() if field.is_repeated else None
        if child is None:
            child = getattr(message, field.name)
            child.SetInParent()
        _fill(child, choice, path)
        return
    value = _scalar(field)
    if field.is_repeated:
        getattr(message, field.name).append(value)
    else:
        setattr(message, field.name, value)


def _may_nest(type_name: str, path: tuple[str, ...]) -> bool:
    return path.count(type_name) < 2


def _scalar(field: FieldDescriptor) -> Any:
    if field.enum_type is not None:
        return field.enum_type.values[-1].number
    if field.type == FieldDescriptor.TYPE_STRING:
        return "x"
    if field.type == FieldDescriptor.TYPE_BYTES:
        return b"x"
    if field.type == FieldDescriptor.TYPE_BOOL:
        return True
    if field.type in (FieldDescriptor.TYPE_FLOAT, FieldDescriptor.TYPE_DOUBLE):
        return 0.5
    return 1


def _keys(value: Any) -> Iterator[str]:
    if isinstance(value, dict):
        for key, item in value.items():
            yield key
            yield from _keys(item)
    elif isinstance(value, list):
        for item in value:
            yield from _keys(item)


@pytest.mark.parametrize("request_type", sorted(REQUEST_TYPES))
@pytest.mark.parametrize("proto_names", [False, True], ids=["json_names", "proto_names"])
def test_every_proto_field_is_known(request_type: str, proto_names: bool) -> None:
    message_class = getattr(generative_service_pb2, request_type)
    seen: set[str] = set()
    for choice in range(12):  # every member of every oneof (Part's is the largest)
        message = message_class()
        _fill(message, choice, ())
        body = json_format.MessageToDict(message, preserving_proto_field_name=proto_names)
        assert unknown_fields(body, message_class.DESCRIPTOR) == []
        check_known_fields(body, request_type)  # does not raise
        seen |= set(_keys(body))
    assert len(seen) > 15  # the bodies really were filled


def test_check_known_fields_raises_api_error() -> None:
    with pytest.raises(ApiError) as caught:
        check_known_fields({"contents": [], "x": {"y": 1}}, "GenerateContentRequest")
    assert caught.value.http_status == 400
    assert json.loads(caught.value.response().text)["error"]["message"] == sentence("x")
