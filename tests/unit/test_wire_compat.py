"""Our v1beta and v1 protos match Google's published ones: every message field by field
(number, type, name, JSON name, oneof, presence), every enum value, and every method's
call kind, request and response types and http bindings."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest
from google.api import annotations_pb2

from gemini_gateway.generated.google.ai.generativelanguage import v1, v1beta
from gemini_gateway.generated.google.ai.generativelanguage.v1 import (
    citation_pb2 as v1_citation_pb2,
)
from gemini_gateway.generated.google.ai.generativelanguage.v1 import (
    content_pb2 as v1_content_pb2,
)
from gemini_gateway.generated.google.ai.generativelanguage.v1 import (
    generative_service_pb2 as v1_generative_service_pb2,
)
from gemini_gateway.generated.google.ai.generativelanguage.v1 import (
    model_pb2 as v1_model_pb2,
)
from gemini_gateway.generated.google.ai.generativelanguage.v1 import (
    model_service_pb2 as v1_model_service_pb2,
)
from gemini_gateway.generated.google.ai.generativelanguage.v1 import (
    safety_pb2 as v1_safety_pb2,
)
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
FILES: dict[str, tuple[ModuleType, ...]] = {
    "v1beta": (
        citation_pb2, content_pb2, generative_service_pb2, model_pb2, model_service_pb2,
        safety_pb2, tuned_model_pb2,
    ),
    "v1": (
        v1_citation_pb2, v1_content_pb2, v1_generative_service_pb2, v1_model_pb2,
        v1_model_service_pb2, v1_safety_pb2,
    ),
}  # fmt: skip
VERSIONS = tuple(FILES)
# Fewest messages each version must hold, so that a lost file cannot pass unnoticed.
MIN_MESSAGES = {"v1beta": 60, "v1": 35}

# Fields where we deliberately differ from the PyPI package, with the reason.
EXPECTED_DIFFERENCES = {
    # The PyPI package carries no json_name options; the REST API uses these names.
    ("google.ai.generativelanguage.v1beta.GenerationConfig", 24, "json_name"),
    ("google.ai.generativelanguage.v1beta.GenerationConfig", 28, "json_name"),
    ("google.ai.generativelanguage.v1.GenerationConfig", 28, "json_name"),
}
# Services whose every published method the gateway declares (of v1beta, a subset).
DECLARED_IN_FULL = {
    "google.ai.generativelanguage.v1.GenerativeService",
    "google.ai.generativelanguage.v1.ModelService",
}
# Gateway extension fields (numbers >= 1000) are ours alone.
EXTENSION_FLOOR = 1000

# The Batch API: served by the REST API (JSON names from its reference) but absent from the
# reference package, so its field numbers are the gateway's own. Checked absent below: when
# a package version publishes them, this test asks for the numbers to be compared.
_V1BETA = "google.ai.generativelanguage.v1beta."
NOT_IN_REFERENCE_PACKAGE = {
    _V1BETA + name
    for name in (
        "BatchGenerateContentRequest", "GenerateContentBatch", "GenerateContentBatch.BatchState",
        "InputConfig", "InlinedRequests", "InlinedRequest", "GenerateContentBatchOutput",
        "InlinedResponses", "InlinedResponse", "BatchStats",
        "GenerativeService.BatchGenerateContent",
    )
}  # fmt: skip


def _walk(descriptor, messages: list, enums: list) -> None:
    if descriptor.GetOptions().map_entry:
        return
    messages.append(descriptor)
    enums.extend(descriptor.enum_types)
    for nested in descriptor.nested_types:
        _walk(nested, messages, enums)


def _declared(version: str) -> tuple[list, list, list]:
    """Messages (nested ones too), enums and services of one version's files."""
    messages: list = []
    enums: list = []
    services: list = []
    for module in FILES[version]:
        enums.extend(module.DESCRIPTOR.enum_types_by_name.values())
        services.extend(module.DESCRIPTOR.services_by_name.values())
        for descriptor in module.DESCRIPTOR.message_types_by_name.values():
            _walk(descriptor, messages, enums)
    return messages, enums, services


@pytest.fixture(scope="module")
def official() -> dict:
    """What the published packages declare, for every name of every version we declare."""
    request: dict[str, list[str]] = {"messages": [], "enums": [], "services": []}
    for version in VERSIONS:
        for key, descriptors in zip(request, _declared(version), strict=True):
            request[key] += [descriptor.full_name for descriptor in descriptors]
    result = subprocess.run(
        [sys.executable, str(SCRIPT)],
        input=json.dumps(request),
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def _fields(descriptor) -> dict[int, dict]:
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
            "presence": field.has_presence,
        }
        for field in descriptor.fields
        if field.number < EXTENSION_FLOOR
    }


