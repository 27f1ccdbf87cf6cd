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
from gemini_gateway.server.operations import WAIT_OPERATION
from gemini_gateway.server.routes import RouteTable, RouteTableError, load_service_config_rules

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
        "BatchEmbedContents", "GetModel", "ListModels", "GetTunedModel", "ListTunedModels",
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
