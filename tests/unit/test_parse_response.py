"""Upstream JSON -> response messages: unknown fields ignored, error objects mapped."""

import json

import grpc
import pytest

from gemini_gateway.server.app import build_route_table
from gemini_gateway.server.errors import UpstreamError
from gemini_gateway.server.forwarder import parse_response

ROUTES = build_route_table()
GENERATE = ROUTES["/google.ai.generativelanguage.v1beta.GenerativeService/GenerateContent"]
GET_OPERATION = ROUTES["/google.longrunning.Operations/GetOperation"]


def test_unknown_fields_and_enum_values_are_ignored() -> None:
    body = {
        "candidates": [
            {
                "content": {"parts": [{"text": "hi", "futurePart": {"x": 1}}], "role": "model"},
                "finishReason": "SOME_FUTURE_REASON",
                "brandNewField": [1, 2, 3],
            }
        ],
        "usageMetadata": {"totalTokenCount": 3, "newCounter": 7},
        "serviceTier": "standard",
    }
    response = parse_response(GENERATE, json.dumps(body))
    assert response.candidates[0].content.parts[0].text == "hi"
    assert response.usage_metadata.total_token_count == 3


def test_error_object_in_a_2xx_body_is_an_error() -> None:
    body = {"error": {"code": 503, "message": "overloaded", "status": "UNAVAILABLE"}}
    with pytest.raises(UpstreamError) as info:
        parse_response(GENERATE, json.dumps(body))
    assert info.value.code is grpc.StatusCode.UNAVAILABLE
    assert info.value.message == "overloaded"


def test_operation_error_field_is_data_not_a_failure() -> None:
    body = {
        "name": "tunedModels/x/operations/y",
        "done": True,
        "error": {"code": 1, "message": "Operation cancelled."},
    }
    operation = parse_response(GET_OPERATION, json.dumps(body))
    assert operation.done
    assert operation.error.code == 1


def test_json_that_is_not_an_object_is_internal() -> None:
    with pytest.raises(UpstreamError) as info:
        parse_response(GENERATE, "[1, 2]")
    assert info.value.code is grpc.StatusCode.INTERNAL
    with pytest.raises(UpstreamError, match="not valid JSON"):
        parse_response(GENERATE, "{nope")
