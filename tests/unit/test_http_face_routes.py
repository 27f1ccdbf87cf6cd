"""The HTTP face's route table, request building and error mapping, without a network.

`echo_service()` builds a service that exists only in the tests (a FileDescriptorProto made
here, with google.api.http rules): the face must serve it with no code of its own, which is
what adding an RPC to a .proto must take. tests/integration/test_http_face.py serves it.
"""

from __future__ import annotations

import grpc
import pytest
from google.api import annotations_pb2, http_pb2
from google.protobuf import descriptor_pb2, descriptor_pool, json_format, message_factory
from google.protobuf.descriptor import ServiceDescriptor
from google.protobuf.message import Message
from google.rpc import error_details_pb2
from multidict import CIMultiDict, MultiDict

from gemini_gateway.generated.gemini.gateway.v1 import datasets_pb2, logs_pb2, usage_pb2
from gemini_gateway.server import errors
from gemini_gateway.server.app import LOCAL_SERVICES
from gemini_gateway.server.http_face import (
    HTTP_STATUS_BY_CODE,
    InboundRouteTable,
    NoRoute,
    PathTemplate,
    WrongVerb,
    build_request,
    caller_metadata,
    caller_timeout,
    error_body,
    parse_query,
    request_id_header,
)
from gemini_gateway.server.routes import RouteTableError

F = descriptor_pb2.FieldDescriptorProto
ECHO_FILE = "gemini_gateway_tests/httpface/v1/echo.proto"
ECHO_PACKAGE = "httpface.test.v1"
ECHO_SERVICE = f"{ECHO_PACKAGE}.EchoService"


def http_rule(verb: str, path: str, body: str = "", *more: http_pb2.HttpRule) -> http_pb2.HttpRule:
    rule = http_pb2.HttpRule(body=body)
    setattr(rule, verb, path)
    rule.additional_bindings.extend(more)
    return rule


def _field(
    message: descriptor_pb2.DescriptorProto,
    name: str,
    number: int,
    kind: int,
    type_name: str = "",
    repeated: bool = False,
) -> None:
    added = message.field.add(
        name=name,
        number=number,
        type=kind,
        label=F.LABEL_REPEATED if repeated else F.LABEL_OPTIONAL,
    )
    if type_name:
        added.type_name = type_name


