"""The REST/JSON face of the gateway's own services, derived from their google.api.http rules.

grpc-gateway's idea, inbound: at start the face reads the `google.api.http` rule of every
method of the services it is given (gemini.gateway.v1 UsageService, LogService,
DatasetService, RunService, OperationWatchService), validates them as the forward path does
(`routes.route_for_method`: no body on GET, scalar path fields, no nested bindings) and
compiles each path template into a matcher. No handler is written per method: one handler
matches the request against that table, fills the request message from the path variables,
the query and the body, and calls the method on the gateway's own gRPC server through a
grpc.aio channel, so auth, validation, tenancy and errors are exactly the gRPC ones. Adding
an RPC with an http rule to a .proto makes it reachable here with no code change. Rules of a
service config (google.api.Service YAML) may be given too; they win over the annotations.

The mapping (docs/http-face.md):

- Path: `{field=projects/*}` binds a string field (dotted paths such as `dataset.name` too).
  A template ending in `:verb` matches only paths ending in that verb; a template without
  one never matches a path whose last segment holds a colon (grpc-gateway's rule). Values
  are percent-decoded, except `%2F` in a multi-segment variable (google/api/http.proto).
- Query (every rule whose body is not `*`): parameters name fields by their proto3 JSON name
  or their proto name (`pageSize`, `page_size`), nested fields with dots (`a.b`), repeated
  fields by repeating the parameter, map entries as `field[key]`. Values are read as proto3
  JSON reads strings (enums by name or number, int64, Timestamp, Duration, FieldMask), bools
  as true/false/1/0. A parameter that names no field, names a field bound by the path or
  the body, repeats a singular field or holds a bad value is INVALID_ARGUMENT (HTTP 400)
  with a google.rpc.BadRequest naming the parameter.
- Body: `*` is the whole request as proto3 JSON, a field name that field; unknown fields are
  refused (400). Path values win over the same fields in the body.
- Metadata: the caller's `Authorization: Bearer ...` header is sent as `authorization`,
  and its `X-Request-Id`, `traceparent` and `tracestate` headers under their own names, so
  the call's log lines and spans join the caller's; no other header. Every answer carries
  the call's request id back as `X-Request-Id` (a stream's when its headers are sent).
- Deadline: a `Grpc-Timeout` header (gRPC's own form, e.g. `30S`, `500m`) becomes the call's
  deadline, as grpc-gateway reads it; a malformed one is INVALID_ARGUMENT (400).
- Answer: the response message as proto3 JSON (camelCase, int64 as strings, default values
  left out, as Google's REST APIs answer). Server-streaming methods answer
  `text/event-stream`: one `data: <json>` event per message, `event: error` with the error
  body as a final event when the call fails after it started, `event: end` when it ends
  well, and a `: keep-alive` comment every SSE_HEARTBEAT_S. A client that goes away
  cancels the gRPC call.
- Errors: `{"error": {"code": <http>, "message", "status": "<CODE_NAME>", "details": [...]}}`
  (google.rpc.Status as Google's REST APIs render it); the HTTP status from the gRPC code by
  HTTP_STATUS_BY_CODE. A path no rule matches is 404; a path that only another verb's rule
  matches is 405 (status UNIMPLEMENTED) with an Allow header, as grpc-gateway answers.

`GET /openapi.json` is the OpenAPI 3.1 description built from the same table (openapi.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import ssl
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any, Literal, cast
from urllib.parse import unquote

import grpc
from aiohttp import web
from google.api import annotations_pb2, http_pb2
from google.protobuf import any_pb2, json_format
from google.protobuf.descriptor import Descriptor, FieldDescriptor, ServiceDescriptor
from google.protobuf.message import Message
from google.rpc import status_pb2
from multidict import MultiMapping

from gemini_gateway.server import errors, openapi
from gemini_gateway.server.face_headers import (
    PASSED_HEADER_MAX,
    PASSED_HEADERS,
    TIMEOUT_HEADER,
    TIMEOUT_PATTERN,
    TIMEOUT_UNIT_S,
)
from gemini_gateway.server.log_format import REQUEST_ID_KEY
from gemini_gateway.server.routes import HttpBinding, Route, RouteTable, RouteTableError
from gemini_gateway.server.routes import route_for_method as _route_for_method

# gRPC status -> HTTP status of the JSON error, each row the HTTP mapping google/rpc/code.proto
# gives for that code (the reverse of errors.STATUS_BY_HTTP, which keeps one code per HTTP
# status; tests/unit/test_http_face_routes.py checks that the two tables agree).
HTTP_STATUS_BY_CODE: Mapping[grpc.StatusCode, int] = MappingProxyType(
    {
        grpc.StatusCode.OK: 200,
        grpc.StatusCode.CANCELLED: 499,
        grpc.StatusCode.UNKNOWN: 500,
        grpc.StatusCode.INVALID_ARGUMENT: 400,
        grpc.StatusCode.DEADLINE_EXCEEDED: 504,
        grpc.StatusCode.NOT_FOUND: 404,
        grpc.StatusCode.ALREADY_EXISTS: 409,
        grpc.StatusCode.PERMISSION_DENIED: 403,
        grpc.StatusCode.UNAUTHENTICATED: 401,
        grpc.StatusCode.RESOURCE_EXHAUSTED: 429,
        grpc.StatusCode.FAILED_PRECONDITION: 400,
        grpc.StatusCode.ABORTED: 409,
        grpc.StatusCode.OUT_OF_RANGE: 400,
        grpc.StatusCode.UNIMPLEMENTED: 501,
        grpc.StatusCode.INTERNAL: 500,
        grpc.StatusCode.UNAVAILABLE: 503,
        grpc.StatusCode.DATA_LOSS: 500,
    }
)

# A `: keep-alive` comment goes out on an idle event stream this often: it keeps proxies from
# closing the connection and finds a client that left (the write fails) when nothing else does.
SSE_HEARTBEAT_S = 15.0
# Largest request body read, in bytes (aiohttp's client_max_size); larger is refused.
MAX_BODY_BYTES = 32 * 1024 * 1024
# Time the face gives running requests when it closes; event streams end at once.
SHUTDOWN_TIMEOUT_S = 5.0
SHUTTING_DOWN = "the gateway's HTTP face is shutting down"
# Characters of a request path quoted back in a 404 or 405 message.
_PATH_QUOTE_CHARS = 200

_IDENT = r"[A-Za-z_][A-Za-z0-9_]*"
_FIELD_PATH = re.compile(rf"{_IDENT}(?:\.{_IDENT})*")
_LITERAL = re.compile(r"[^/{}*:]+")
_MAP_ENTRY = re.compile(rf"({_IDENT})\[(.*)\]")
_SLASH_ESCAPE = re.compile("%2F", re.IGNORECASE)

# Well-known message types that proto3 JSON writes as one scalar: a query parameter can set them.
SCALAR_MESSAGES = frozenset(
    {
        "google.protobuf.Timestamp",
        "google.protobuf.Duration",
        "google.protobuf.FieldMask",
        "google.protobuf.DoubleValue",
        "google.protobuf.FloatValue",
        "google.protobuf.Int64Value",
        "google.protobuf.UInt64Value",
        "google.protobuf.Int32Value",
        "google.protobuf.UInt32Value",
        "google.protobuf.BoolValue",
        "google.protobuf.StringValue",
        "google.protobuf.BytesValue",
    }
)

_PRINTABLE_ASCII = re.compile(r"[\x20-\x7e]+")
_TIMEOUT = re.compile(TIMEOUT_PATTERN)
HEADERS_AFTER_MESSAGE_S = 1.0  # a stream's initial metadata, once its first message is in

SSE_HEADERS = {
    "Content-Type": "text/event-stream; charset=utf-8",
    "Cache-Control": "no-cache",
    "X-Accel-Buffering": "no",  # nginx and others: pass each event on at once
    "X-Content-Type-Options": "nosniff",
}


class NoRoute(Exception):
    """No rule matches the request's path (HTTP 404)."""


