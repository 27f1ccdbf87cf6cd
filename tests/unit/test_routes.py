"""RouteTable: built from the real protos, and refusing bad rules at start-up."""

import pytest
from google.api import annotations_pb2, http_pb2
from google.longrunning import operations_pb2
from google.protobuf import descriptor_pb2, descriptor_pool, field_mask_pb2

from gemini_gateway.generated.google.ai.generativelanguage.v1beta import (
    content_pb2,
    generative_service_pb2,
    model_service_pb2,
    tuned_model_pb2,
)
from gemini_gateway.server.app import FORWARDED_SERVICES, SERVICE_CONFIG, build_route_table
from gemini_gateway.server.flavours import load_vertex_rules
from gemini_gateway.server.operations import WAIT_OPERATION
from gemini_gateway.server.routes import (
    RouteTable,
    RouteTableError,
    UpstreamRules,
    load_service_config_rules,
)

GENERATE = "/google.ai.generativelanguage.v1beta.GenerativeService/GenerateContent"
STREAM = "/google.ai.generativelanguage.v1beta.GenerativeService/StreamGenerateContent"
UPDATE = "/google.ai.generativelanguage.v1beta.ModelService/UpdateTunedModel"


@pytest.fixture(scope="module")
def table() -> RouteTable:
    return build_route_table()


def _request(model: str) -> generative_service_pb2.GenerateContentRequest:
    return generative_service_pb2.GenerateContentRequest(
        model=model,
        contents=[content_pb2.Content(role="user", parts=[content_pb2.Part(text="hi")])],
        labels={"team": "search"},
    )


def test_every_forwarded_method_has_a_route(table: RouteTable) -> None:
    assert {r.full_method.rsplit("/", 1)[1] for r in table} == {
        "GenerateContent", "StreamGenerateContent", "CountTokens", "EmbedContent",
        "BatchEmbedContents", "BatchGenerateContent", "GetModel", "ListModels", "GetTunedModel",
        "ListTunedModels",
        "CreateTunedModel", "UpdateTunedModel", "DeleteTunedModel",
        "GetOperation", "ListOperations", "CancelOperation", "DeleteOperation",
    }  # fmt: skip
    assert table[STREAM].server_streaming


def test_body_star_moves_path_field_out_and_keeps_labels(table: RouteTable) -> None:
    call = table[GENERATE].to_http(_request("models/gemini-2.5-flash"))
    assert (call.verb, call.path) == ("post", "/v1beta/models/gemini-2.5-flash:generateContent")
    assert call.body == {
        "contents": [{"parts": [{"text": "hi"}], "role": "user"}],
        "labels": {"team": "search"},
    }
    assert call.query == []


def test_additional_binding_is_chosen_by_the_name(table: RouteTable) -> None:
    assert table[STREAM].to_http(_request("tunedModels/inc-1")).path == (
        "/v1beta/tunedModels/inc-1:streamGenerateContent"
    )


def test_name_that_matches_no_binding_is_a_clear_error(table: RouteTable) -> None:
    with pytest.raises(ValueError, match=r"model='gemini-2.5-flash'.*models/\*"):
        table[GENERATE].to_http(_request("gemini-2.5-flash"))
    with pytest.raises(ValueError, match="does not match"):
        table[GENERATE].to_http(_request("models/a/b"))


def test_body_field_and_query_with_field_mask(table: RouteTable) -> None:
    request = model_service_pb2.UpdateTunedModelRequest(
        tuned_model=tuned_model_pb2.TunedModel(name="tunedModels/x", display_name="New"),
        update_mask=field_mask_pb2.FieldMask(paths=["display_name", "description"]),
    )
    call = table[UPDATE].to_http(request)
    assert (call.verb, call.path) == ("patch", "/v1beta/tunedModels/x")
    assert call.body == {"displayName": "New"}
    assert call.query == [("updateMask", "displayName,description")]