def echo_file_proto() -> descriptor_pb2.FileDescriptorProto:
    """httpface.test.v1.EchoService: scalars, enums, repeated, nested, maps, well-known types,
    a named body, a `*` body, an additional binding with a dotted path field, a stream."""
    f = descriptor_pb2.FileDescriptorProto(
        name=ECHO_FILE,
        package=ECHO_PACKAGE,
        syntax="proto3",
        dependency=[
            "google/api/annotations.proto",
            "google/protobuf/timestamp.proto",
            "google/protobuf/duration.proto",
        ],
    )
    colour = f.enum_type.add(name="Colour")
    for number, name in enumerate(("COLOUR_UNSPECIFIED", "RED", "GREEN")):
        colour.value.add(name=name, number=number)
    inner = f.message_type.add(name="Inner")
    _field(inner, "note", 1, F.TYPE_STRING)
    _field(inner, "numbers", 2, F.TYPE_INT32, repeated=True)
    _field(inner, "child", 3, F.TYPE_MESSAGE, f".{ECHO_PACKAGE}.Inner")
    request = f.message_type.add(name="EchoRequest")
    _field(request, "name", 1, F.TYPE_STRING)
    _field(request, "page_size", 2, F.TYPE_INT32)
    _field(request, "tags", 3, F.TYPE_STRING, repeated=True)
    _field(request, "inner", 4, F.TYPE_MESSAGE, f".{ECHO_PACKAGE}.Inner")
    _field(request, "colour", 5, F.TYPE_ENUM, f".{ECHO_PACKAGE}.Colour")
    _field(request, "flag", 6, F.TYPE_BOOL)
    _field(request, "big", 7, F.TYPE_INT64)
    _field(request, "since", 8, F.TYPE_MESSAGE, ".google.protobuf.Timestamp")
    entry = request.nested_type.add(name="LabelsEntry")
    entry.options.map_entry = True
    _field(entry, "key", 1, F.TYPE_STRING)
    _field(entry, "value", 2, F.TYPE_STRING)
    _field(request, "labels", 9, F.TYPE_MESSAGE, f".{ECHO_PACKAGE}.EchoRequest.LabelsEntry", True)
    _field(request, "wait", 10, F.TYPE_MESSAGE, ".google.protobuf.Duration")
    _field(request, "ratio", 11, F.TYPE_DOUBLE)
    response = f.message_type.add(name="EchoResponse")
    _field(response, "request", 1, F.TYPE_MESSAGE, f".{ECHO_PACKAGE}.EchoRequest")
    _field(response, "metadata_keys", 2, F.TYPE_STRING, repeated=True)
    _field(response, "index", 3, F.TYPE_INT32)
    shelf = f.message_type.add(name="Shelf")
    _field(shelf, "name", 1, F.TYPE_STRING)
    _field(shelf, "theme", 2, F.TYPE_STRING)
    create = f.message_type.add(name="CreateShelfRequest")
    _field(create, "parent", 1, F.TYPE_STRING)
    _field(create, "shelf", 2, F.TYPE_MESSAGE, f".{ECHO_PACKAGE}.Shelf")
    _field(create, "shelf_id", 3, F.TYPE_STRING)

    service = f.service.add(name="EchoService")
    echo, update = "/v1/{name=shelves/*}:echo", "/v1/{name=shelves/*}:update"
    count = "/v1/{name=shelves/*}:count"
    methods = [
        ("Echo", "EchoRequest", "EchoResponse", False,
         http_rule("get", echo, "", http_rule("get", "/v1/{inner.note=notes/*}"))),
        ("UpdateEcho", "EchoRequest", "EchoResponse", False, http_rule("post", update, "*")),
        ("CreateShelf", "CreateShelfRequest", "Shelf", False,
         http_rule("post", "/v1/{parent=libraries/*}/shelves", "shelf")),
        ("Count", "EchoRequest", "EchoResponse", True, http_rule("get", count)),
        ("NoRule", "EchoRequest", "EchoResponse", False, None),
    ]  # fmt: skip
    for name, request_type, response_type, streaming, rule in methods:
        method = service.method.add(
            name=name,
            input_type=f".{ECHO_PACKAGE}.{request_type}",
            output_type=f".{ECHO_PACKAGE}.{response_type}",
            server_streaming=streaming,
        )
        if rule is not None:
            method.options.Extensions[annotations_pb2.http].CopyFrom(rule)
    return f


def echo_service() -> ServiceDescriptor:
    """The test-only EchoService, added once to the default pool."""
    pool = descriptor_pool.Default()
    try:
        pool.FindFileByName(ECHO_FILE)
    except KeyError:
        pool.Add(echo_file_proto())
    return pool.FindServiceByName(ECHO_SERVICE)


def echo_class(name: str) -> type[Message]:
    echo_service()
    return message_factory.GetMessageClass(
        descriptor_pool.Default().FindMessageTypeByName(f"{ECHO_PACKAGE}.{name}")
    )


@pytest.fixture(scope="module")
def table() -> InboundRouteTable:
    return InboundRouteTable.from_services(LOCAL_SERVICES)


@pytest.fixture(scope="module")
def echo_table() -> InboundRouteTable:
    return InboundRouteTable.from_services([echo_service()])


def _with_rule(service: ServiceDescriptor) -> set[str]:
    return {
        f"/{service.full_name}/{method.name}"
        for method in service.methods
        if method.GetOptions().HasExtension(annotations_pb2.http)
    }


# --- the table ---------------------------------------------------------------------------------


