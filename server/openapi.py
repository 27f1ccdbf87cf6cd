"""The OpenAPI 3.1 description of the HTTP face, generated from the same route table.

Nothing here is written per method: each binding of the face's InboundRouteTable becomes an
operation, and schemas come from the message descriptors under the proto3 JSON mapping
(int64 as strings, enums as their names, Timestamp, Duration and FieldMask as strings,
bytes as base64, maps as objects, wrappers as their value). Served at `GET /openapi.json`.

Paths: a variable's sub-template is spelt out, its wildcards becoming path parameters named
after the collection before them, as Google's discovery documents name them
(`/v1/{name=projects/*/datasets/*}` -> `/v1/projects/{projectsId}/datasets/{datasetsId}`);
a variable without literal segments keeps its field's name (`/v1/{name}:watch`). Each
operation says in `x-google-http-template` which rule it comes from. Streaming methods answer
`text/event-stream`; `x-sse-data-schema` is the schema of each event's data.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

import grpc
from google.api import field_behavior_pb2
from google.protobuf.descriptor import Descriptor, EnumDescriptor, FieldDescriptor

from gemini_gateway.server.face_headers import (
    PASSED_HEADER_MAX,
    PASSED_HEADERS,
    TIMEOUT_HEADER,
    TIMEOUT_PATTERN,
)

if TYPE_CHECKING:
    from gemini_gateway.server.http_face import InboundRoute, PathTemplate

OPENAPI_VERSION = "3.1.0"
TITLE = "Gemini gRPC Gateway: REST/JSON face"
API_VERSION = "v1"
ERROR_SCHEMA = "Error"
# Nested request fields offered as `a.b.c` query parameters, at most this deep.
MAX_QUERY_DEPTH = 3

# The request headers every operation takes besides the bearer token (face_headers.py: what
# http_face reads), and the request id every answer carries.
_HEADER_DESCRIPTIONS = {
    "x-request-id": "The call's request id (1 to 128 letters, digits or -_.:/+=); otherwise "
    "the gateway makes one. Answered in the X-Request-Id header.",
    "traceparent": "W3C trace context: the call's span becomes a child of this one.",
    "tracestate": "W3C trace context, with traceparent.",
}
HEADER_PARAMETERS: tuple[dict[str, Any], ...] = (
    *(
        {
            "name": name,
            "in": "header",
            "description": _HEADER_DESCRIPTIONS[name],
            "schema": {"type": "string", "maxLength": PASSED_HEADER_MAX},
        }
        for name in PASSED_HEADERS
    ),
    {
        "name": TIMEOUT_HEADER,
        "in": "header",
        "description": "The call's deadline in gRPC's form: up to 8 digits and a unit, "
        "H, M, S, m, u or n (30S, 500m). Past it: DEADLINE_EXCEEDED (504).",
        "schema": {"type": "string", "pattern": f"^{TIMEOUT_PATTERN}$"},
    },
)
REQUEST_ID_RESPONSE_HEADER = {
    "X-Request-Id": {
        "description": "The call's request id: the caller's, or the one the gateway made.",
        "schema": {"type": "string"},
    }
}

_SCHEMA_PREFIX = "#/components/schemas/"
_STRING = {"type": "string"}
_INT64 = {"type": "string", "format": "int64", "pattern": r"^-?[0-9]+$"}
_UINT64 = {"type": "string", "format": "uint64", "pattern": r"^[0-9]+$"}
_INT32 = {"type": "integer", "format": "int32"}
_UINT32 = {"type": "integer", "format": "uint32", "minimum": 0}
_NUMBER = {"type": "number", "format": "double"}
_FLOAT = {"type": "number", "format": "float"}
_BOOL = {"type": "boolean"}
_BYTES = {"type": "string", "format": "byte", "contentEncoding": "base64"}

SCALAR_SCHEMAS: dict[int, dict[str, Any]] = {
    FieldDescriptor.TYPE_DOUBLE: _NUMBER,
    FieldDescriptor.TYPE_FLOAT: _FLOAT,
    FieldDescriptor.TYPE_INT64: _INT64,
    FieldDescriptor.TYPE_SINT64: _INT64,
    FieldDescriptor.TYPE_SFIXED64: _INT64,
    FieldDescriptor.TYPE_UINT64: _UINT64,
    FieldDescriptor.TYPE_FIXED64: _UINT64,
    FieldDescriptor.TYPE_INT32: _INT32,
    FieldDescriptor.TYPE_SINT32: _INT32,
    FieldDescriptor.TYPE_SFIXED32: _INT32,
    FieldDescriptor.TYPE_UINT32: _UINT32,
    FieldDescriptor.TYPE_FIXED32: _UINT32,
    FieldDescriptor.TYPE_BOOL: _BOOL,
    FieldDescriptor.TYPE_STRING: _STRING,
    FieldDescriptor.TYPE_BYTES: _BYTES,
}

# Well-known types, as proto3 JSON writes them.
WELL_KNOWN_SCHEMAS: dict[str, dict[str, Any]] = {
    "google.protobuf.Timestamp": {"type": "string", "format": "date-time"},
    "google.protobuf.Duration": {
        "type": "string",
        "pattern": r"^-?[0-9]+(\.[0-9]{1,9})?s$",
        "description": "Seconds with an `s` suffix, e.g. `1.5s`.",
    },
    "google.protobuf.FieldMask": {
        "type": "string",
        "description": "Comma-separated field paths in camelCase, e.g. `displayName,description`.",
    },
    "google.protobuf.Empty": {"type": "object"},
    "google.protobuf.Struct": {"type": "object", "additionalProperties": True},
    "google.protobuf.Value": {},
    "google.protobuf.ListValue": {"type": "array"},
    "google.protobuf.Any": {
        "type": "object",
        "properties": {"@type": {"type": "string"}},
        "required": ["@type"],
        "additionalProperties": True,
    },
    "google.protobuf.DoubleValue": _NUMBER,
    "google.protobuf.FloatValue": _FLOAT,
    "google.protobuf.Int64Value": _INT64,
    "google.protobuf.UInt64Value": _UINT64,
    "google.protobuf.Int32Value": _INT32,
    "google.protobuf.UInt32Value": _UINT32,
    "google.protobuf.BoolValue": _BOOL,
    "google.protobuf.StringValue": _STRING,
    "google.protobuf.BytesValue": _BYTES,
}


def openapi_document(
    routes: Iterable[InboundRoute], *, title: str = TITLE, version: str = API_VERSION
) -> dict[str, Any]:
    """The OpenAPI 3.1 document of `routes` (an InboundRouteTable)."""
    schemas = SchemaSet()
    paths: dict[str, dict[str, Any]] = {}
    for route in sorted(routes, key=lambda r: (r.full_method, r.index)):
        path, parameters = openapi_path(route.template)
        paths.setdefault(path, {})[route.binding.verb] = _operation(route, parameters, schemas)
    return {
        "openapi": OPENAPI_VERSION,
        "info": {
            "title": title,
            "version": version,
            "description": (
                "HTTP+JSON for the gateway's own gRPC services, derived from their "
                "google.api.http rules: the same methods, auth, validation and errors. "
                "Messages are proto3 JSON; errors are google.rpc.Status as JSON; "
                "server-streaming methods answer server-sent events."
            ),
        },
        "servers": [{"url": "/"}],
        "security": [{"bearer": []}, {}],
        "paths": dict(sorted(paths.items())),
        "components": {
            "schemas": {ERROR_SCHEMA: error_schema(), **schemas.components()},
            "securitySchemes": {
                "bearer": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "A caller token of the gateway's configuration "
                    "(none needed when no callers are configured).",
                }
            },
        },
    }


def openapi_path(template: PathTemplate) -> tuple[str, list[dict[str, Any]]]:
    """The OpenAPI path of a template and its path parameters."""
    from gemini_gateway.server.http_face import Variable

    pieces: list[str] = []
    parameters: list[dict[str, Any]] = []
    names: set[str] = set()

    def parameter(base: str, variable: Variable, multi: bool) -> str:
        name, number = base, 2
        while name in names:
            name, number = f"{base}{number}", number + 1
        names.add(name)
        spelt = "/".join(s.text if s.kind == "literal" else s.kind for s in variable.segments)
        description = f"Part of `{variable.field_path}` (`{spelt}`)."
        schema: dict[str, Any] = {"type": "string"}
        if multi:
            description += " May hold several path segments: send its slashes as they are."
        else:
            schema["pattern"] = "^[^/]+$"
        parameters.append(
            {
                "name": name,
                "in": "path",
                "required": True,
                "description": description,
                "schema": schema,
            }
        )
        return "{" + name + "}"

    for part in template.parts:
        if not isinstance(part, Variable):
            pieces.append(part.text)  # PathTemplate.parse keeps wildcards inside variables
            continue
        previous = ""
        for segment in part.segments:
            if segment.kind == "literal":
                pieces.append(segment.text)
                previous = segment.text
                continue
            base = f"{previous}Id" if previous else part.field_path
            pieces.append(parameter(base, part, segment.kind == "**"))
            previous = ""
    path = "/" + "/".join(pieces) + (f":{template.verb}" if template.verb else "")
    return path, parameters


def _operation(
    route: InboundRoute, path_parameters: list[dict[str, Any]], schemas: SchemaSet
) -> dict[str, Any]:
    method = route.route.method
    service = method.containing_service
    operation_id = method.full_name + (f"_{route.index}" if route.index else "")
    binding = route.binding
    request = method.input_type
    parameters = list(path_parameters)
    if binding.body != "*":
        excluded = set(binding.variables) | ({binding.body} if binding.body else set())
        parameters += query_parameters(request, schemas, excluded)
    parameters += HEADER_PARAMETERS
    operation: dict[str, Any] = {
        "operationId": operation_id,
        "tags": [service.full_name],
        "summary": f"{service.name}.{method.name}",
        "x-google-http-template": f"{route.http_method} {binding.template}",
        "x-grpc-method": route.full_method,
        "parameters": parameters,
        "responses": {
            "200": _success(route, schemas),
            "default": {
                "description": "An error: google.rpc.Status as JSON.",
                "headers": REQUEST_ID_RESPONSE_HEADER,
                "content": {
                    "application/json": {"schema": {"$ref": _SCHEMA_PREFIX + ERROR_SCHEMA}}
                },
            },
        },
    }
    if binding.body:
        operation["requestBody"] = {
            "required": True,
            "content": {"application/json": {"schema": _body_schema(route, schemas)}},
        }
    return operation


def _success(route: InboundRoute, schemas: SchemaSet) -> dict[str, Any]:
    response = schemas.ref(route.route.method.output_type)
    if not route.streaming:
        return {
            "description": f"{route.route.method.output_type.full_name} as proto3 JSON.",
            "headers": REQUEST_ID_RESPONSE_HEADER,
            "content": {"application/json": {"schema": response}},
        }
    return {
        "headers": REQUEST_ID_RESPONSE_HEADER,
        "description": (
            f"Server-sent events: one `data:` event per {route.route.method.output_type.name} "
            "as proto3 JSON; `event: error` with the error body if the call fails once "
            "started; `event: end` when it ends."
        ),
        "content": {
            "text/event-stream": {
                "schema": {"type": "string"},
                "x-sse-data-schema": response,
            }
        },
    }


def _body_schema(route: InboundRoute, schemas: SchemaSet) -> dict[str, Any]:
    request = route.route.method.input_type
    body = route.binding.body
    if body != "*":
        return schemas.field_schema(request.fields_by_name[body])
    top_level_bound = {variable for variable in route.binding.variables if "." not in variable}
    properties = {
        f.json_name: schemas.field_schema(f)
        for f in request.fields
        if f.name not in top_level_bound
    }
    return {
        "type": "object",
        "description": f"{request.full_name} without the fields the path sets.",
        "properties": properties,
        "additionalProperties": False,
    }


def query_parameters(
    request: Descriptor, schemas: SchemaSet, excluded: set[str]
) -> list[dict[str, Any]]:
    """The query parameters of a request: its fields outside the path and the body, nested
    messages as dotted names (maps and repeated messages cannot be set by a query)."""
    parameters: list[dict[str, Any]] = []

    def walk(descriptor: Descriptor, json_prefix: str, proto_prefix: str, seen: set[str]) -> None:
        for f in descriptor.fields:
            proto_path = proto_prefix + f.name
            if proto_path in excluded:
                continue
            message = f.message_type
            if message is not None and _is_map(f):
                continue
            if message is not None and message.full_name not in WELL_KNOWN_SCHEMAS:
                if f.is_repeated or message.full_name in seen:
                    continue
                if len(seen) < MAX_QUERY_DEPTH:
                    walk(
                        message,
                        f"{json_prefix}{f.json_name}.",
                        f"{proto_path}.",
                        seen | {message.full_name},
                    )
                continue
            if message is not None and message.full_name in ("google.protobuf.Struct",
                                                             "google.protobuf.Value",
                                                             "google.protobuf.ListValue",
                                                             "google.protobuf.Any",
                                                             "google.protobuf.Empty"):  # fmt: skip
                continue
            parameter: dict[str, Any] = {
                "name": json_prefix + f.json_name,
                "in": "query",
                "required": False,
                "schema": schemas.field_schema(f),
            }
            description = _field_description(f)
            if proto_path != parameter["name"]:
                also = f"Also accepted as `{proto_path}`."
                description = f"{description} {also}".strip()
            if description:
                parameter["description"] = description
            if f.is_repeated:
                parameter["explode"] = True  # repeated as name=a&name=b
            parameters.append(parameter)

    walk(request, "", "", {request.full_name})
    return parameters


def error_schema() -> dict[str, Any]:
    """`{"error": google.rpc.Status}` as Google's REST APIs answer errors."""
    return {
        "type": "object",
        "required": ["error"],
        "properties": {
            "error": {
                "type": "object",
                "required": ["code", "message", "status"],
                "properties": {
                    "code": {"type": "integer", "description": "The HTTP status."},
                    "message": {"type": "string"},
                    "status": {
                        "type": "string",
                        "description": "The google.rpc.Code name.",
                        "enum": [code.name for code in grpc.StatusCode],
                    },
                    "details": {
                        "type": "array",
                        "description": "google.rpc error details (BadRequest, ...), each "
                        "with its `@type`.",
                        "items": WELL_KNOWN_SCHEMAS["google.protobuf.Any"],
                    },
                },
            }
        },
    }