class WrongVerb(Exception):
    """Rules match the path, but for other HTTP methods (HTTP 405)."""

    def __init__(self, allowed: Sequence[str]) -> None:
        super().__init__(", ".join(allowed))
        self.allowed = tuple(allowed)


# --- path templates ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Segment:
    """A literal path segment, or a wildcard: `*` (one segment) or `**` (one or more)."""

    kind: Literal["literal", "*", "**"]
    text: str = ""

    @property
    def pattern(self) -> str:
        if self.kind == "literal":
            return re.escape(self.text)
        return "[^/]+" if self.kind == "*" else "[^/]+(?:/[^/]+)*"


@dataclass(frozen=True)
class Variable:
    """`{field.path=segments}`: the path segments it covers set a string field."""

    field_path: str
    segments: tuple[Segment, ...]

    @property
    def multi_segment(self) -> bool:
        """More than one segment (google/api/http.proto): `%2F` in its value stays encoded."""
        return len(self.segments) > 1 or self.segments[0].kind == "**"


PathPart = Segment | Variable


@dataclass(frozen=True)
class PathTemplate:
    """A google.api.http path template, parsed: its parts, its custom verb, a matcher."""

    text: str
    parts: tuple[PathPart, ...]
    verb: str  # the `:verb` suffix without its colon, or ""
    _pattern: re.Pattern[str] = field(repr=False, compare=False)

    @classmethod
    def parse(cls, text: str) -> PathTemplate:
        """Parse `text` (google/api/http.proto's grammar); RouteTableError says what is wrong."""
        if not text.startswith("/"):
            raise RouteTableError(f"path template {text!r} must start with '/'")
        body, verb = _split_verb(text)
        parts: list[PathPart] = []
        for raw in _split_segments(body[1:], text):
            if raw.startswith("{"):
                parts.append(_variable(raw, text))
            else:
                segment = _segment(raw, text)
                if segment.kind != "literal":
                    raise RouteTableError(
                        f"{raw!r} outside a variable binds no request field in {text!r}"
                    )
                parts.append(segment)
        pieces = []
        for index, part in enumerate(parts):
            if isinstance(part, Variable):
                inner = "/".join(segment.pattern for segment in part.segments)
                pieces.append(f"(?P<v{index}>{inner})")
            else:
                pieces.append(part.pattern)
        return cls(text, tuple(parts), verb, re.compile("/" + "/".join(pieces)))

    @property
    def variables(self) -> tuple[Variable, ...]:
        return tuple(part for part in self.parts if isinstance(part, Variable))

    @property
    def shape(self) -> str:
        """The template with variable names left out: two templates of one shape match the
        same paths (`/v1/{name=projects/*}` and `/v1/{parent=projects/*}` do)."""
        segments = [
            segment.text if segment.kind == "literal" else segment.kind
            for part in self.parts
            for segment in (part.segments if isinstance(part, Variable) else (part,))
        ]
        return "/" + "/".join(segments) + (f":{self.verb}" if self.verb else "")

    @property
    def specificity(self) -> tuple[int, int]:
        """Sort key, most specific first: more literal segments, then fewer `**`."""
        segments = [
            segment
            for part in self.parts
            for segment in (part.segments if isinstance(part, Variable) else (part,))
        ]
        literals = sum(segment.kind == "literal" for segment in segments)
        deep = sum(segment.kind == "**" for segment in segments)
        return (-literals - bool(self.verb), deep)

    def match(self, raw_path: str) -> dict[str, str] | None:
        """The decoded values of the variables when `raw_path` (still percent-encoded, without
        its query) fits the template; None when it does not."""
        if self.verb:
            suffix = f":{self.verb}"
            if not raw_path.endswith(suffix):
                return None
            raw_path = raw_path[: -len(suffix)]
        elif ":" in raw_path.rpartition("/")[2]:
            return None  # a custom verb this template does not have
        found = self._pattern.fullmatch(raw_path)
        if found is None:
            return None
        values = {}
        for index, part in enumerate(self.parts):
            if isinstance(part, Variable):
                values[part.field_path] = _decode(found.group(f"v{index}"), part.multi_segment)
        return values