def test_every_gateway_method_with_a_rule_is_in_the_table(table: InboundRouteTable) -> None:
    expected = set().union(*(_with_rule(service) for service in LOCAL_SERVICES))
    assert table.full_methods == expected
    assert len(table) == len(expected)  # no additional bindings among them (yet)


def test_methods_without_a_rule_are_left_out(echo_table: InboundRouteTable) -> None:
    assert f"/{ECHO_SERVICE}/NoRule" not in echo_table.full_methods
    assert f"/{ECHO_SERVICE}/Echo" in echo_table.full_methods
    # The rule and its additional binding.
    assert [r.index for r in echo_table if r.full_method == f"/{ECHO_SERVICE}/Echo"] == [0, 1]


@pytest.mark.parametrize(
    ("verb", "path", "method", "values"),
    [
        ("GET", "/v1/projects/p/logs", "LogService/ListLogs", {"parent": "projects/p"}),
        ("GET", "/v1/projects/p/logs:tail", "LogService/TailLogs", {"parent": "projects/p"}),
        ("GET", "/v1/projects/p/logs/l1", "LogService/GetLog", {"name": "projects/p/logs/l1"}),
        ("POST", "/v1/projects/-/logs:batchDelete", "LogService/DeleteLogs",
         {"parent": "projects/-"}),
        ("GET", "/v1/projects/p/loggingSettings", "LogService/GetLoggingSettings",
         {"name": "projects/p/loggingSettings"}),
        ("PATCH", "/v1/projects/p/loggingSettings", "LogService/UpdateLoggingSettings",
         {"settings.name": "projects/p/loggingSettings"}),
        ("GET", "/v1/projects/p/datasets/d", "DatasetService/GetDataset",
         {"name": "projects/p/datasets/d"}),
        # The template with the verb wins over the one whose last wildcard could take "d:export".
        ("GET", "/v1/projects/p/datasets/d:export", "DatasetService/ExportDataset",
         {"name": "projects/p/datasets/d"}),
        ("PATCH", "/v1/projects/p/datasets/d", "DatasetService/UpdateDataset",
         {"dataset.name": "projects/p/datasets/d"}),
        ("GET", "/v1/tunedModels/t-1/operations/o:watch", "OperationWatchService/WatchOperation",
         {"name": "tunedModels/t-1/operations/o"}),
        ("GET", "/v1/projects/p/labelKeys/team/values", "UsageService/ListLabelValues",
         {"parent": "projects/p/labelKeys/team"}),
        # Percent-decoding: a single-segment wildcard inside a multi-segment variable keeps %2F.
        ("GET", "/v1/projects/p/labelKeys/a%20b/values", "UsageService/ListLabelValues",
         {"parent": "projects/p/labelKeys/a b"}),
        ("GET", "/v1/projects/p%2Fq/logs", "LogService/ListLogs", {"parent": "projects/p%2Fq"}),
    ],
)  # fmt: skip
def test_paths_match_their_method(
    table: InboundRouteTable, verb: str, path: str, method: str, values: dict[str, str]
) -> None:
    route, found = table.match(verb, path)
    assert route.full_method == f"/gemini.gateway.v1.{method}"
    assert found == values


@pytest.mark.parametrize(
    "path",
    [
        "/v1/projects/p/datasets/d:nope",  # an unknown custom verb
        "/v1/projects/p/logs/",  # an empty segment
        "/v1/projects/p/logs/a/b",
        "/v2/projects/p/logs",
        "/v1/projects/p/datasets/d:",
        "/",
    ],
)
def test_unknown_paths_match_nothing(table: InboundRouteTable, path: str) -> None:
    with pytest.raises(NoRoute):
        table.match("GET", path)


def test_a_known_path_with_another_verb_says_which_verbs(table: InboundRouteTable) -> None:
    with pytest.raises(WrongVerb) as refused:
        table.match("PUT", "/v1/projects/p/datasets/d")
    assert refused.value.allowed == ("DELETE", "GET", "PATCH")
    with pytest.raises(WrongVerb) as refused:
        table.match("GET", "/v1/projects/p/logs:batchDelete")
    assert refused.value.allowed == ("POST",)


