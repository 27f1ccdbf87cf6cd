"""Refusing request fields Google's REST API does not know, the way Google refuses them.

Google parses a request body into its proto message before anything else looks at it, and a
JSON name that maps to no field of that message is a 400 INVALID_ARGUMENT:

    Invalid JSON payload received. Unknown name "fooBar" at 'generation_config': Cannot find field.

The path names fields by their proto (snake_case) names, indexes lists (`contents[0].parts[1]`)
and map entries (`properties[2].value`, the entry's position in the JSON object), and is left
out for a top-level field. Every unknown field gets its own sentence (joined by newlines) and
its own BadRequest field violation.

The known fields come from the descriptors of the gateway's generated protos, which are
Google's messages plus gateway extensions, so a field added there is accepted here at once,
and everything the gateway sends (proto3 JSON of those messages) is accepted. Both spellings
Google's parser takes are known: the proto name and the JSON name. Values of the well-known
types (Struct, Value, Duration, ...) are free-form JSON or strings and are not looked into.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from typing import Any

from aiohttp import web
from google.protobuf.descriptor import Descriptor, FieldDescriptor

from gemini_gateway.emulator.errors import ApiError, detail
from gemini_gateway.emulator.fields import read_body, snake_case
from gemini_gateway.emulator.settings import SETTINGS_KEY
from gemini_gateway.generated.google.ai.generativelanguage.v1beta import generative_service_pb2

# The request messages whose bodies are checked, by their proto name.
REQUEST_TYPES: dict[str, Descriptor] = {
    name: generative_service_pb2.DESCRIPTOR.message_types_by_name[name]
    for name in (
        "GenerateContentRequest",
        "CountTokensRequest",
        "EmbedContentRequest",
        "BatchEmbedContentsRequest",
    )
}

# Fields the live API accepts that the gateway's protos do not carry, by message name; their
# values are not looked into. `labels` is in the protos as a gateway extension, and is listed
# so the live API's behaviour holds even without it. Snake_case spellings are accepted too.
EXTRA_FIELDS: dict[str, tuple[str, ...]] = {
    "GenerateContentRequest": ("labels", "serviceTier", "store"),
    # Gemini 3's thinking control (google-genai sends it as thinking_level).
    "ThinkingConfig": ("thinkingLevel",),
}

# Messages whose JSON form is a string or free-form JSON.
_WELL_KNOWN_PACKAGE = "google.protobuf."


@functools.cache
def _known_names(descriptor: Descriptor) -> dict[str, FieldDescriptor | None]:
    """JSON name and proto name of every field -> the field (None: accepted, not looked into)."""
    known: dict[str, FieldDescriptor | None] = {}
    for extra in EXTRA_FIELDS.get(descriptor.name, ()):
        known[extra] = known[snake_case(extra)] = None
    for field in descriptor.fields:
        known[field.name] = known[field.json_name] = field
    return known


def _checked_message(field: FieldDescriptor) -> Descriptor | None:
    """The message type whose fields a value of `field` must match, if any."""
    message = field.message_type
    if message is None or message.full_name.startswith(_WELL_KNOWN_PACKAGE):
        return None
    return message


def _join(path: str, name: str) -> str:
    return f"{path}.{name}" if path else name


def unknown_fields(value: Any, descriptor: Descriptor, path: str = "") -> list[tuple[str, str]]:
    """(path, name) of every field in `value` that `descriptor` lacks, in the body's order.

    Values of the wrong JSON type are skipped: telling those apart is not this check's job.
    """
    if not isinstance(value, Mapping):
        return []
    known = _known_names(descriptor)
    found: list[tuple[str, str]] = []
    for name, item in value.items():
        if name not in known:
            found.append((path, name))
            continue
        field = known[name]
        if field is None or item is None:
            continue
        message = _checked_message(field)
        if message is None:
            continue
        where = _join(path, field.name)
        if message.GetOptions().map_entry:
            entry_type = _checked_message(message.fields_by_name["value"])
            if entry_type is not None and isinstance(item, Mapping):
                for index, entry in enumerate(item.values()):
                    found += unknown_fields(entry, entry_type, f"{where}[{index}].value")
        elif field.is_repeated:
            if isinstance(item, list):
                for index, element in enumerate(item):
                    found += unknown_fields(element, message, f"{where}[{index}]")
        else:
            found += unknown_fields(item, message, where)
    return found


def unknown_field_sentence(path: str, name: str) -> str:
    where = f" at '{path}'" if path else ""
    return f'Invalid JSON payload received. Unknown name "{name}"{where}: Cannot find field.'


def check_known_fields(body: Mapping[str, Any], request_type: str) -> None:
    """Raise Google's 400 when `body` holds a field the `request_type` message lacks."""
    found = unknown_fields(body, REQUEST_TYPES[request_type])
    if not found:
        return
    sentences = [unknown_field_sentence(path, name) for path, name in found]
    violations = []
    for (path, _), sentence in zip(found, sentences, strict=True):
        # proto3 JSON leaves out the empty `field` of a top-level violation, as Google does.
        violation = {"field": path} if path else {}
        violations.append({**violation, "description": sentence})
    raise ApiError(
        "INVALID_ARGUMENT",
        "\n".join(sentences),
        [detail("BadRequest", fieldViolations=violations)],
    )


async def read_request(request: web.Request, request_type: str) -> dict[str, Any]:
    """The JSON body of an API call, checked for unknown fields unless the emulator is lenient."""
    body = await read_body(request)
    if request.app[SETTINGS_KEY].strict_fields:
        check_known_fields(body, request_type)
    return body