def _split_verb(text: str) -> tuple[str, str]:
    depth = 0
    last_slash = colon = -1
    for index, char in enumerate(text):
        if char == "{":
            depth += 1
        elif char == "}":
            depth -= 1
        elif depth == 0 and char == "/":
            last_slash = index
        elif depth == 0 and char == ":":
            colon = index
    if depth != 0:
        raise RouteTableError(f"unbalanced braces in {text!r}")
    if colon > last_slash:
        verb = text[colon + 1 :]
        if not _LITERAL.fullmatch(verb):
            raise RouteTableError(f"bad custom verb {verb!r} in {text!r}")
        return text[:colon], verb
    return text, ""


def _split_segments(body: str, template: str) -> list[str]:
    segments, depth, start = [], 0, 0
    for index, char in enumerate(body):
        if char == "{":
            depth += 1
            if depth > 1:
                raise RouteTableError(f"nested braces in {template!r}")
        elif char == "}":
            depth -= 1
        elif char == "/" and depth == 0:
            segments.append(body[start:index])
            start = index + 1
    segments.append(body[start:])
    return segments


def _segment(raw: str, template: str) -> Segment:
    if raw in ("*", "**"):
        return Segment(raw)  # type: ignore[arg-type]  # narrowed by the test above
    if not _LITERAL.fullmatch(raw):
        raise RouteTableError(f"bad path segment {raw!r} in {template!r}")
    return Segment("literal", raw)


def _variable(raw: str, template: str) -> Variable:
    if not raw.endswith("}"):
        raise RouteTableError(f"a variable must be a whole segment in {template!r}: {raw!r}")
    name, _, inner = raw[1:-1].partition("=")
    if not _FIELD_PATH.fullmatch(name):
        raise RouteTableError(f"bad variable name {name!r} in {template!r}")
    segments = tuple(_segment(piece, template) for piece in (inner or "*").split("/"))
    return Variable(name, segments)


def _decode(raw: str, multi_segment: bool) -> str:
    if not multi_segment:
        return unquote(raw, errors="strict")
    return "%2F".join(unquote(piece, errors="strict") for piece in _SLASH_ESCAPE.split(raw))


# --- the route table ---------------------------------------------------------------------------


@dataclass(frozen=True)
class InboundRoute:
    """One binding of a method's http rule, as the face serves it."""

    route: Route
    binding: HttpBinding
    template: PathTemplate
    index: int  # 0 for the rule itself, 1... for its additional_bindings

    @property
    def http_method(self) -> str:
        return self.binding.verb.upper()

    @property
    def full_method(self) -> str:
        """`/package.Service/Method`, the gRPC method it calls."""
        return self.route.full_method

    @property
    def streaming(self) -> bool:
        return self.route.server_streaming


class InboundRouteTable:
    """Every binding of every method with a google.api.http rule, validated at build.

    RouteTableError names the method of a bad rule, of two rules for the same verb and path
    (the same template, or two templates of one shape) and of a client-streaming method.
    """

    def __init__(self, routes: Iterable[InboundRoute]) -> None:
        ordered = list(routes)
        RouteTable(_unique(route.route for route in ordered))  # same verb + template twice
        shapes: dict[tuple[str, str], str] = {}
        for route in ordered:
            key = (route.http_method, route.template.shape)
            other = shapes.setdefault(key, route.full_method)
            if other != route.full_method:
                raise RouteTableError(
                    f"{route.full_method}: {route.http_method} {route.template.text} matches "
                    f"the same paths as a rule of {other}"
                )
        ordered.sort(key=lambda route: route.template.specificity)  # stable: rule order next
        self._routes = tuple(ordered)

    @classmethod
    def from_services(
        cls,
        services: Iterable[ServiceDescriptor],
        http_rules: Mapping[str, http_pb2.HttpRule] | None = None,
    ) -> InboundRouteTable:
        """The table of every method of `services` that has a google.api.http rule.

        `http_rules` (by selector, from a service config: routes.load_service_config_rules)
        take precedence over the annotations, as in Google's API configuration, and give
        methods without one a rule; rules naming methods of other services are not used.
        """
        rules = http_rules or {}
        routes = []
        for service in services:
            for method in service.methods:
                rule = rules.get(method.full_name)
                if rule is None and not method.GetOptions().HasExtension(annotations_pb2.http):
                    continue
                route = _route_for_method(method, rule)
                for index, binding in enumerate(route.bindings):
                    try:
                        template = PathTemplate.parse(binding.template)
                    except RouteTableError as exc:
                        raise RouteTableError(f"{route.full_method}: {exc}") from None
                    routes.append(InboundRoute(route, binding, template, index))
        return cls(routes)

    def match(self, http_method: str, raw_path: str) -> tuple[InboundRoute, dict[str, str]]:
        """The route for `http_method` and `raw_path` and its path values.

        Raises NoRoute when no rule matches the path, WrongVerb when only other methods' do.
        A path whose percent-encoding does not decode as UTF-8 matches nothing.
        """
        allowed = set()
        for route in self._routes:
            try:
                values = route.template.match(raw_path)
            except UnicodeDecodeError:
                values = None
            if values is None:
                continue
            if route.http_method == http_method:
                return route, values
            allowed.add(route.http_method)
        if allowed:
            raise WrongVerb(sorted(allowed))
        raise NoRoute(raw_path)

    @property
    def full_methods(self) -> frozenset[str]:
        return frozenset(route.full_method for route in self._routes)

    def __iter__(self) -> Iterator[InboundRoute]:
        """The routes in the order the face tries them."""
        return iter(self._routes)

    def __len__(self) -> int:
        return len(self._routes)