def test_the_matcher_agrees_with_path_template(table: InboundRouteTable) -> None:
    """google-api-core's path_template expands each template; the face matches the result."""
    from google.api_core import path_template

    for route in table:
        values = {
            variable.field_path: "/".join(
                segment.text if segment.kind == "literal" else "x1" for segment in variable.segments
            )
            for variable in route.template.variables
        }
        path = path_template.expand(route.template.text, **values)
        assert path_template.validate(route.template.text, path)
        matched, found = table.match(route.http_method, path)
        assert matched.full_method == route.full_method, (route.template.text, path)
        assert found == values


THINGS = "/v1/{name=things/*}"


def service_with_rules(*rules: tuple[str, http_pb2.HttpRule]) -> ServiceDescriptor:
    pool = descriptor_pool.DescriptorPool()
    for module in (descriptor_pb2, http_pb2, annotations_pb2):
        proto = descriptor_pb2.FileDescriptorProto()
        module.DESCRIPTOR.CopyToProto(proto)
        pool.Add(proto)
    f = descriptor_pb2.FileDescriptorProto(
        name="bad.proto",
        package="bad",
        syntax="proto3",
        dependency=["google/api/annotations.proto"],
    )
    request = f.message_type.add(name="Req")
    _field(request, "name", 1, F.TYPE_STRING)
    _field(request, "parent", 2, F.TYPE_STRING)
    service = f.service.add(name="S")
    for name, rule in rules:
        method = service.method.add(name=name, input_type=".bad.Req", output_type=".bad.Req")
        method.options.Extensions[annotations_pb2.http].CopyFrom(rule)
    pool.Add(f)
    return pool.FindServiceByName("bad.S")


@pytest.mark.parametrize(
    ("rules", "message"),
    [
        # Two templates of one shape would take each other's paths.
        ([("A", http_rule("get", THINGS)), ("B", http_rule("get", "/v1/{parent=things/*}"))],
         "matches the same paths as a rule of /bad.S/A"),
        ([("A", http_rule("get", THINGS)), ("B", http_rule("get", THINGS))],
         "is already bound to /bad.S/A"),
        ([("A", http_rule("get", "/v1/{name=things/*}", "*"))], "must not have a body"),
        ([("A", http_rule("get", "/v1/*/{name=things/*}"))], "outside a variable binds no request"),
        ([("A", http_rule("get", "/v1/{name=things/{x}}"))], "malformed path variable"),
        ([("A", http_rule("get", "/v1/{nope=things/*}"))], "is not a request field"),
    ],
)  # fmt: skip
def test_bad_rules_stop_the_build(rules: list[tuple[str, http_pb2.HttpRule]], message: str) -> None:
    with pytest.raises(RouteTableError, match=message):
        InboundRouteTable.from_services([service_with_rules(*rules)])


def test_other_verbs_of_one_shape_are_fine() -> None:
    service = service_with_rules(
        ("A", http_rule("get", "/v1/{name=things/*}")),
        ("B", http_rule("delete", "/v1/{name=things/*}")),
    )
    assert len(InboundRouteTable.from_services([service])) == 2


def test_template_parts() -> None:
    template = PathTemplate.parse("/v1/{dataset.name=projects/*/datasets/*}:export")
    assert template.verb == "export"
    assert template.shape == "/v1/projects/*/datasets/*:export"
    (variable,) = template.variables
    assert variable.field_path == "dataset.name"
    assert variable.multi_segment
    assert not PathTemplate.parse("/v1/{name}").variables[0].multi_segment
    assert PathTemplate.parse("/v1/{name=**}").variables[0].multi_segment


# --- request messages --------------------------------------------------------------------------


def _route(table: InboundRouteTable, verb: str, path: str) -> tuple[object, dict[str, str]]:
    return table.match(verb, path)


def _build(
    table: InboundRouteTable, verb: str, path: str, query: str = "", body: bytes = b""
) -> Message:
    from yarl import URL

    route, values = table.match(verb, path)
    return build_request(route, values, URL(f"{path}?{query}" if query else path).query, body)


