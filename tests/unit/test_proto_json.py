"""server/proto_json.py against protobuf's json_format, on generated messages and JSON.

Whatever the input, the result must be json_format's: the same message (or dict), or the
same error. Every message type the gateway exchanges is drawn from, with any field set to
any value, and JSON is also bent (values swapped for other JSON, proto names for JSON
names) to reach the paths where the plans give up.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from google.protobuf import json_format, message_factory, struct_pb2
from google.protobuf.descriptor import Descriptor
from google.protobuf.message import Message
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gemini_gateway.generated.google.ai.generativelanguage.v1beta import (
    content_pb2,
    generative_service_pb2,
)
from gemini_gateway.server import proto_json
from gemini_gateway.server.app import FORWARDED_SERVICES, LOCAL_SERVICES
from tests.proto_messages import messages


def _descriptors() -> list[Descriptor]:
    """Every request and response type of the served services, and what they hold."""
    found: dict[str, Descriptor] = {}

    def visit(descriptor: Descriptor) -> None:
        if descriptor.full_name in found:
            return
        found[descriptor.full_name] = descriptor
        for field in descriptor.fields:
            if field.message_type is not None:
                visit(field.message_type)

    for service in (*FORWARDED_SERVICES, *LOCAL_SERVICES):
        for method in service.methods:
            visit(method.input_type)
            visit(method.output_type)
    return sorted(found.values(), key=lambda d: d.full_name)


DESCRIPTORS = _descriptors()
EXAMPLES = settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])

JSON_VALUES = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**70), 2**70)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=8)
    | st.sampled_from(["NaN", "Infinity", "-1", "1.5", "1e3", "STOP", "AQID", "\ud800"]),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner),
    max_leaves=8,
)


def _outcome(convert: Any) -> tuple[str, Any]:
    try:
        return "ok", convert()
    except Exception as exc:  # both sides must fail alike: same type, same words
        return type(exc).__name__, str(exc)


def _same_parse(value: Any, message_class: type[Message]) -> None:
    text = json.dumps(value)
    loaded = json.loads(text)
    expected = _outcome(
        lambda: json_format.ParseDict(loaded, message_class(), ignore_unknown_fields=True)
    )
    got = _outcome(lambda: proto_json.parse(text, json.loads(text), message_class))
    if expected[0] == "ok" and got[0] == "ok":
        assert got[1] == expected[1]
        assert got[1].SerializeToString(deterministic=True) == expected[1].SerializeToString(
            deterministic=True
        )
    else:
        assert got == expected


def _bend(value: Any, data: st.DataObject) -> Any:
    """`value` with some of its nested values swapped for generated JSON."""
    if isinstance(value, dict) and value:
        key = data.draw(st.sampled_from(sorted(value)))
        bent = dict(value)
        if data.draw(st.booleans()):
            bent[key] = data.draw(JSON_VALUES)
        else:
            bent[key] = _bend(value[key], data)
        return bent
    if isinstance(value, list) and value:
        index = data.draw(st.integers(0, len(value) - 1))
        return [*value[:index], _bend(value[index], data), *value[index + 1 :]]
    return data.draw(JSON_VALUES)


@EXAMPLES
@given(data=st.data())
def test_to_dict_is_message_to_dict(data: st.DataObject) -> None:
    descriptor = data.draw(st.sampled_from(DESCRIPTORS), label="type")
    message = data.draw(messages(descriptor), label="message")
    assert _outcome(lambda: proto_json.to_dict(message)) == _outcome(
        lambda: json_format.MessageToDict(message)
    )


@EXAMPLES
@given(data=st.data())
def test_parse_of_printed_json_is_parse_dict(data: st.DataObject) -> None:
    descriptor = data.draw(st.sampled_from(DESCRIPTORS), label="type")
    message = data.draw(messages(descriptor), label="message")
    proto_names = data.draw(st.booleans(), label="proto names")
    try:
        value = json_format.MessageToDict(message, preserving_proto_field_name=proto_names)
    except Exception:  # a message JSON cannot express (a bad Any URL...): nothing to parse
        return
    _same_parse(value, message_factory.GetMessageClass(descriptor))


@EXAMPLES
@given(data=st.data())
def test_parse_of_bent_json_is_parse_dict(data: st.DataObject) -> None:
    descriptor = data.draw(st.sampled_from(DESCRIPTORS), label="type")
    message = data.draw(messages(descriptor), label="message")
    try:
        value = json_format.MessageToDict(message)
    except Exception:
        value = {}
    _same_parse(_bend(value, data), message_factory.GetMessageClass(descriptor))


def test_an_answer_with_every_kind_of_field_takes_the_plan() -> None:
    """Google's usual answer shapes convert without falling back to json_format."""
    answer = {
        "candidates": [
            {
                "content": {
                    "role": "model",
                    "parts": [{"text": "hi", "thoughtSignature": "AQID"}],
                },
                "finishReason": "STOP",
                "index": 0,
                "avgLogprobs": -0.25,
                "safetyRatings": [{"category": "HARM_CATEGORY_HARASSMENT", "blocked": False}],
            }
        ],
        "usageMetadata": {"promptTokenCount": 3, "totalTokenCount": 5},
        "modelVersion": "gemini-2.5-flash",
        "unknownField": {"x": 1},
    }
    message = generative_service_pb2.GenerateContentResponse()
    proto_json._fill(message, answer, 1)  # raises _GiveUp if the plan could not take it
    expected = json_format.ParseDict(answer, type(message)(), ignore_unknown_fields=True)
    assert message == expected
    assert message.candidates[0].content.parts[0].thought_signature == b"\x01\x02\x03"