def _pool_with_rule(rule: http_pb2.HttpRule, request_fields: dict[str, int]) -> object:
    """A one-method service in a private pool, with the given http rule."""
    pool = descriptor_pool.DescriptorPool()
    for module in (descriptor_pb2, http_pb2, annotations_pb2):
        proto = descriptor_pb2.FileDescriptorProto()
        module.DESCRIPTOR.CopyToProto(proto)
        pool.Add(proto)
    f = descriptor_pb2.FileDescriptorProto(
        name="t.proto", package="t", syntax="proto3", dependency=["google/api/annotations.proto"]
    )
    req = f.message_type.add(name="Req")
    for number, (name, kind) in enumerate(request_fields.items(), start=1):
        req.field.add(name=name, number=number, type=kind, label=1)
    f.message_type.add(name="Resp")
    method = f.service.add(name="S").method.add(
        name="M", input_type=".t.Req", output_type=".t.Resp"
    )
    method.options.Extensions[annotations_pb2.http].CopyFrom(rule)
    pool.Add(f)
    return pool.FindServiceByName("t.S")


STRING, INT = (
    descriptor_pb2.FieldDescriptorProto.TYPE_STRING,
    descriptor_pb2.FieldDescriptorProto.TYPE_INT32,
)


@pytest.mark.parametrize(
    ("rule", "fields", "message"),
    [
        (http_pb2.HttpRule(), {"name": STRING}, "names no standard verb"),
        (
            http_pb2.HttpRule(get="/v1/{name=x/*}", body="*"),
            {"name": STRING},
            "must not have a body",
        ),
        (
            http_pb2.HttpRule(get="/v1/{nope=x/*}"),
            {"name": STRING},
            "'nope' is not a request field",
        ),
        (http_pb2.HttpRule(get="/v1/{n=x/*}"), {"n": INT}, "must be a string field"),
        (http_pb2.HttpRule(post="/v1/x", body="missing"), {"name": STRING}, "body field 'missing'"),
        (http_pb2.HttpRule(get="v1/x"), {"name": STRING}, "must start with '/'"),
        (http_pb2.HttpRule(get="/v1/{name=x/*"), {"name": STRING}, "unbalanced"),
        (http_pb2.HttpRule(get="/v1/{a{name}}"), {"name": STRING}, "malformed path variable"),
        (http_pb2.HttpRule(get="/v1/{name}/{name}"), {"name": STRING}, "appears twice"),
        (
            http_pb2.HttpRule(
                get="/v1/a",
                additional_bindings=[
                    http_pb2.HttpRule(
                        get="/v1/b", additional_bindings=[http_pb2.HttpRule(get="/c")]
                    )
                ],
            ),
            {"name": STRING},
            "must not nest",
        ),
    ],
)
def test_bad_rules_stop_start_up(rule: http_pb2.HttpRule, fields: dict, message: str) -> None:
    with pytest.raises(RouteTableError, match=message) as info:
        RouteTable.from_services([_pool_with_rule(rule, fields)])
    assert "/t.S/M" in str(info.value)


def test_missing_rule_stops_start_up() -> None:
    service = _pool_with_rule(http_pb2.HttpRule(get="/v1/x"), {"name": STRING})
    # The same service with its rule removed.
    pool = descriptor_pool.DescriptorPool()
    for module in (descriptor_pb2, http_pb2, annotations_pb2):
        proto = descriptor_pb2.FileDescriptorProto()
        module.DESCRIPTOR.CopyToProto(proto)
        pool.Add(proto)
    proto = descriptor_pb2.FileDescriptorProto()
    service.file.CopyToProto(proto)
    proto.service[0].method[0].ClearField("options")
    pool.Add(proto)
    with pytest.raises(RouteTableError, match=r"no google\.api\.http rule"):
        RouteTable.from_services([pool.FindServiceByName("t.S")])


def test_duplicate_binding_across_methods_stops_start_up(table: RouteTable) -> None:
    first = _pool_with_rule(http_pb2.HttpRule(get="/v1beta/models"), {"name": STRING})
    with pytest.raises(RouteTableError, match="already bound to"):
        RouteTable([*table, *RouteTable.from_services([first])])


