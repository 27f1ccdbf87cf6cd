"""REST error bodies -> gRPC status codes and google.rpc details."""

import json

import grpc
import pytest
from google.rpc import error_details_pb2

from gemini_gateway.server import errors

QUOTA_BODY = {
    "error": {
        "code": 429,
        "message": "Resource has been exhausted (e.g. check quota).",
        "status": "RESOURCE_EXHAUSTED",
        "details": [
            {
                "@type": "type.googleapis.com/google.rpc.QuotaFailure",
                "violations": [{"quotaMetric": "generate_requests", "quotaId": "PerMinute"}],
            },
            {
                "@type": "type.googleapis.com/google.rpc.Help",
                "links": [{"description": "quota", "url": "https://ai.google.dev/quota"}],
            },
            {"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": "47s"},
            {"@type": "type.googleapis.com/example.Unknown", "x": 1},
        ],
    }
}


def test_status_name_wins_over_http_code() -> None:
    body = {"error": {"code": 400, "message": "no", "status": "FAILED_PRECONDITION"}}
    err = errors.from_http_response(400, "application/json", json.dumps(body).encode())
    assert err.code is grpc.StatusCode.FAILED_PRECONDITION
    assert err.message == "no"


def test_details_are_packed_and_unknown_types_dropped() -> None:
    err = errors.from_http_response(429, "application/json", json.dumps(QUOTA_BODY).encode())
    assert err.code is grpc.StatusCode.RESOURCE_EXHAUSTED
    assert [d.type_url.rpartition(".")[2] for d in err.details] == [
        "QuotaFailure",
        "Help",
        "RetryInfo",
    ]
    retry = error_details_pb2.RetryInfo()
    assert err.details[2].Unpack(retry)
    assert retry.retry_delay.seconds == 47
    quota = error_details_pb2.QuotaFailure()
    err.details[0].Unpack(quota)
    assert quota.violations[0].quota_id == "PerMinute"
    ((key, value),) = err.trailing_metadata()
    assert key == "grpc-status-details-bin"
    status = err.to_status_proto()
    assert status.code == grpc.StatusCode.RESOURCE_EXHAUSTED.value[0]
    assert status.SerializeToString() == value


@pytest.mark.parametrize(
    ("http_status", "code"),
    [
        (400, grpc.StatusCode.INVALID_ARGUMENT),
        (401, grpc.StatusCode.UNAUTHENTICATED),
        (403, grpc.StatusCode.PERMISSION_DENIED),
        (404, grpc.StatusCode.NOT_FOUND),
        (409, grpc.StatusCode.ABORTED),
        (429, grpc.StatusCode.RESOURCE_EXHAUSTED),
        (499, grpc.StatusCode.CANCELLED),
        (501, grpc.StatusCode.UNIMPLEMENTED),
        (503, grpc.StatusCode.UNAVAILABLE),
        (504, grpc.StatusCode.DEADLINE_EXCEEDED),
    ],
)
def test_http_fallback_when_body_has_no_status(http_status: int, code: grpc.StatusCode) -> None:
    body = json.dumps({"error": {"code": http_status, "message": "m"}}).encode()
    assert errors.from_http_response(http_status, "application/json", body).code is code


def test_unparsable_5xx_names_the_upstream_status() -> None:
    err = errors.from_http_response(502, "text/html", b"<html>Bad Gateway</html>")
    assert err.code is grpc.StatusCode.UNAVAILABLE
    assert "HTTP 502" in err.message
    assert "text/html" in err.message
    err = errors.from_http_response(500, "text/plain", b"oops")
    assert err.code is grpc.StatusCode.UNAVAILABLE
    assert "HTTP 500" in err.message


def test_invalid_argument_names_the_field() -> None:
    err = errors.invalid_argument("bad label", field="labels")
    bad_request = error_details_pb2.BadRequest()
    assert err.details[0].Unpack(bad_request)
    assert bad_request.field_violations[0].field == "labels"