def _unique(routes: Iterable[Route]) -> list[Route]:
    seen: dict[str, Route] = {}
    for route in routes:
        seen.setdefault(route.full_method, route)
    return list(seen.values())


# --- request messages --------------------------------------------------------------------------


def build_request(
    route: InboundRoute,
    path_values: Mapping[str, str],
    query: MultiMapping[str],
    body: bytes,
) -> Message:
    """The request message of `route` from the path values, the query and the body.

    Raises errors.UpstreamError (INVALID_ARGUMENT) naming what cannot be read.
    """
    request = route.route.request_class()
    binding = route.binding
    if binding.body:
        parse_body(request, binding.body, body)
    for field_path, value in path_values.items():
        _set_path_field(request, field_path, value)
    if binding.body == "*":
        if query:  # the body holds every field the path does not
            raise errors.bad_request(
                [
                    (name, "is not read: the request body holds the request")
                    for name in dict.fromkeys(query)
                ]
            )
        return request
    parse_query(request, query, bound=route.binding.variables, body_field=binding.body)
    return request


def parse_body(request: Message, body_field: str, body: bytes) -> None:
    """Read the JSON body into `request` (`*`) or into its field `body_field`."""
    if not body.strip():
        return  # no body: nothing set, as `{}`
    try:
        value = json.loads(body)
    except (ValueError, RecursionError):
        raise errors.invalid_argument("the request body is not JSON") from None
    descriptor = request.DESCRIPTOR
    target: Any = value
    if body_field != "*":
        target = {descriptor.fields_by_name[body_field].json_name: value}
    elif not isinstance(value, dict):
        raise errors.invalid_argument(
            f"the request body must be a JSON object ({descriptor.full_name})"
        )
    try:
        json_format.ParseDict(target, request)
    except (json_format.ParseError, RecursionError) as exc:
        raise errors.invalid_argument(
            f"the request body does not fit {descriptor.full_name}: {str(exc)[:1000]}"
        ) from None


def _set_path_field(request: Message, field_path: str, value: str) -> None:
    *parents, last = field_path.split(".")
    target = request
    for part in parents:
        target = getattr(target, part)
    setattr(target, last, value)


@dataclass(frozen=True)
class QueryField:
    """The field a query parameter sets: the fields walked, and a map key when it has one."""

    fields: tuple[FieldDescriptor, ...]
    map_key: str | None = None

    @property
    def proto_path(self) -> str:
        return ".".join(f.name for f in self.fields)

    @property
    def leaf(self) -> FieldDescriptor:
        return self.fields[-1]

    @property
    def repeated(self) -> bool:
        return self.map_key is None and self.leaf.is_repeated


def resolve_query_name(descriptor: Descriptor, name: str) -> QueryField:
    """The field a query parameter names (JSON or proto names, dots, `map[key]`).

    Raises ValueError saying why it names none a query can set.
    """
    fields: list[FieldDescriptor] = []
    parts = name.split(".")
    current: Descriptor | None = descriptor
    map_key = None
    for index, part in enumerate(parts):
        last = index == len(parts) - 1
        entry = _MAP_ENTRY.fullmatch(part) if last else None
        if entry is not None:
            part, map_key = entry.group(1), entry.group(2)
        found = _field_named(current, part) if current is not None else None
        if found is None:
            raise ValueError("names no field of the request")
        fields.append(found)
        is_map = _is_map(found)
        if map_key is not None and not is_map:
            raise ValueError(f"{part} is not a map field")
        if not last:
            if found.message_type is None or found.is_repeated or _is_scalar_message(found):
                raise ValueError(f"{part} has no fields to set")
            current = found.message_type
            continue
        if is_map:
            if map_key is None:
                raise ValueError(f"{part} is a map: set an entry as {part}[KEY]")
            assert found.message_type is not None  # a map's entry
            value_field = found.message_type.fields_by_name["value"]
            if value_field.message_type is not None and not _is_scalar_message(value_field):
                raise ValueError(f"the values of {part} are messages: they cannot be set here")
        elif found.message_type is not None and not _is_scalar_message(found):
            raise ValueError(f"{part} is a message: set its fields as {name}.FIELD")
    return QueryField(tuple(fields), map_key)