def _http(method) -> list[list[str]]:
    rule = method.GetOptions().Extensions[annotations_pb2.http]
    bindings = []
    for binding in (rule, *rule.additional_bindings):
        verb = binding.WhichOneof("pattern")
        bindings.append([verb, getattr(binding, verb), binding.body])
    return bindings


def _kind(method) -> str:
    client = "stream" if method.client_streaming else "unary"
    server = "stream" if method.server_streaming else "unary"
    return f"{client}_{server}"


@pytest.mark.parametrize("version", VERSIONS)
def test_every_message_matches_the_published_api(version: str, official: dict) -> None:
    messages, _, _ = _declared(version)
    problems = []
    for message in messages:
        theirs = official["messages"][message.full_name]
        if message.full_name in NOT_IN_REFERENCE_PACKAGE:
            assert theirs is None, f"{message.full_name} is published now: compare its fields"
            continue
        if theirs is None:
            problems.append(f"{message.full_name}: not in the published API")
            continue
        theirs = {int(k): v for k, v in theirs.items()}
        ours = _fields(message)
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
    assert len(messages) >= MIN_MESSAGES[version]


@pytest.mark.parametrize("version", VERSIONS)
def test_every_enum_matches_the_published_api(version: str, official: dict) -> None:
    _, enums, _ = _declared(version)
    problems = []
    for enum in enums:
        theirs = official["enums"][enum.full_name]
        if enum.full_name in NOT_IN_REFERENCE_PACKAGE:
            assert theirs is None, f"{enum.full_name} is published now: compare its values"
            continue
        if theirs is None:
            problems.append(f"{enum.full_name}: not in the published API")
            continue
        ours = {value.number: value.name for value in enum.values}
        if ours != {int(k): v for k, v in theirs.items()}:
            problems.append(f"{enum.full_name}: {ours} != published {theirs}")
    assert not problems, "\n".join(problems)
    assert enums


@pytest.mark.parametrize("version", VERSIONS)
def test_every_method_matches_the_published_api(version: str, official: dict) -> None:
    """Path, call kind, types and every http binding, in order, as Google's clients use them."""
    _, _, services = _declared(version)
    problems = []
    for service in services:
        theirs = official["services"][service.full_name]
        if theirs is None:
            problems.append(f"{service.full_name}: not in the published API")
            continue
        ours = {
            method.name: {
                "kind": _kind(method),
                "input": method.input_type.full_name,
                "output": method.output_type.full_name,
                "http": _http(method),
            }
            for method in service.methods
        }
        for name in sorted(set(ours) - set(theirs)):
            if f"{service.full_name}.{name}" in NOT_IN_REFERENCE_PACKAGE:
                continue
            problems.append(f"{service.full_name}.{name}: not in the published API")
        if service.full_name in DECLARED_IN_FULL:
            for name in sorted(set(theirs) - set(ours)):
                problems.append(f"{service.full_name}.{name}: published but not declared")
        for name in sorted(set(ours) & set(theirs)):
            if ours[name] != theirs[name]:
                problems.append(f"{service.full_name}.{name}: {ours[name]} != {theirs[name]}")
    assert not problems, "\n".join(problems)
    assert services


@pytest.mark.parametrize(
    "module", [generative_service_pb2, v1_generative_service_pb2], ids=["v1beta", "v1"]
)
def test_labels_extension_field(module: ModuleType) -> None:
    field = module.GenerateContentRequest.DESCRIPTOR.fields_by_name["labels"]
    assert field.number >= EXTENSION_FLOOR
    assert field.json_name == "labels"
    assert field.message_type.GetOptions().map_entry


def test_response_json_schema_json_names() -> None:
    config = generative_service_pb2.GenerationConfig.DESCRIPTOR.fields_by_number
    assert config[24].json_name == "_responseJsonSchema"
    assert config[28].json_name == "responseJsonSchema"
    v1_config = v1_generative_service_pb2.GenerationConfig.DESCRIPTOR.fields_by_number
    assert v1_config[28].json_name == "responseJsonSchema"
    assert 24 not in v1_config


def test_versions_share_no_http_path() -> None:
    """v1 and v1beta bind the same methods under their own prefix, never each other's."""
    for version, package in (("v1beta", v1beta), ("v1", v1)):
        _, _, services = _declared(version)
        prefix = f"/{package.__name__.rsplit('.', 1)[-1]}/"
        paths = [path for service in services for m in service.methods for _, path, _ in _http(m)]
        assert paths
        assert all(path.startswith(prefix) for path in paths), (version, paths)