def _violations(exc: errors.UpstreamError) -> dict[str, str]:
    (detail,) = exc.details
    bad = error_details_pb2.BadRequest()
    assert detail.Unpack(bad)
    return {v.field: v.description for v in bad.field_violations}


def test_query_takes_json_and_proto_names(table: InboundRouteTable) -> None:
    camel = _build(table, "GET", "/v1/projects/p/logs", "pageSize=5&pageToken=t&view=LOG_VIEW_FULL")
    snake = _build(table, "GET", "/v1/projects/p/logs", "page_size=5&page_token=t&view=2")
    assert (
        camel
        == snake
        == logs_pb2.ListLogsRequest(
            parent="projects/p", page_size=5, page_token="t", view=logs_pb2.LOG_VIEW_FULL
        )
    )


def test_query_values_are_decoded(table: InboundRouteTable) -> None:
    text = 'model = "models/gemini-2.5-flash" AND labels.team = "a b"'
    from urllib.parse import quote, quote_plus

    for encoded in (quote(text), quote_plus(text)):
        request = _build(table, "GET", "/v1/projects/p/logs", f"filter={encoded}")
        assert request.filter == text


def test_query_bad_values_name_the_parameter(table: InboundRouteTable) -> None:
    with pytest.raises(errors.UpstreamError) as refused:
        _build(table, "GET", "/v1/projects/p/logs", "pageSize=ten&view=NOPE&colour=1&page_size=1")
    assert refused.value.code == grpc.StatusCode.INVALID_ARGUMENT
    violations = _violations(refused.value)
    assert violations["pageSize"] == "'ten' is not a 32-bit integer"
    assert violations["view"].startswith("'NOPE' is not one of LOG_VIEW_UNSPECIFIED,")
    assert violations["colour"] == "names no field of the request"
    assert violations["page_size"] == "is not repeated: give it once (also as pageSize)"


def test_query_cannot_set_path_or_body_fields(table: InboundRouteTable) -> None:
    with pytest.raises(errors.UpstreamError) as refused:
        _build(table, "GET", "/v1/projects/p/logs", "parent=projects/q")
    assert _violations(refused.value) == {"parent": "is set by the request path"}
    with pytest.raises(errors.UpstreamError) as refused:
        _build(table, "PATCH", "/v1/projects/p/datasets/d", "dataset.displayName=x")
    assert _violations(refused.value) == {"dataset.displayName": "is set by the request body"}
    with pytest.raises(errors.UpstreamError) as refused:  # body `*`: the body is the request
        _build(table, "POST", "/v1/projects/p/datasets", "filter=x")
    assert "filter" in _violations(refused.value)


def test_query_sets_every_kind_of_field(echo_table: InboundRouteTable) -> None:
    query = (
        "tags=a&tags=b%20c&inner.note=n&inner.numbers=1&inner.numbers=2&inner.child.note=deep"
        "&colour=GREEN&flag=1&big=9007199254740993&since=2026-03-01T12:00:00Z&labels[team]=x"
        "&labels[env]=prod&wait=1.5s&ratio=0.25&page_size=3"
    )
    request = _build(echo_table, "GET", "/v1/shelves/s1:echo", query)
    assert json_format.MessageToDict(request) == {
        "name": "shelves/s1",
        "pageSize": 3,
        "tags": ["a", "b c"],
        "inner": {"note": "n", "numbers": [1, 2], "child": {"note": "deep"}},
        "colour": "GREEN",
        "flag": True,
        "big": "9007199254740993",
        "since": "2026-03-01T12:00:00Z",
        "labels": {"team": "x", "env": "prod"},
        "wait": "1.500s",
        "ratio": 0.25,
    }


