"""The OpenAPI document of the HTTP face: valid OpenAPI 3.1, every rule an operation, schemas
under the proto3 JSON mapping."""

from __future__ import annotations

from typing import Any

import pytest

from gemini_gateway.server.app import LOCAL_SERVICES
from gemini_gateway.server.face_headers import PASSED_HEADERS, TIMEOUT_HEADER
from gemini_gateway.server.http_face import InboundRouteTable, PathTemplate
from gemini_gateway.server.openapi import openapi_document, openapi_path
from tests.unit.test_http_face_routes import ECHO_PACKAGE, ECHO_SERVICE, echo_service


@pytest.fixture(scope="module")
def table() -> InboundRouteTable:
    return InboundRouteTable.from_services(LOCAL_SERVICES)


@pytest.fixture(scope="module")
def document(table: InboundRouteTable) -> dict[str, Any]:
    return openapi_document(table)


def _operations(document: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {
        operation["x-grpc-method"] + f"#{operation['operationId']}": operation
        for item in document["paths"].values()
        for operation in item.values()
    }


def _schema(document: dict[str, Any], name: str) -> dict[str, Any]:
    return document["components"]["schemas"][name]


def test_the_document_is_valid_openapi_3_1(document: dict[str, Any]) -> None:
    validator = pytest.importorskip(
        "openapi_spec_validator", reason="openapi-spec-validator is in the dev extra"
    )
    assert document["openapi"] == "3.1.0"
    validator.validate(document)


def test_every_route_is_an_operation(table: InboundRouteTable, document: dict[str, Any]) -> None:
    listed = {
        (verb.upper(), operation["x-google-http-template"], operation["x-grpc-method"])
        for item in document["paths"].values()
        for verb, operation in item.items()
    }
    expected = {
        (route.http_method, f"{route.http_method} {route.template.text}", route.full_method)
        for route in table
    }
    assert listed == expected
    ids = [operation["operationId"] for operation in _operations(document).values()]
    assert len(ids) == len(set(ids)) == len(table)


@pytest.mark.parametrize(
    ("template", "path", "parameters"),
    [
        ("/v1/{name=projects/*/datasets/*}:export",
         "/v1/projects/{projectsId}/datasets/{datasetsId}:export", ["projectsId", "datasetsId"]),
        ("/v1/{settings.name=projects/*/loggingSettings}",
         "/v1/projects/{projectsId}/loggingSettings", ["projectsId"]),
        ("/v1/{name=**}:watch", "/v1/{name}:watch", ["name"]),
        ("/v1/{name}", "/v1/{name}", ["name"]),
        ("/v1/{a=x/*}/y/{b=x/*}", "/v1/x/{xId}/y/x/{xId2}", ["xId", "xId2"]),
    ],
)  # fmt: skip
def test_paths_spell_out_the_templates(template: str, path: str, parameters: list[str]) -> None:
    found, found_parameters = openapi_path(PathTemplate.parse(template))
    assert found == path
    assert [p["name"] for p in found_parameters] == parameters
    assert all(p["in"] == "path" and p["required"] for p in found_parameters)


def test_query_parameters_of_a_get(document: dict[str, Any]) -> None:
    operation = document["paths"]["/v1/projects/{projectsId}/logs"]["get"]
    query = {p["name"]: p for p in operation["parameters"] if p["in"] == "query"}
    assert set(query) == {"pageSize", "pageToken", "filter", "view"}
    assert query["pageSize"]["schema"] == {"type": "integer", "format": "int32"}
    assert "page_size" in query["pageSize"]["description"]
    assert query["view"]["schema"] == {"$ref": "#/components/schemas/gemini.gateway.v1.LogView"}
    assert _schema(document, "gemini.gateway.v1.LogView")["enum"] == [
        "LOG_VIEW_UNSPECIFIED",
        "LOG_VIEW_BASIC",
        "LOG_VIEW_FULL",
    ]


def test_bodies(document: dict[str, Any]) -> None:
    create = document["paths"]["/v1/projects/{projectsId}/datasets"]["post"]
    body = create["requestBody"]["content"]["application/json"]["schema"]
    assert "parent" not in body["properties"]  # set by the path
    assert set(body["properties"]) == {"dataset", "datasetId", "logNames", "filter"}
    assert not [p for p in create["parameters"] if p["in"] == "query"]  # body `*`: no query
    update = document["paths"]["/v1/projects/{projectsId}/datasets/{datasetsId}"]["patch"]
    named = update["requestBody"]["content"]["application/json"]["schema"]
    assert named["$ref"] == "#/components/schemas/gemini.gateway.v1.Dataset"
    query = [p["name"] for p in update["parameters"] if p["in"] == "query"]
    assert query == ["updateMask"]


def test_streams_are_event_streams(table: InboundRouteTable, document: dict[str, Any]) -> None:
    streaming = {route.full_method for route in table if route.streaming}
    assert streaming == {
        "/gemini.gateway.v1.LogService/TailLogs",
        "/gemini.gateway.v1.DatasetService/ExportDataset",
        "/gemini.gateway.v1.OperationWatchService/WatchOperation",
    }
    for operation in _operations(document).values():
        content = operation["responses"]["200"]["content"]
        if operation["x-grpc-method"] in streaming:
            assert list(content) == ["text/event-stream"]
            assert content["text/event-stream"]["x-sse-data-schema"]["$ref"]
        else:
            assert list(content) == ["application/json"]
        error = operation["responses"]["default"]["content"]["application/json"]["schema"]
        assert error == {"$ref": "#/components/schemas/Error"}


def test_proto3_json_mapping(document: dict[str, Any]) -> None:
    dataset = _schema(document, "gemini.gateway.v1.Dataset")["properties"]
    assert dataset["logCount"]["type"] == "string"  # int64
    assert dataset["logCount"]["readOnly"] is True  # OUTPUT_ONLY
    assert dataset["createTime"]["format"] == "date-time"  # Timestamp
    assert "Required." in dataset["displayName"]["description"]
    log = _schema(document, "gemini.gateway.v1.Log")["properties"]
    assert log["labels"] == {"type": "object", "additionalProperties": {"type": "string"}}
    assert log["latency"]["type"] == "string"  # Duration
    assert log["chunkOffsets"]["type"] == "array"
    assert log["status"] == {"$ref": "#/components/schemas/google.rpc.Status"}
    status = _schema(document, "google.rpc.Status")["properties"]
    assert status["details"]["items"]["properties"]["@type"] == {"type": "string"}  # Any
    update = document["paths"]["/v1/projects/{projectsId}/datasets/{datasetsId}"]["patch"]
    (mask,) = [p for p in update["parameters"] if p["in"] == "query"]
    assert mask["schema"]["type"] == "string"  # FieldMask
    export = _schema(document, "gemini.gateway.v1.ExportDatasetResponse")["properties"]
    assert export["data"]["format"] == "byte"
    run = _schema(document, "gemini.gateway.v1.RunOutput")["properties"]
    assert run["estimatedCost"] == {"type": "number", "format": "double"}


def test_a_new_service_needs_no_code() -> None:
    """The test-only EchoService: its rules become operations like the gateway's own."""
    document = openapi_document(InboundRouteTable.from_services([echo_service()]))
    validator = pytest.importorskip("openapi_spec_validator")
    validator.validate(document)
    methods = {op["x-grpc-method"] for item in document["paths"].values() for op in item.values()}
    assert methods == {
        f"/{ECHO_SERVICE}/{name}" for name in ("Echo", "UpdateEcho", "CreateShelf", "Count")
    }
    echo = document["paths"]["/v1/shelves/{shelvesId}:echo"]["get"]
    query = {p["name"]: p["schema"] for p in echo["parameters"] if p["in"] == "query"}
    assert query["tags"] == {"type": "array", "items": {"type": "string"}}
    assert query["inner.note"] == {"type": "string"}  # nested
    assert query["inner.numbers"]["type"] == "array"
    assert "inner.child.note" not in query  # a message inside itself is offered once
    assert query["big"]["type"] == "string"
    assert query["colour"] == {"$ref": f"#/components/schemas/{ECHO_PACKAGE}.Colour"}
    assert "labels" not in query  # maps take `labels[KEY]`, which OpenAPI cannot name
    assert "/v1/notes/{notesId}" in document["paths"]  # the additional binding


def test_every_operation_takes_the_headers_the_face_reads_and_answers_the_request_id(
    document: dict[str, Any],
) -> None:
    passed = {name.lower() for name in (*PASSED_HEADERS, TIMEOUT_HEADER)}
    for item in document["paths"].values():
        for operation in item.values():
            headers = {p["name"].lower() for p in operation["parameters"] if p["in"] == "header"}
            assert headers == passed, operation["operationId"]
            for response in operation["responses"].values():
                assert set(response["headers"]) == {"X-Request-Id"}, operation["operationId"]
