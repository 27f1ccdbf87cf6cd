"""The route table: gRPC methods -> REST calls, derived from `google.api.http` annotations.

Built once at start-up from the method descriptors of the forwarded services and
validated the way grpc-gateway validates its rules; any bad, missing or duplicate rule
stops start-up with a RouteTableError naming the method. Path templates are expanded
and checked with google-api-core's `path_template`.

An upstream that serves part of the API under other paths (Vertex AI) gets its own rules
from a service-config file (`UpstreamRules`), validated the same way; their templates may
also name upstream variables, values the upstream supplies itself (a project, a location).
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any
from urllib.parse import quote

import yaml
from google.api import annotations_pb2, http_pb2, service_pb2
from google.api_core import path_template
from google.protobuf import descriptor_pool, json_format, message_factory
from google.protobuf import message as protobuf_message
from google.protobuf.descriptor import Descriptor, FieldDescriptor, MethodDescriptor
from google.protobuf.descriptor_pool import DescriptorPool
from google.protobuf.message import Message

from gemini_gateway.server import proto_json

_VERBS = ("get", "put", "post", "delete", "patch")
_VARIABLE = re.compile(r"\{([^}=]+)(?:=([^}]*))?\}")


class RouteTableError(ValueError):
    """A google.api.http rule the gateway cannot serve."""


class UnroutableRequest(ValueError):
    """A request that cannot become a REST call: its path fields fit none of the method's
    bindings, or a value cannot be written as proto3 JSON. The caller's fault, answered
    INVALID_ARGUMENT (errors.py); `field` names the request field at fault when one is."""

    def __init__(self, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.field = field


@dataclass(frozen=True)
class HttpBinding:
    """One verb + path template of a rule; the body names the request field sent as JSON."""

    verb: str
    template: str
    body: str  # "" (no body), "*" (all fields not in the path) or a top-level field name
    variables: tuple[str, ...]  # dotted proto field paths bound in the template
    json_paths: tuple[tuple[str, ...], ...]  # the same paths in JSON names, to strip them
    upstream_variables: tuple[str, ...] = ()  # template variables the upstream fills in


@dataclass(frozen=True)
class HttpCall:
    """A request transcoded to REST: what the upstream client sends."""

    verb: str
    path: str
    query: list[tuple[str, str]]
    body: dict[str, Any] | None
    # The method (its selector) and the message this call was transcoded from, so that an
    # upstream with paths of its own can place the same call there (UpstreamRules).
    selector: str = ""
    request: Message | None = field(default=None, repr=False, compare=False)


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
        """Pick the first binding whose path variables the request fills and matches.

        Raises UnroutableRequest when none does, or when the request has a value proto3
        JSON cannot express (validation.check_values names most such fields first).
        """
        for binding in self.bindings:
            call = _transcode(binding, request, self.method.full_name)
            if call is not None:
                return call
        variables = self.bindings[0].variables
        raise UnroutableRequest(
            _no_binding_message(self, request), variables[0] if len(variables) == 1 else None
        )


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


class UpstreamRules:
    """Paths of an upstream that serves some forwarded methods elsewhere, by selector.

    Read from a google.api.Service file whose http rules name the gateway's methods (Vertex
    AI serves GenerateContent under projects/*/locations/*/publishers/google/models/*). A
    rule gives the verb and path; the query and body stay those the method's own rule
    produced, so each binding must carry the same request fields in its path, and the same
    body, as the method's own google.api.http rule (checked at load). Template variables
    that are not request fields must be upstream variables, filled in per call.
    """

    def __init__(self, bindings: Mapping[str, tuple[HttpBinding, ...]]) -> None:
        self._bindings = dict(bindings)
        seen: dict[tuple[str, str], str] = {}
        for selector, group in self._bindings.items():
            for binding in group:
                key = (binding.verb, binding.template)
                if key in seen and seen[key] != selector:
                    raise RouteTableError(
                        f"{selector}: {binding.verb.upper()} {binding.template} "
                        f"is already bound to {seen[key]}"
                    )
                seen[key] = selector

    @classmethod
    def load(
        cls,
        path: Path,
        upstream_variables: Iterable[str],
        pool: DescriptorPool | None = None,
    ) -> UpstreamRules:
        """Read and validate the rules of `path`; any bad rule raises RouteTableError.

        Selectors are looked up in `pool` (default: the process's), so the modules that
        define the methods must be imported first.
        """
        pool = pool or descriptor_pool.Default()
        variables = frozenset(upstream_variables)
        bindings = {}
        for selector, rule in load_service_config_rules(path).items():
            name = f"{path.name}: {selector}"
            try:
                method = pool.FindMethodByName(selector)
            except KeyError:
                raise RouteTableError(f"{name}: the rule names no known method") from None
            group = _bindings(name, method.input_type, rule, variables)
            _check_same_json(name, method, group)
            bindings[selector] = group
        return cls(bindings)

    def __contains__(self, selector: object) -> bool:
        return selector in self._bindings

    @property
    def selectors(self) -> tuple[str, ...]:
        return tuple(sorted(self._bindings))

    def accepts(self, selector: str) -> str:
        """What the method's request must hold here, e.g. "model matching models/*"."""
        return " or ".join(
            ", ".join(
                f"{var} matching {pattern}"
                for var, pattern in _patterns(binding)
                if var not in binding.upstream_variables
            )
            or binding.template
            for binding in self._bindings[selector]
        )

    def to_http(self, call: HttpCall, values: Mapping[str, str]) -> HttpCall | None:
        """`call` moved to this upstream's path, or None when its request fits no binding.

        `values` fills the upstream variables. Raises KeyError when the call's method has no
        rule here (or the call does not say which request it came from).
        """
        if call.request is None:
            raise KeyError(call.selector)
        for binding in self._bindings[call.selector]:
            path = _expand(binding, call.request, values)
            if path is not None:
                return replace(call, verb=binding.verb, path=path)
        return None


def route_for_method(method: MethodDescriptor, rule: http_pb2.HttpRule | None = None) -> Route:
    """The route of one method: its service-config rule if given, else its annotation."""
    name = f"/{method.containing_service.full_name}/{method.name}"
    if rule is None:
        options = method.GetOptions()
        if not options.HasExtension(annotations_pb2.http):
            raise RouteTableError(f"{name}: no google.api.http rule")
        rule = options.Extensions[annotations_pb2.http]
    bindings = _bindings(name, method.input_type, rule)
    if method.client_streaming:
        raise RouteTableError(f"{name}: client streaming cannot be forwarded to REST")
    return Route(
        full_method=name,
        method=method,
        request_class=message_factory.GetMessageClass(method.input_type),
        response_class=message_factory.GetMessageClass(method.output_type),
        bindings=bindings,
        server_streaming=method.server_streaming,
    )


def _bindings(
    name: str,
    request: Descriptor,
    rule: http_pb2.HttpRule,
    upstream_variables: frozenset[str] = frozenset(),
) -> tuple[HttpBinding, ...]:
    """A rule and its additional bindings, in order."""
    bindings = [_binding(name, request, rule, upstream_variables)]
    for extra in rule.additional_bindings:
        if extra.additional_bindings:
            raise RouteTableError(f"{name}: additional_bindings must not nest")
        bindings.append(_binding(name, request, extra, upstream_variables))
    return tuple(bindings)


def _check_same_json(
    name: str, method: MethodDescriptor, bindings: tuple[HttpBinding, ...]
) -> None:
    """An upstream rule must leave the same fields to the query and body as the method's own
    rule, since the call keeps the query and body that rule produced."""
    options = method.GetOptions()
    if not options.HasExtension(annotations_pb2.http):
        raise RouteTableError(f"{name}: the method has no google.api.http rule to follow")
    own = _bindings(name, method.input_type, options.Extensions[annotations_pb2.http])
    expected = {(frozenset(b.variables), b.body) for b in own}
    for binding in bindings:
        if {(frozenset(binding.variables), binding.body)} != expected:
            fields = ", ".join(sorted(binding.variables)) or "no field"
            wanted = " / ".join(
                f"{', '.join(sorted(variables)) or 'no field'} with body {body!r}"
                for variables, body in sorted(expected, key=repr)
            )
            raise RouteTableError(
                f"{name}: {binding.verb.upper()} {binding.template} binds {fields} with body "
                f"{binding.body!r}; the method's own rule binds {wanted}"
            )


def _binding(
    name: str,
    request: Descriptor,
    rule: http_pb2.HttpRule,
    upstream_variables: frozenset[str] = frozenset(),
) -> HttpBinding:
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
    names = [match.group(1) for match in _VARIABLE.finditer(template)]
    if len(names) != template.count("{"):
        raise RouteTableError(f"{name}: malformed path variable in {template!r}")
    if len(set(names)) != len(names):
        raise RouteTableError(f"{name}: a variable appears twice in {template!r}")
    from_upstream = tuple(var for var in names if var in upstream_variables)
    for var in from_upstream:
        if var in request.fields_by_name:
            raise RouteTableError(
                f"{name}: {var!r} is both an upstream variable and a field of {request.name}"
            )
    variables = tuple(var for var in names if var not in upstream_variables)
    json_paths = tuple(
        _json_path(name, request, variable, upstream_variables) for variable in variables
    )
    return HttpBinding(pattern, template, rule.body, variables, json_paths, from_upstream)


def _json_path(
    name: str, request: Descriptor, dotted: str, upstream_variables: frozenset[str]
) -> tuple[str, ...]:
    """Check a path variable names a singular string field; return its JSON-name path."""
    descriptor: Descriptor | None = request
    path = []
    parts = dotted.split(".")
    for index, part in enumerate(parts):
        field_descriptor = descriptor.fields_by_name.get(part) if descriptor else None
        if field_descriptor is None:
            known = ", ".join(sorted(upstream_variables))
            also = f" nor an upstream variable ({known})" if known else ""
            raise RouteTableError(f"{name}: path variable {dotted!r} is not a request field{also}")
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


def _expand(
    binding: HttpBinding, request: Message, upstream_values: Mapping[str, str] | None = None
) -> str | None:
    """The binding's path for `request`, or None when a path field is empty or does not fit."""
    values = tuple(_field_value(request, var) for var in binding.variables)
    if not all(values):
        return None
    upstream = tuple((upstream_values or {})[var] for var in binding.upstream_variables)
    if sum(map(len, values)) + sum(map(len, upstream)) <= _REMEMBERED_PATH_CHARS:
        return _remembered_path(binding, values, upstream)
    return _path(binding, values, upstream)


# Calls name the same few models again and again: the paths of the latest ones are kept
# (short values only), so most calls skip the template's expansion and check.
_REMEMBERED_PATH_CHARS = 256


@functools.lru_cache(maxsize=1024)
def _remembered_path(
    binding: HttpBinding, values: tuple[str, ...], upstream: tuple[str, ...]
) -> str | None:
    return _path(binding, values, upstream)


def _path(binding: HttpBinding, values: tuple[str, ...], upstream: tuple[str, ...]) -> str | None:
    pairs = zip(binding.variables, values, strict=True)
    quoted = {var: quote(value, safe="/") for var, value in pairs}
    for var, value in zip(binding.upstream_variables, upstream, strict=True):
        # One path segment each: a '/' in a project id must not reach another segment.
        quoted[var] = quote(value, safe="")
    path = path_template.expand(binding.template, **quoted)
    if not path_template.validate(binding.template, path):
        return None
    return path


def _request_json(request: Message) -> dict[str, Any]:
    """The request as proto3 JSON; UnroutableRequest when a value has no JSON form."""
    try:
        return proto_json.to_dict(request)
    except (json_format.Error, protobuf_message.Error, ValueError, TypeError) as exc:
        # An out-of-range Duration or Timestamp, a FieldMask path JSON cannot spell, a NaN in
        # a Struct, an Any of an unknown type: the text says which field and why.
        raise UnroutableRequest(f"the request cannot be sent as JSON: {exc}") from None
    except RecursionError:
        raise UnroutableRequest("the request is nested too deeply to be sent as JSON") from None


def _transcode(binding: HttpBinding, request: Message, selector: str) -> HttpCall | None:
    path = _expand(binding, request)
    if path is None:
        return None
    fields = _request_json(request)
    for json_path in binding.json_paths:
        _pop_path(fields, json_path)
    if binding.body == "*":
        return HttpCall(binding.verb, path, [], fields, selector, request)
    body = None
    if binding.body:
        json_name = request.DESCRIPTOR.fields_by_name[binding.body].json_name
        body = fields.pop(json_name, {})
    return HttpCall(binding.verb, path, _query_params(fields), body, selector, request)


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