@pytest.mark.parametrize(
    ("query", "name", "description"),
    [
        ("inner=x", "inner", "inner is a message: set its fields as inner.FIELD"),
        ("labels=x", "labels", "labels is a map: set an entry as labels[KEY]"),
        ("tags.x=1", "tags.x", "tags has no fields to set"),
        ("flag=yes", "flag", "'yes' is not true or false"),
        ("since=yesterday", "since", "'yesterday' is not an RFC 3339 time such as"),
        ("wait=5", "wait", "'5' is not a duration in seconds such as 1.5s"),
        ("big=1.5", "big", "'1.5' is not a 64-bit integer"),
        ("inner.numbers=1&inner.numbers=x", "inner.numbers", "is not a 32-bit integer"),
        ("name[a]=b", "name[a]", "name is not a map field"),
    ],
)
def test_query_problems(
    echo_table: InboundRouteTable, query: str, name: str, description: str
) -> None:
    with pytest.raises(errors.UpstreamError) as refused:
        _build(echo_table, "GET", "/v1/shelves/s1:echo", query)
    violations = _violations(refused.value)
    assert list(violations) == [name]
    assert description in violations[name]


def test_a_dotted_path_field_of_an_additional_binding(echo_table: InboundRouteTable) -> None:
    request = _build(echo_table, "GET", "/v1/notes/n1", "inner.numbers=4")
    assert json_format.MessageToDict(request) == {"inner": {"note": "notes/n1", "numbers": [4]}}


def test_body_star_and_named_body(table: InboundRouteTable) -> None:
    created = _build(
        table,
        "POST",
        "/v1/projects/p/datasets",
        body=b'{"dataset": {"displayName": "d"}, "log_names": ["projects/p/logs/1"]}',
    )
    assert created == datasets_pb2.CreateDatasetRequest(
        parent="projects/p",
        dataset=datasets_pb2.Dataset(display_name="d"),
        log_names=["projects/p/logs/1"],
    )
    updated = _build(
        table,
        "PATCH",
        "/v1/projects/p/datasets/d",
        "updateMask=displayName",
        b'{"name": "projects/other/datasets/x", "displayName": "new"}',
    )
    # The path wins over the body; the mask comes from the query.
    assert updated == datasets_pb2.UpdateDatasetRequest(
        dataset=datasets_pb2.Dataset(name="projects/p/datasets/d", display_name="new"),
        update_mask={"paths": ["display_name"]},
    )
    empty = _build(table, "POST", "/v1/projects/p:queryUsage")
    assert empty == usage_pb2.QueryUsageRequest(parent="projects/p")


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"{nope", "the request body is not JSON"),
        (b"[1]", "the request body must be a JSON object"),
        (b'{"colour": 1}', 'has no field named "colour"'),
        (b'{"pageSize": "x"}', "does not fit gemini.gateway.v1.QueryUsageRequest"),
    ],
)
def test_bad_bodies(table: InboundRouteTable, body: bytes, message: str) -> None:
    with pytest.raises(errors.UpstreamError, match=message) as refused:
        _build(table, "POST", "/v1/projects/p:queryUsage", body=body)
    assert refused.value.code == grpc.StatusCode.INVALID_ARGUMENT


def test_parse_query_alone() -> None:
    request = logs_pb2.ListLogsRequest()
    parse_query(request, MultiDict([("pageSize", "7")]))
    assert request.page_size == 7


# --- metadata and errors -----------------------------------------------------------------------


def test_only_the_bearer_token_request_id_and_trace_context_are_forwarded() -> None:
    def metadata(**headers: str) -> tuple[tuple[str, str], ...]:
        # As aiohttp gives them: names case-insensitive.
        return caller_metadata(CIMultiDict((k.replace("_", "-"), v) for k, v in headers.items()))

    assert metadata(Authorization="Bearer  tok ") == (("authorization", "Bearer tok"),)
    assert metadata(Authorization="bearer tok") == (("authorization", "Bearer tok"),)
    assert metadata(Authorization="Basic dXNlcjpwYXNz") == ()
    assert metadata(Cookie="session=1", X_Goog_Api_Key="k", Grpc_Timeout="1S") == ()
    parent = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    assert metadata(
        X_Request_ID=" req-1 ", TRACEPARENT=parent, tracestate="a=1", Authorization="Bearer t"
    ) == (
        ("authorization", "Bearer t"),
        ("x-request-id", "req-1"),
        ("traceparent", parent),
        ("tracestate", "a=1"),
    )
    # What gRPC metadata cannot carry is left out (the server makes a new request id).
    assert metadata(X_Request_Id="caf\u00e9") == ()
    assert metadata(X_Request_Id="a\tb") == ()
    assert metadata(tracestate="x" * 513) == ()
    assert metadata(tracestate="x" * 512) == (("tracestate", "x" * 512),)