def parse_query(
    request: Message,
    query: MultiMapping[str],
    *,
    bound: Sequence[str] = (),
    body_field: str = "",
) -> None:
    """Set the fields the query parameters name on `request` (see the module's rules).

    `bound` are the proto field paths the path sets, `body_field` the field the body sets.
    Raises errors.UpstreamError: INVALID_ARGUMENT with a BadRequest naming each parameter.
    """
    violations: list[tuple[str, str]] = []
    seen: dict[str, str] = {}  # proto path of a singular field -> the parameter that set it
    for name in dict.fromkeys(query):  # each name once, in order
        values = query.getall(name)
        try:
            target = resolve_query_name(cast(Descriptor, request.DESCRIPTOR), name)
        except ValueError as exc:
            violations.append((name, str(exc)))
            continue
        proto_path = target.proto_path
        if proto_path in bound:
            violations.append((name, "is set by the request path"))
            continue
        if body_field and target.fields[0].name == body_field:
            violations.append((name, "is set by the request body"))
            continue
        key = proto_path if target.map_key is None else f"{proto_path}[{target.map_key}]"
        if not target.repeated and (len(values) > 1 or key in seen):
            again = f" (also as {seen[key]})" if key in seen and seen[key] != name else ""
            violations.append((name, f"is not repeated: give it once{again}"))
            continue
        seen[key] = name
        problem = _merge_query_value(request, target, values)
        if problem is not None:
            violations.append((name, problem))
    if violations:
        raise errors.bad_request(violations)


def _merge_query_value(request: Message, target: QueryField, values: list[str]) -> str | None:
    """Set the field; a description of the problem when a value does not fit it."""
    leaf = target.leaf
    value_field = leaf
    if target.map_key is not None:
        assert leaf.message_type is not None  # a map's entry
        value_field = leaf.message_type.fields_by_name["value"]
    converted = []
    for value in values:
        item = _json_value(value_field, value)
        if item is None:
            return f"{value!r} is not {_kind(value_field)}"
        converted.append(item)
    tree: Any = converted if target.repeated else converted[0]
    if target.map_key is not None:
        tree = {target.map_key: tree}
    for descriptor_field in reversed(target.fields):
        tree = {descriptor_field.json_name: tree}
    scratch = request.__class__()
    try:
        json_format.ParseDict(tree, scratch)
    except (json_format.ParseError, ValueError):
        shown = values[0] if len(values) == 1 else values
        return f"{shown!r} is not {_kind(value_field)}"
    request.MergeFrom(scratch)
    return None


def _json_value(field_descriptor: FieldDescriptor, value: str) -> Any:
    """A query value as proto3 JSON gives it for the field (None: it cannot be one)."""
    if _is_bool(field_descriptor):
        lowered = value.lower()
        if lowered in ("true", "1"):
            return True
        if lowered in ("false", "0"):
            return False
        return None
    return value


def _is_bool(field_descriptor: FieldDescriptor) -> bool:
    if field_descriptor.type == FieldDescriptor.TYPE_BOOL:
        return True
    message = field_descriptor.message_type
    return message is not None and message.full_name == "google.protobuf.BoolValue"


_KINDS = {
    FieldDescriptor.TYPE_DOUBLE: "a number",
    FieldDescriptor.TYPE_FLOAT: "a number",
    FieldDescriptor.TYPE_INT64: "a 64-bit integer",
    FieldDescriptor.TYPE_SINT64: "a 64-bit integer",
    FieldDescriptor.TYPE_SFIXED64: "a 64-bit integer",
    FieldDescriptor.TYPE_UINT64: "an unsigned 64-bit integer",
    FieldDescriptor.TYPE_FIXED64: "an unsigned 64-bit integer",
    FieldDescriptor.TYPE_INT32: "a 32-bit integer",
    FieldDescriptor.TYPE_SINT32: "a 32-bit integer",
    FieldDescriptor.TYPE_SFIXED32: "a 32-bit integer",
    FieldDescriptor.TYPE_UINT32: "an unsigned 32-bit integer",
    FieldDescriptor.TYPE_FIXED32: "an unsigned 32-bit integer",
    FieldDescriptor.TYPE_BOOL: "true or false",
    FieldDescriptor.TYPE_STRING: "a string",
    FieldDescriptor.TYPE_BYTES: "base64",
}
_MESSAGE_KINDS = {
    "google.protobuf.Timestamp": "an RFC 3339 time such as 2026-03-01T12:00:00Z",
    "google.protobuf.Duration": "a duration in seconds such as 1.5s",
    "google.protobuf.FieldMask": "a comma-separated list of field names",
    "google.protobuf.BoolValue": "true or false",
    "google.protobuf.StringValue": "a string",
    "google.protobuf.BytesValue": "base64",
}


def _kind(field_descriptor: FieldDescriptor) -> str:
    """What a field's value must be, in words."""
    if field_descriptor.enum_type is not None:
        names = ", ".join(value.name for value in field_descriptor.enum_type.values)
        return f"one of {names}"
    message = field_descriptor.message_type
    if message is not None:
        wrapped = message.fields_by_name.get("value")
        if message.full_name in _MESSAGE_KINDS:
            return _MESSAGE_KINDS[message.full_name]
        if wrapped is not None:
            return _kind(wrapped)
        return message.full_name
    return _KINDS.get(field_descriptor.type, "a valid value")


def _field_named(descriptor: Descriptor, name: str) -> FieldDescriptor | None:
    found = descriptor.fields_by_name.get(name)
    if found is not None:
        return found
    return next((f for f in descriptor.fields if f.json_name == name), None)


def _is_map(field_descriptor: FieldDescriptor) -> bool:
    message = field_descriptor.message_type
    return message is not None and field_descriptor.is_repeated and message.GetOptions().map_entry


def _is_scalar_message(field_descriptor: FieldDescriptor) -> bool:
    message = field_descriptor.message_type
    return message is not None and message.full_name in SCALAR_MESSAGES


