"""Our v1beta messages match Google's published ones field by field (number, type, name)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from gemini_gateway.generated.google.ai.generativelanguage.v1beta import (
    citation_pb2,
    content_pb2,
    generative_service_pb2,
    model_pb2,
    model_service_pb2,
    safety_pb2,
    tuned_model_pb2,
)

SCRIPT = Path(__file__).with_name("official_descriptors_script.py")
FILES = (
    citation_pb2, content_pb2, generative_service_pb2, model_pb2, model_service_pb2,
    safety_pb2, tuned_model_pb2,
)  # fmt: skip

# Fields where we deliberately differ from the PyPI package, with the reason.
EXPECTED_DIFFERENCES = {
    # The PyPI package carries no json_name options; the REST API uses these names.
    ("google.ai.generativelanguage.v1beta.GenerationConfig", 24, "json_name"),
    ("google.ai.generativelanguage.v1beta.GenerationConfig", 28, "json_name"),
}
# Gateway extension fields (numbers >= 1000) are ours alone.
EXTENSION_FLOOR = 1000


def _messages() -> list:
    found = []

    def walk(descriptor) -> None:
        if descriptor.GetOptions().map_entry:
            return
        found.append(descriptor)
        for nested in descriptor.nested_types:
            walk(nested)

    for module in FILES:
        for descriptor in module.DESCRIPTOR.message_types_by_name.values():
            walk(descriptor)
    return found


def _ours(descriptor) -> dict[int, dict]:
    return {
        field.number: {
            "name": field.name,
            "type": field.type,
            "type_name": (field.message_type or field.enum_type).full_name
            if (field.message_type or field.enum_type)
            else "",
            "repeated": field.is_repeated,
            "json_name": field.json_name,
            "oneof": field.containing_oneof.name
            if field.containing_oneof and not field.containing_oneof.name.startswith("_")
            else "",
        }
        for field in descriptor.fields
        if field.number < EXTENSION_FLOOR
    }


def test_every_message_matches_the_published_api() -> None:
    messages = _messages()
    names = " ".join(m.full_name for m in messages)
    result = subprocess.run(
        [sys.executable, str(SCRIPT)], input=names, capture_output=True, text=True, check=True
    )
    official = json.loads(result.stdout)
    problems = []
    for message in messages:
        theirs = official[message.full_name]
        if theirs is None:
            problems.append(f"{message.full_name}: not in the published API")
            continue
        theirs = {int(k): v for k, v in theirs.items()}
        ours = _ours(message)
        for number in sorted(set(ours) | set(theirs)):
            if number not in ours:
                problems.append(f"{message.full_name}: missing field {number} {theirs[number]}")
                continue
            if number not in theirs:
                problems.append(f"{message.full_name}: extra field {number} {ours[number]}")
                continue
            for key, value in ours[number].items():
                if value != theirs[number][key] and (
                    (message.full_name, number, key) not in EXPECTED_DIFFERENCES
                ):
                    problems.append(
                        f"{message.full_name}.{ours[number]['name']} ({number}): "
                        f"{key} {value!r} != published {theirs[number][key]!r}"
                    )
    assert not problems, "\n".join(problems)
    assert len(messages) > 60


def test_labels_extension_field() -> None:
    field = generative_service_pb2.GenerateContentRequest.DESCRIPTOR.fields_by_name["labels"]
    assert field.number >= EXTENSION_FLOOR
    assert field.json_name == "labels"
    config = generative_service_pb2.GenerationConfig.DESCRIPTOR.fields_by_number
    assert config[24].json_name == "_responseJsonSchema"
    assert config[28].json_name == "responseJsonSchema"