def test_well_known_types_go_through_json_format() -> None:
    """A Struct inside a message (function call arguments) is json_format's to convert."""
    part = content_pb2.Part(
        function_call=content_pb2.FunctionCall(name="f", args=struct_pb2.Struct())
    )
    part.function_call.args.update({"city": "Paris", "days": 3, "tags": ["a", None]})
    printed = proto_json.to_dict(part)
    assert printed == json_format.MessageToDict(part)
    text = json.dumps(printed)
    assert proto_json.parse(text, json.loads(text), content_pb2.Part) == part


@pytest.mark.parametrize(
    "text",
    [
        '{"text": "\\ud800"}',  # a lone surrogate: refused, as json_format refuses it
        '{"text": "a", "text": "b"}',
        '{"text": "a", "inlineData": {"mimeType": "x"}}',  # two fields of one oneof
        '{"thoughtSignature": 12}',
        '{"text": null}',
    ],
)
def test_what_the_plan_refuses_is_json_formats_to_answer(text: str) -> None:
    _same_parse(json.loads(text), content_pb2.Part)


EDGE_VALUES = [
    None, True, False, 0, 1, -1, 2**31, -(2**31) - 1, 2**32, 2**63, 2**64, 10**400,
    0.5, 1.0, -0.0, 1e38, 3.5e38, -3.5e38, 1e308, float("inf"), float("nan"),
    "", "1", "-5", " 1", "1.0", "1e3", "0x10", "NaN", "Infinity", "-Infinity", "nan",
    "true", "STOP", "HARM_CATEGORY_HARASSMENT", "AQID", "AQ", "-_8", "?", [], {}, [1], {"a": 1},
]  # fmt: skip


def test_every_scalar_field_takes_edge_values_as_json_format_does() -> None:
    """Each singular and repeated scalar field of every type, with values at and past the
    edges of what its kind accepts (ranges, spellings, wrong types)."""
    checked = 0
    for descriptor in DESCRIPTORS:
        message_class = message_factory.GetMessageClass(descriptor)
        for field in descriptor.fields:
            if field.message_type is not None:
                continue
            for value in EDGE_VALUES:
                _same_parse({field.json_name: value}, message_class)
                if field.is_repeated:
                    _same_parse({field.json_name: [value]}, message_class)
                checked += 1
    assert checked > 1000