# --- errors as JSON ----------------------------------------------------------------------------


def http_status(code: grpc.StatusCode) -> int:
    return HTTP_STATUS_BY_CODE.get(code, 500)


def error_body(
    code: grpc.StatusCode,
    message: str,
    details: Iterable[any_pb2.Any] = (),
    http: int | None = None,
) -> dict[str, Any]:
    """google.rpc.Status as Google's REST APIs write it."""
    return {
        "error": {
            "code": http if http is not None else http_status(code),
            "message": message,
            "status": code.name,
            "details": [_detail_json(detail) for detail in details],
        }
    }


def _detail_json(detail: any_pb2.Any) -> dict[str, Any]:
    try:
        return json_format.MessageToDict(detail)
    except (TypeError, KeyError, json_format.Error):  # a detail type this process lacks
        return {"@type": detail.type_url}


def status_of(exc: grpc.aio.AioRpcError) -> tuple[grpc.StatusCode, str, tuple[any_pb2.Any, ...]]:
    """Code, message and google.rpc details (grpc-status-details-bin) of a failed call."""
    details: tuple[any_pb2.Any, ...] = ()
    for key, value in exc.trailing_metadata() or ():
        if key == "grpc-status-details-bin" and isinstance(value, bytes):
            with contextlib.suppress(Exception):
                details = tuple(status_pb2.Status.FromString(value).details)
    return exc.code(), exc.details() or "", details


def error_response(
    code: grpc.StatusCode,
    message: str,
    details: Iterable[any_pb2.Any] = (),
    *,
    http: int | None = None,
    headers: Mapping[str, str] | None = None,
) -> web.Response:
    body = error_body(code, message, details, http)
    extra = dict(headers or {})
    if code is grpc.StatusCode.UNAUTHENTICATED:
        extra.setdefault("WWW-Authenticate", "Bearer")
    return _json(body, status=body["error"]["code"], headers=extra)


def _json(
    data: Any, *, status: int = 200, headers: Mapping[str, str] | None = None
) -> web.Response:
    return web.Response(
        body=json.dumps(data, ensure_ascii=False).encode(),
        status=status,
        content_type="application/json",
        charset="utf-8",
        headers={"X-Content-Type-Options": "nosniff", **(headers or {})},
    )


def _message_json(message: Message) -> Any:
    """The message as proto3 JSON; INTERNAL when it holds an Any of a type this process lacks."""
    try:
        return json_format.MessageToDict(message)
    except (TypeError, KeyError, json_format.Error) as exc:
        raise errors.UpstreamError(
            grpc.StatusCode.INTERNAL, f"the answer cannot be written as JSON: {exc}"
        ) from None


def _sse(data: Any, event: str | None = None) -> bytes:
    text = json.dumps(data, ensure_ascii=False, separators=(",", ":"))
    head = f"event: {event}\n" if event else ""
    return f"{head}data: {text}\n\n".encode()


# --- the application ---------------------------------------------------------------------------


def caller_metadata(headers: Mapping[str, str]) -> tuple[tuple[str, str], ...]:
    """The gRPC metadata sent for a request: its bearer token, request id and W3C trace
    context, nothing else. A value gRPC could not carry (not printable ASCII, or longer than
    PASSED_HEADER_MAX) is left out; the server judges the rest as it judges a gRPC caller's."""
    metadata: list[tuple[str, str]] = []
    scheme, _, token = headers.get("Authorization", "").strip().partition(" ")
    if scheme.lower() == "bearer" and token.strip():
        metadata.append(("authorization", f"Bearer {token.strip()}"))
    for name in PASSED_HEADERS:
        value = headers.get(name, "").strip()
        if value and len(value) <= PASSED_HEADER_MAX and _PRINTABLE_ASCII.fullmatch(value):
            metadata.append((name, value))
    return tuple(metadata)


def caller_timeout(headers: Mapping[str, str]) -> float | None:
    """The deadline the caller set with `Grpc-Timeout`, in seconds; None without one.
    INVALID_ARGUMENT naming the header for a value not in gRPC's form, or of zero."""
    raw = headers.get(TIMEOUT_HEADER)
    if raw is None:
        return None
    found = _TIMEOUT.fullmatch(raw.strip())
    if found is None or int(found[1]) == 0:
        shown = raw[:_PATH_QUOTE_CHARS]
        raise errors.invalid_argument(
            f"{shown!r} is not a timeout: up to 8 digits, then H, M, S, m, u or n (e.g. 30S)",
            TIMEOUT_HEADER,
        )
    return int(found[1]) * TIMEOUT_UNIT_S[found[2]]


def request_id_header(metadata: Iterable[tuple[str, Any]] | None) -> dict[str, str]:
    """`X-Request-Id` with the call's request id, from its initial or trailing metadata."""
    for key, value in metadata or ():
        if key == REQUEST_ID_KEY and isinstance(value, str):
            return {"X-Request-Id": value}
    return {}