def test_a_grpc_timeout_header_is_read_in_grpcs_form() -> None:
    def timeout(value: str | None) -> float | None:
        return caller_timeout(CIMultiDict({} if value is None else {"grpc-timeout": value}))

    assert timeout(None) is None
    assert timeout("30S") == 30
    assert timeout(" 2M ") == 120
    assert timeout("1H") == 3600
    assert timeout("500m") == pytest.approx(0.5)
    assert timeout("99999999u") == pytest.approx(99.999999)
    assert timeout("1500000n") == pytest.approx(0.0015)
    for bad in ("", "S", "10", "10s", "10 S", "0m", "123456789S", "1.5S", "+1S", "1S1"):
        with pytest.raises(errors.UpstreamError) as caught:
            timeout(bad)
        assert caught.value.code is grpc.StatusCode.INVALID_ARGUMENT, bad
        named = error_details_pb2.BadRequest()
        assert caught.value.details[0].Unpack(named), bad
        assert [v.field for v in named.field_violations] == ["Grpc-Timeout"], bad


def test_the_request_id_goes_back_from_either_metadata() -> None:
    assert request_id_header((("x-request-id", "r1"), ("other", "v"))) == {"X-Request-Id": "r1"}
    assert request_id_header((("grpc-status-details-bin", b"\x00"),)) == {}
    assert request_id_header(None) == {}


def test_every_grpc_code_has_an_http_status() -> None:
    assert set(HTTP_STATUS_BY_CODE) == set(grpc.StatusCode)


def test_the_status_tables_agree() -> None:
    """errors.STATUS_BY_HTTP (HTTP -> gRPC, one code per HTTP status) is the reverse of this
    table wherever it has a row: both come from google/rpc/code.proto."""
    for http, code in errors.STATUS_BY_HTTP.items():
        assert HTTP_STATUS_BY_CODE[code] == http, code


def test_error_body_is_google_rpc_status_as_json() -> None:
    exc = errors.bad_request([("pageSize", "too big")])
    assert error_body(exc.code, exc.message, exc.details) == {
        "error": {
            "code": 400,
            "message": "pageSize: too big",
            "status": "INVALID_ARGUMENT",
            "details": [
                {
                    "@type": "type.googleapis.com/google.rpc.BadRequest",
                    "fieldViolations": [{"field": "pageSize", "description": "too big"}],
                }
            ],
        }
    }


def test_service_config_rules_win_over_annotations() -> None:
    """As in Google's API configuration (and the forward path's RouteTable)."""
    rules = {
        f"{ECHO_SERVICE}.Echo": http_rule("get", "/v2/{name=shelves/*}"),
        f"{ECHO_SERVICE}.NoRule": http_rule("get", "/v2/{name=shelves/*}:norule"),
        "some.other.Service.Method": http_rule("get", "/v2/elsewhere"),  # not this face's
    }
    table = InboundRouteTable.from_services([echo_service()], rules)
    assert table.match("GET", "/v2/shelves/s")[0].full_method == f"/{ECHO_SERVICE}/Echo"
    assert table.match("GET", "/v2/shelves/s:norule")[0].full_method == f"/{ECHO_SERVICE}/NoRule"
    with pytest.raises(NoRoute):
        table.match("GET", "/v1/shelves/s:echo")  # the annotation gave way