def test_operations_bind_through_the_service_config(table: RouteTable) -> None:
    get = table["/google.longrunning.Operations/GetOperation"]
    request = operations_pb2.GetOperationRequest(name="tunedModels/inc/operations/op1")
    assert get.to_http(request).path == "/v1beta/tunedModels/inc/operations/op1"
    assert get.to_http(operations_pb2.GetOperationRequest(name="batches/b1")).path == (
        "/v1beta/batches/b1"
    )
    listing = table["/google.longrunning.Operations/ListOperations"].to_http(
        operations_pb2.ListOperationsRequest(name="tunedModels/inc", page_size=5)
    )
    assert (listing.path, listing.query) == (
        "/v1beta/tunedModels/inc/operations",
        [("pageSize", "5")],
    )


def test_service_config_rule_for_unknown_method_stops_start_up(tmp_path) -> None:
    config = tmp_path / "service.yaml"
    config.write_text(
        "type: google.api.Service\nhttp:\n  rules:\n"
        "    - selector: google.longrunning.Operations.Nope\n      get: /v1beta/x\n"
    )
    rules = load_service_config_rules(config)
    with pytest.raises(RouteTableError, match=r"name no forwarded method: .*Operations\.Nope"):
        RouteTable.from_services(
            FORWARDED_SERVICES[2:], config_rules=rules, served_locally=[WAIT_OPERATION]
        )


def test_service_config_must_be_a_valid_service(tmp_path) -> None:
    config = tmp_path / "service.yaml"
    config.write_text("http:\n  rulez: []\n")
    with pytest.raises(RouteTableError, match=r"not a valid google\.api\.Service"):
        load_service_config_rules(config)


def test_method_without_rule_and_not_served_locally_stops_start_up() -> None:
    # WaitOperation has no http rule: only the gateway's own implementation may serve it.
    with pytest.raises(RouteTableError, match=r"WaitOperation: no google\.api\.http rule"):
        RouteTable.from_services(
            FORWARDED_SERVICES[2:], config_rules=load_service_config_rules(SERVICE_CONFIG)
        )


# --- upstream rules (Vertex AI's paths) ---------------------------------------------------

SERVICE = "google.ai.generativelanguage.v1beta.GenerativeService"
VERTEX_MODELS = "/v1/projects/{project}/locations/{location}/publishers/google/{model=models/*}"
VALUES = {"project": "my-proj", "location": "europe-west4"}


def _vertex_config(tmp_path, *rules: tuple[str, str, str, str]) -> object:
    """A service-config file with one http rule per (method, verb, template, body)."""
    lines = ["type: google.api.Service", "http:", "  rules:"]
    for method, verb, template, body in rules:
        lines += [f"    - selector: {SERVICE}.{method}", f'      {verb}: "{template}"']
        if body:
            lines.append(f'      body: "{body}"')
    config = tmp_path / "vertex.yaml"
    config.write_text("\n".join(lines) + "\n")
    return config


def test_shipped_vertex_rules_place_calls_on_publisher_model_paths(table: RouteTable) -> None:
    rules = load_vertex_rules()
    assert rules.selectors == tuple(
        f"{SERVICE}.{name}" for name in ("CountTokens", "GenerateContent", "StreamGenerateContent")
    )
    call = table[STREAM].to_http(_request("models/gemini-2.5-flash"))
    vertex = rules.to_http(call, VALUES)
    assert vertex is not None
    assert (vertex.verb, vertex.path) == (
        "post",
        "/v1/projects/my-proj/locations/europe-west4/publishers/google/models/"
        "gemini-2.5-flash:streamGenerateContent",
    )
    # Same JSON on both APIs: the body the method's own rule produced, labels included.
    assert (vertex.body, vertex.query) == (call.body, call.query)
    assert vertex.body["labels"] == {"team": "search"}
    assert rules.to_http(table[GENERATE].to_http(_request("tunedModels/inc-1")), VALUES) is None
    assert rules.accepts(f"{SERVICE}.GenerateContent") == "model matching models/*"