class HttpFace:
    """The state of one face: its route table, OpenAPI document, gRPC channel and files."""

    def __init__(
        self,
        table: InboundRouteTable,
        grpc_target: str,
        channel_credentials: grpc.ChannelCredentials | None,
        static_dir: Path | None,
        channel_options: Sequence[tuple[str, Any]],
    ) -> None:
        self.table = table
        self.document = openapi.openapi_document(table)
        self._target = grpc_target
        self._credentials = channel_credentials
        self._options = [
            # The gateway bounds what it sends (max_message_mb); the face takes all of it.
            ("grpc.max_receive_message_length", -1),
            *channel_options,
        ]
        self._static = static_dir.resolve() if static_dir is not None else None
        self._channel: grpc.aio.Channel | None = None
        self._stopping = asyncio.Event()

    @property
    def channel(self) -> grpc.aio.Channel:
        if self._channel is None:
            raise RuntimeError("the HTTP face is not started")
        return self._channel

    async def open(self, app: web.Application) -> None:
        self._stopping.clear()
        if self._credentials is None:
            self._channel = grpc.aio.insecure_channel(self._target, options=self._options)
        else:
            self._channel = grpc.aio.secure_channel(
                self._target, self._credentials, options=self._options
            )

    async def stop_streams(self, app: web.Application) -> None:
        """Shutdown begins: event streams end now, other requests may finish."""
        self._stopping.set()

    async def close(self, app: web.Application) -> None:
        channel, self._channel = self._channel, None
        if channel is not None:
            await channel.close()

    async def handle(self, request: web.Request) -> web.StreamResponse:
        """Every request: a method by its rule, else /openapi.json or a file, else 404/405."""
        raw_path = request.rel_url.raw_path
        try:
            route, values = self.table.match(request.method, raw_path)
        except (NoRoute, WrongVerb) as exc:
            other = await self._not_routed(request, raw_path)
            if other is not None:
                return other
            shown = raw_path[:_PATH_QUOTE_CHARS]
            if isinstance(exc, WrongVerb):
                return error_response(
                    grpc.StatusCode.UNIMPLEMENTED,
                    f"{request.method} is not allowed on {shown}: use {', '.join(exc.allowed)}",
                    http=405,
                    headers={"Allow": ", ".join(exc.allowed)},
                )
            return error_response(
                grpc.StatusCode.NOT_FOUND, f"no method is bound to {request.method} {shown}"
            )
        try:
            timeout = caller_timeout(request.headers)
            body = await request.read() if route.binding.body else b""
            message = build_request(route, values, request.rel_url.query, body)
        except web.HTTPRequestEntityTooLarge:
            return error_response(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"the request body is larger than {errors.size_text(request.client_max_size)}",
            )
        except errors.UpstreamError as exc:
            return error_response(exc.code, exc.message, exc.details)
        metadata = caller_metadata(request.headers)
        if route.streaming:
            return await self._stream(request, route, message, metadata, timeout)
        return await self._unary(route, message, metadata, timeout)

    async def _not_routed(self, request: web.Request, raw_path: str) -> web.StreamResponse | None:
        """/openapi.json and the static files, for a path no rule serves."""
        if request.method not in ("GET", "HEAD"):
            return None
        if raw_path == "/openapi.json":
            return _json(self.document)
        if self._static is None:
            return None
        found = await asyncio.to_thread(self._static_file, request.path)
        if found is None:
            return None
        return web.FileResponse(found, headers={"X-Content-Type-Options": "nosniff"})

    def _static_file(self, path: str) -> Path | None:
        """The file of the static folder a decoded URL path names (never one outside it)."""
        assert self._static is not None
        relative = "index.html" if path in ("", "/") else path.lstrip("/")
        candidate = (self._static / relative).resolve()
        if candidate.is_relative_to(self._static) and candidate.is_file():
            return candidate
        return None

    async def _unary(
        self,
        route: InboundRoute,
        message: Message,
        metadata: tuple[tuple[str, str], ...],
        timeout: float | None,
    ) -> web.Response:
        call = self.channel.unary_unary(
            route.full_method,
            request_serializer=_serialize,
            response_deserializer=route.route.response_class.FromString,
        )
        ongoing = call(message, metadata=metadata, timeout=timeout)
        try:
            response = await ongoing
        except grpc.aio.AioRpcError as exc:
            headers = request_id_header(exc.trailing_metadata())
            return error_response(*status_of(exc), headers=headers)
        headers = request_id_header(await ongoing.trailing_metadata())
        try:
            return _json(_message_json(response), headers=headers)
        except errors.UpstreamError as exc:
            return error_response(exc.code, exc.message, exc.details, headers=headers)

    async def _stream(
        self,
        request: web.Request,
        route: InboundRoute,
        message: Message,
        metadata: tuple[tuple[str, str], ...],
        timeout: float | None,
    ) -> web.StreamResponse:
        """Server-sent events; the call is cancelled whenever this ends (client gone too)."""
        call = self.channel.unary_stream(
            route.full_method,
            request_serializer=_serialize,
            response_deserializer=route.route.response_class.FromString,
        )(message, metadata=metadata, timeout=timeout)
        first: asyncio.Future[Any] = asyncio.ensure_future(call.read())
        started: asyncio.Future[Any] = asyncio.ensure_future(call.initial_metadata())
        stopping: asyncio.Future[Any] = asyncio.ensure_future(self._stopping.wait())
        try:
            # The HTTP status waits until the call is under way (its headers, a first message
            # or its end): a call refused at once is answered with its own HTTP status.
            await asyncio.wait({first, started, stopping}, return_when=asyncio.FIRST_COMPLETED)
            if not first.done() and call.done():  # it ended at once: its read says how
                await asyncio.wait({first})
            failure = first.exception() if first.done() and not first.cancelled() else None
            if isinstance(failure, grpc.aio.AioRpcError):
                headers = request_id_header(failure.trailing_metadata())
                return error_response(*status_of(failure), headers=headers)
            if stopping.done() and not first.done():
                return error_response(grpc.StatusCode.UNAVAILABLE, SHUTTING_DOWN)
            if first.done() and not started.done():  # its headers came before its message
                await asyncio.wait({started}, timeout=HEADERS_AFTER_MESSAGE_S)
            headers = dict(SSE_HEADERS)
            if started.done() and not started.cancelled() and started.exception() is None:
                headers.update(request_id_header(started.result()))
            response = web.StreamResponse(status=200, headers=headers)
            await response.prepare(request)
            with contextlib.suppress(ConnectionResetError):  # the client went away
                await response.write(b": connected\n\n")  # sends the headers now
                await _pump(response, call, first, stopping)
                await response.write_eof()
            return response
        finally:
            call.cancel()
            for future in (first, started, stopping):
                _discard(future)