class SchemaSet:
    """The component schemas of the messages and enums an operation refers to."""

    def __init__(self) -> None:
        self._schemas: dict[str, dict[str, Any]] = {}

    def components(self) -> dict[str, dict[str, Any]]:
        return dict(sorted(self._schemas.items()))

    def ref(self, message: Descriptor) -> dict[str, Any]:
        """A reference to the message's schema (or the inline schema of a well-known type)."""
        if message.full_name in WELL_KNOWN_SCHEMAS:
            return dict(WELL_KNOWN_SCHEMAS[message.full_name])
        if message.full_name not in self._schemas:
            self._schemas[message.full_name] = {}  # a recursive message refers to itself
            self._schemas[message.full_name] = self._message_schema(message)
        return {"$ref": _SCHEMA_PREFIX + message.full_name}

    def enum_ref(self, enum: EnumDescriptor) -> dict[str, Any]:
        if enum.full_name == "google.protobuf.NullValue":
            return {"type": "null"}
        if enum.full_name not in self._schemas:
            self._schemas[enum.full_name] = {
                "type": "string",
                "enum": [value.name for value in enum.values],
                "description": "Written by name; a number is accepted too.",
            }
        return {"$ref": _SCHEMA_PREFIX + enum.full_name}

    def field_schema(self, f: FieldDescriptor) -> dict[str, Any]:
        """The schema of a field's JSON value (an array or object for repeated and maps)."""
        if _is_map(f):
            assert f.message_type is not None  # a map's entry
            value = f.message_type.fields_by_name["value"]
            schema: dict[str, Any] = {
                "type": "object",
                "additionalProperties": self._single(value),
            }
        elif f.is_repeated:
            schema = {"type": "array", "items": self._single(f)}
        else:
            schema = self._single(f)
        description = _field_description(f)
        if description:  # JSON Schema 2020-12: keywords may stand beside a $ref
            schema = {**schema, "description": description}
        if _behaviours(f) & {field_behavior_pb2.OUTPUT_ONLY}:
            schema = {**schema, "readOnly": True}
        if f.GetOptions().deprecated:
            schema = {**schema, "deprecated": True}
        return schema

    def _single(self, f: FieldDescriptor) -> dict[str, Any]:
        if f.message_type is not None:
            return self.ref(f.message_type)
        if f.enum_type is not None:
            return self.enum_ref(f.enum_type)
        return dict(SCALAR_SCHEMAS[f.type])

    def _message_schema(self, message: Descriptor) -> dict[str, Any]:
        return {
            "type": "object",
            "title": message.name,
            "properties": {f.json_name: self.field_schema(f) for f in message.fields},
        }


def _is_map(f: FieldDescriptor) -> bool:
    message = f.message_type
    return message is not None and f.is_repeated and message.GetOptions().map_entry


def _behaviours(f: FieldDescriptor) -> set[int]:
    return set(f.GetOptions().Extensions[field_behavior_pb2.field_behavior])


_BEHAVIOUR_WORDS = {
    field_behavior_pb2.REQUIRED: "Required.",
    field_behavior_pb2.OUTPUT_ONLY: "Output only.",
    field_behavior_pb2.IDENTIFIER: "The resource's name.",
    field_behavior_pb2.IMMUTABLE: "Immutable.",
}


def _field_description(f: FieldDescriptor) -> str:
    behaviours = _behaviours(f)
    return " ".join(words for value, words in _BEHAVIOUR_WORDS.items() if value in behaviours)