def test_upstream_values_stay_in_their_segment(table: RouteTable) -> None:
    rules = load_vertex_rules()
    call = table[GENERATE].to_http(_request("models/m"))
    odd = rules.to_http(call, {"project": "a/b", "location": "global"})
    assert odd is not None
    assert odd.path.startswith("/v1/projects/a%2Fb/locations/global/")
    assert rules.to_http(call, {"project": "", "location": "global"}) is None


def test_call_of_a_method_without_upstream_rule_is_a_key_error(table: RouteTable) -> None:
    listing = table["/google.ai.generativelanguage.v1beta.ModelService/ListModels"]
    call = listing.to_http(model_service_pb2.ListModelsRequest())
    assert call.selector == "google.ai.generativelanguage.v1beta.ModelService.ListModels"
    rules = load_vertex_rules()
    assert call.selector not in rules
    with pytest.raises(KeyError):
        rules.to_http(call, VALUES)


def test_good_upstream_rules_file(tmp_path) -> None:
    config = _vertex_config(
        tmp_path,
        ("GenerateContent", "post", VERTEX_MODELS + ":generateContent", "*"),
        ("CountTokens", "post", VERTEX_MODELS + ":countTokens", "*"),
    )
    rules = UpstreamRules.load(config, ("project", "location"))
    assert rules.selectors == (f"{SERVICE}.CountTokens", f"{SERVICE}.GenerateContent")


@pytest.mark.parametrize(
    ("rules", "message"),
    [
        (
            [("GenerateContent", "post", "/v1/projects/{projekt}/{model=models/*}:g", "*")],
            r"vertex\.yaml: .*GenerateContent: path variable 'projekt' is not a request field "
            r"nor an upstream variable \(location, project\)",
        ),
        (
            [("GenerateContent", "post", "/v1/{project}/{model=models/*:g", "*")],
            r"GenerateContent: unbalanced braces",
        ),
        (
            [("GenerateContent", "post", "/v1/{project}/{a{model}}:g", "*")],
            r"GenerateContent: malformed path variable",
        ),
        (
            [("GenerateContent", "post", "v1/{project}/{model=models/*}:g", "*")],
            r"GenerateContent: path template .* must start with '/'",
        ),
        (
            [("GenerateContent", "get", "/v1/{project}/{model=models/*}:g", "*")],
            r"GenerateContent: GET .* must not have a body",
        ),
        (
            [("Nope", "post", "/v1/{project}/{model=models/*}:g", "*")],
            r"GenerativeService\.Nope: the rule names no known method",
        ),
        (
            [("GenerateContent", "post", "/v1/{project}:g", "*")],
            r"GenerateContent: POST /v1/\{project\}:g binds no field with body '\*'; "
            r"the method's own rule binds model with body '\*'",
        ),
        (
            [("GenerateContent", "post", "/v1/{project}/{model=models/*}:g", "")],
            r"GenerateContent: .* binds model with body ''; the method's own rule binds model",
        ),
        (
            [
                ("GenerateContent", "post", VERTEX_MODELS + ":generateContent", "*"),
                ("GenerateContent", "post", VERTEX_MODELS + ":other", "*"),
            ],
            r"vertex\.yaml: two http rules for .*GenerativeService\.GenerateContent",
        ),
        (
            [
                ("GenerateContent", "post", VERTEX_MODELS + ":generateContent", "*"),
                ("StreamGenerateContent", "post", VERTEX_MODELS + ":generateContent", "*"),
            ],
            r"StreamGenerateContent: POST .*:generateContent is already bound to "
            r".*GenerativeService\.GenerateContent",
        ),
    ],
)
def test_bad_upstream_rules_stop_start_up(tmp_path, rules: list, message: str) -> None:
    with pytest.raises(RouteTableError, match=message):
        UpstreamRules.load(_vertex_config(tmp_path, *rules), ("project", "location"))


def test_upstream_variable_must_not_shadow_a_request_field(tmp_path) -> None:
    config = _vertex_config(
        tmp_path, ("GenerateContent", "post", "/v1/{model}/{project}:generateContent", "*")
    )
    with pytest.raises(RouteTableError, match="'model' is both an upstream variable and a field"):
        UpstreamRules.load(config, ("project", "model"))