async def _pump(
    response: web.StreamResponse,
    call: grpc.aio.UnaryStreamCall[Any, Any],
    first: asyncio.Future[Any],
    stopping: asyncio.Future[Any],
) -> None:
    """Write each message of `call` as an event until it ends, fails or the face stops; an
    idle stream gets a comment every SSE_HEARTBEAT_S."""
    reading: asyncio.Future[Any] | None = first
    try:
        while True:
            if reading is None:
                reading = asyncio.ensure_future(call.read())
            done, _ = await asyncio.wait(
                {reading, stopping}, timeout=SSE_HEARTBEAT_S, return_when=asyncio.FIRST_COMPLETED
            )
            if reading in done:
                try:
                    item = reading.result()
                    reading = None
                    if item is grpc.aio.EOF:
                        await response.write(_sse({}, "end"))
                        return
                    event = _sse(_message_json(item))
                except grpc.aio.AioRpcError as exc:
                    await response.write(_sse(error_body(*status_of(exc)), "error"))
                    return
                except errors.UpstreamError as exc:
                    await response.write(_sse(error_body(exc.code, exc.message), "error"))
                    return
                await response.write(event)
            elif stopping in done:
                body = error_body(grpc.StatusCode.UNAVAILABLE, SHUTTING_DOWN)
                await response.write(_sse(body, "error"))
                return
            else:
                await response.write(b": keep-alive\n\n")
    finally:
        if reading is not None:
            _discard(reading)


def _discard(future: asyncio.Future[Any]) -> None:
    """Cancel a future no one will await, and keep its outcome from being reported."""
    if not future.done():
        future.cancel()
    future.add_done_callback(lambda done: done.cancelled() or done.exception())


def _serialize(message: Message) -> bytes:
    return message.SerializeToString()


_FACE = web.AppKey("http_face", HttpFace)


def build_http_face(
    services: Sequence[ServiceDescriptor],
    grpc_target: str,
    *,
    channel_credentials: grpc.ChannelCredentials | None = None,
    static_dir: Path | None = None,
    http_rules: Mapping[str, http_pb2.HttpRule] | None = None,
    routes: Iterable[web.AbstractRouteDef] = (),
    channel_options: Sequence[tuple[str, Any]] = (),
    max_body_bytes: int = MAX_BODY_BYTES,
) -> web.Application:
    """The aiohttp application serving `services` as HTTP+JSON by their http rules.

    Calls go to the gRPC server at `grpc_target` (TLS with `channel_credentials`); with
    `static_dir` its files are served too, `index.html` at `/`. `http_rules` are
    service-config rules by selector (they win over annotations); `routes` are aiohttp
    routes of the caller's own, tried before the face's. A bad rule raises RouteTableError
    here. The channel opens when the application starts and closes with it.
    """
    face = HttpFace(
        InboundRouteTable.from_services(services, http_rules),
        grpc_target,
        channel_credentials,
        static_dir,
        channel_options,
    )
    app = web.Application(client_max_size=max_body_bytes)
    app[_FACE] = face
    app.on_startup.append(face.open)
    app.on_shutdown.append(face.stop_streams)
    app.on_cleanup.append(face.close)
    app.router.add_routes(routes)
    app.router.add_route("*", "/{path:.*}", face.handle)
    return app


def face_of(app: web.Application) -> HttpFace:
    """The face behind an application build_http_face made (its table, its document)."""
    return app[_FACE]


@dataclass
class HttpFaceHandle:
    """A running face: where it listens, and how to stop it."""

    runner: web.AppRunner
    host: str
    port: int
    scheme: str = "http"

    @property
    def url(self) -> str:
        host = "127.0.0.1" if self.host in ("", "0.0.0.0") else self.host
        if host in ("::", "[::]"):
            host = "::1"
        if ":" in host and not host.startswith("["):
            host = f"[{host}]"
        return f"{self.scheme}://{host}:{self.port}"

    async def close(self) -> None:
        """Stop listening, end the event streams, close the gRPC channel."""
        await self.runner.cleanup()


async def start_http_face(
    app: web.Application,
    host: str,
    port: int,
    *,
    shutdown_timeout: float = SHUTDOWN_TIMEOUT_S,
    reuse_port: bool = False,
    ssl_context: ssl.SSLContext | None = None,
) -> HttpFaceHandle:
    """Serve `app` on host:port (0 picks a free port); HTTPS with `ssl_context`. A client
    that disconnects cancels its request, and with it the gRPC call behind it. `reuse_port`
    lets several worker processes share the port (SO_REUSEPORT), as the gRPC port is shared
    with `workers` above 1."""
    runner = web.AppRunner(
        app, handler_cancellation=True, access_log=None, shutdown_timeout=shutdown_timeout
    )
    await runner.setup()
    try:
        site = web.TCPSite(
            runner, host, port, reuse_port=reuse_port or None, ssl_context=ssl_context
        )
        await site.start()
    except BaseException:
        await runner.cleanup()
        raise
    bound = runner.addresses[0][1]
    return HttpFaceHandle(runner, host, int(bound), "http" if ssl_context is None else "https")
