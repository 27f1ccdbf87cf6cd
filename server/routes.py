"""The route table: gRPC methods -> REST calls, derived from `google.api.http` annotations.

Built once at start-up from the method descriptors of the forwarded services and
validated the way grpc-gateway validates its rules; any bad, missing or duplicate rule
stops start-up with a RouteTableError naming the method. Path templates are expanded
and checked with google-api-core's `path_template`.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

import yaml
from google.api import annotations_pb2, http_pb2, service_pb2
from google.api_core import path_template
from google.protobuf import json_format, message_factory
from google.protobuf.descriptor import Descriptor, FieldDescriptor, MethodDescriptor
from google.protobuf.message import Message

_VERBS = ("get", "put", "post", "delete", "patch")
_VARIABLE = re.compile(r"\{([^}=]+)(?:=([^}]*))?\}")


class RouteTableError(ValueError):
    """A google.api.http rule the gateway cannot serve."""


@dataclass(frozen=True)
class HttpBinding:
    """One verb + path template of a rule; the body names the request field sent as JSON."""

    verb: str
    template: str
    body: str  # "" (no body), "*" (all fields not in the path) or a top-level field name
    variables: tuple[str, ...]  # dotted proto field paths bound in the template
    json_paths: tuple[tuple[str, ...], ...]  # the same paths in JSON names, to strip them


@dataclass(frozen=True)
class HttpCall:
    """A request transcoded to REST: what the upstream client sends."""

    verb: str
    path: str
    query: list[tuple[str, str]]
    body: dict[str, Any] | None


@dataclass(frozen=True)
class Route:
    """A forwarded gRPC method with its bindings, tried in order."""

    full_method: str  # "/package.Service/Method"
    method: MethodDescriptor
    request_class: type[Message]
    response_class: type[Message]
    bindings: tuple[HttpBinding, ...]
    server_streaming: bool = field(default=False)

    def to_http(self, request: Message) -> HttpCall:
        """Pick the first binding whose path variables the request fills and matches."""
        for binding in self.bindings:
            call = _transcode(binding, request)
            if call is not None:
                return call
        raise ValueError(_no_binding_message(self, request))


class RouteTable:
    """All forwarded methods, keyed by their full gRPC method name."""

    def __init__(self, routes: Iterable[Route]) -> None:
        self._routes: dict[str, Route] = {}
        seen: dict[tuple[str, str], str] = {}
        for route in routes:
            for binding in route.bindings:
                key = (binding.verb, binding.template)
                if key in seen and seen[key] != route.full_method:
                    raise RouteTableError(
                        f"{route.full_method}: {binding.verb.upper()} {binding.template} "
                        f"is already bound to {seen[key]}"
                    )
                seen[key] = route.full_method
            self._routes[route.full_method] = route

    @classmethod
    def from_services(
        cls,
        services: Iterable[Any],
        config_rules: dict[str, http_pb2.HttpRule] | None = None,
        served_locally: Iterable[str] = (),
    ) -> RouteTable:
        """Build and validate the table from ServiceDescriptors.

        `config_rules` (by selector, from a service config) take precedence over the
        .proto annotations, as in Google's API configuration; every rule must name a method.
        Methods in `served_locally` (selectors) are implemented by the gateway itself.
        """
        config_rules = dict(config_rules or {})
        local = set(served_locally)
        routes = []
        for service in services:
            for method in service.methods:
                if method.full_name in local:
                    continue
                routes.append(route_for_method(method, config_rules.pop(method.full_name, None)))
        if config_rules:
            raise RouteTableError(
                f"http rules name no forwarded method: {', '.join(sorted(config_rules))}"
            )
        return cls(routes)

    def __getitem__(self, full_method: str) -> Route:
        return self._routes[full_method]

    def __iter__(self) -> Iterator[Route]:
        return iter(self._routes.values())

    def __len__(self) -> int:
        return len(self._routes)


def load_service_config_rules(path: Path) -> dict[str, http_pb2.HttpRule]:
    """The http rules of a google.api.Service YAML file, by selector."""
    data = yaml.safe_load(path.read_text())
    data.pop("type", None)  # names the message type of the file, not a field of it
    service = service_pb2.Service()
    try:
        json_format.ParseDict(data, service)
    except json_format.ParseError as exc:
        raise RouteTableError(f"{path}: not a valid google.api.Service: {exc}") from exc
    rules: dict[str, http_pb2.HttpRule] = {}
    for rule in service.http.rules:
        if rule.selector in rules:
            raise RouteTableError(f"{path}: two http rules for {rule.selector}")
        rules[rule.selector] = rule
    return rules


def route_for_method(method: MethodDescriptor, rule: http_pb2.HttpRule | None = None) -> Route:
    """The route of one method: its service-config rule if given, else its annotation."""
    name = f"/{method.containing_service.full_name}/{method.name}"
    if rule is None:
        options = method.GetOptions()
        if not options.HasExtension(annotations_pb2.http):
            raise RouteTableError(f"{name}: no google.api.http rule")
        rule = options.Extensions[annotations_pb2.http]
    bindings = [_binding(name, method.input_type, rule)]
    for extra in rule.additional_bindings:
        if extra.additional_bindings:
            raise RouteTableError(f"{name}: additional_bindings must not nest")
        bindings.append(_binding(name, method.input_type, extra))
    if method.client_streaming:
        raise RouteTableError(f"{name}: client streaming cannot be forwarded to REST")
    return Route(
        full_method=name,
        method=method,
        request_class=message_factory.GetMessageClass(method.input_type),
        response_class=message_factory.GetMessageClass(method.output_type),
        bindings=tuple(bindings),
        server_streaming=method.server_streaming,
    )


def _binding(name: str, request: Descriptor, rule: http_pb2.HttpRule) -> HttpBinding:
    pattern = rule.WhichOneof("pattern")
    if pattern is None or pattern == "custom":
        raise RouteTableError(f"{name}: the http rule names no standard verb")
    template = getattr(rule, pattern)
    if not template.startswith("/"):
        raise RouteTableError(f"{name}: path template {template!r} must start with '/'")
    if template.count("{") != template.count("}"):
        raise RouteTableError(f"{name}: unbalanced braces in {template!r}")
    if pattern in ("get", "delete") and rule.body:
        raise RouteTableError(f"{name}: {pattern.upper()} {template} must not have a body")
    if rule.body and rule.body != "*" and rule.body not in request.fields_by_name:
        raise RouteTableError(f"{name}: body field {rule.body!r} is not a field of {request.name}")
    variables = tuple(match.group(1) for match in _VARIABLE.finditer(template))
    json_paths = tuple(_json_path(name, request, variable) for variable in variables)
    return HttpBinding(pattern, template, rule.body, variables, json_paths)


def _json_path(name: str, request: Descriptor, dotted: str) -> tuple[str, ...]:
    """Check a path variable names a singular string field; return its JSON-name path."""
    descriptor: Descriptor | None = request
    path = []
    parts = dotted.split(".")
    for index, part in enumerate(parts):
        field_descriptor = descriptor.fields_by_name.get(part) if descriptor else None
        if field_descriptor is None:
            raise RouteTableError(f"{name}: path variable {dotted!r} is not a request field")
        if field_descriptor.is_repeated:
            raise RouteTableError(f"{name}: path variable {dotted!r} must not be repeated")
        last = index == len(parts) - 1
        if last and field_descriptor.type != FieldDescriptor.TYPE_STRING:
            raise RouteTableError(f"{name}: path variable {dotted!r} must be a string field")
        if not last and field_descriptor.type != FieldDescriptor.TYPE_MESSAGE:
            raise RouteTableError(f"{name}: {dotted!r} goes through a non-message field")
        path.append(field_descriptor.json_name)
        descriptor = field_descriptor.message_type
    return tuple(path)


def _field_value(request: Message, dotted: str) -> str:
    value: Any = request
    for part in dotted.split("."):
        value = getattr(value, part)
    return value


def _transcode(binding: HttpBinding, request: Message) -> HttpCall | None:
    values = {var: _field_value(request, var) for var in binding.variables}
    if not all(values.values()):
        return None
    path = path_template.expand(
        binding.template, **{var: quote(value, safe="/") for var, value in values.items()}
    )
    if not path_template.validate(binding.template, path):
        return None
    fields = json_format.MessageToDict(request)
    for json_path in binding.json_paths:
        _pop_path(fields, json_path)
    if binding.body == "*":
        return HttpCall(binding.verb, path, [], fields)
    body = None
    if binding.body:
        json_name = request.DESCRIPTOR.fields_by_name[binding.body].json_name
        body = fields.pop(json_name, {})
    return HttpCall(binding.verb, path, _query_params(fields), body)


def _pop_path(fields: dict[str, Any], json_path: tuple[str, ...]) -> None:
    *parents, last = json_path
    container: Any = fields
    for part in parents:
        container = container.get(part)
        if not isinstance(container, dict):
            return
    container.pop(last, None)


def _query_params(fields: dict[str, Any], prefix: str = "") -> list[tuple[str, str]]:
    """Flatten the proto3 JSON of the non-body fields into query parameters."""
    params: list[tuple[str, str]] = []
    for key, value in fields.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            params.extend(_query_params(value, f"{name}."))
        elif isinstance(value, list):
            params.extend((name, _scalar(item)) for item in value)
        else:
            params.append((name, _scalar(value)))
    return params


def _scalar(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def _no_binding_message(route: Route, request: Message) -> str:
    variables = route.bindings[0].variables
    shown = ", ".join(f"{var}={_field_value(request, var)!r}" for var in variables)
    accepted = " or ".join(
        ", ".join(f"{var} matching {pattern}" for var, pattern in _patterns(b)) or b.template
        for b in route.bindings
    )
    return f"{route.method.name}: {shown or 'the request'} does not match the API: needs {accepted}"


def _patterns(binding: HttpBinding) -> list[tuple[str, str]]:
    return [(m.group(1), m.group(2) or "*") for m in _VARIABLE.finditer(binding.template)]
