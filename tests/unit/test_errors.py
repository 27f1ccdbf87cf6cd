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


# Upstream faults by the written rule: never blamed on the caller, never a class name.


def test_deeply_nested_error_body_falls_back_to_the_http_status() -> None:
    body = b'{"error": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"
    err = errors.from_http_response(503, "application/json", body)
    assert err.code is grpc.StatusCode.UNAVAILABLE
    assert err.message.startswith("upstream returned HTTP 503 with a body that is not a Google")


def test_deeply_nested_detail_is_dropped() -> None:
    # Parsed by json (600 levels), refused by protobuf's json_format (over 100): dropped.
    fields = '{"x": {"structValue": {"fields": ' * 200 + "{}" + "}}}" * 200
    detail = '{"@type": "type.googleapis.com/google.protobuf.Struct", "fields": ' + fields + "}"
    retry = '{"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": "3s"}'
    body = (
        '{"error": {"code": 400, "message": "m", "status": "INVALID_ARGUMENT", '
        f'"details": [{detail}, {retry}]}}}}'
    )
    err = errors.from_http_response(400, "application/json", body.encode())
    assert err.code is grpc.StatusCode.INVALID_ARGUMENT
    assert [d.type_url.rpartition(".")[2] for d in err.details] == ["RetryInfo"]


def test_snippet_is_redacted_before_it_is_cut() -> None:
    from gemini_gateway.server import redaction

    secret = "snippet-secret-0123456789abcdef"
    redaction.SECRETS.add(secret)
    try:
        for cut in range(180, 200):
            body = b"x" * cut + b" key " + secret.encode() + b" tail"
            err = errors.from_http_response(502, "text/html", body)
            assert secret[:8] not in err.message, cut
            assert secret[-8:] not in err.message, cut
    finally:
        redaction.SECRETS.clear()


def test_upstream_json_rule() -> None:
    from gemini_gateway.server.upstream_body import parse_upstream_json

    assert parse_upstream_json(b'{"a": [1]}', "x") == {"a": [1]}
    cases = {
        b'{"t": "\xff"}': "upstream sent the answer that is not valid UTF-8 (invalid byte at "
        "offset 7)",
        b"<html>": "upstream sent the answer that is not valid JSON: '<html>'",
        b"[" * 100_000: "upstream sent the answer nested too deeply to read",
    }
    for payload, message in cases.items():
        with pytest.raises(errors.UpstreamError) as info:
            parse_upstream_json(payload, "the answer")
        assert (info.value.code, info.value.message) == (grpc.StatusCode.INTERNAL, message)


def test_sizes_are_told_in_mib_or_bytes() -> None:
    assert errors.size_text(32 * 1024 * 1024) == "32 MiB"
    assert errors.size_text(512 * 1024) == "0.5 MiB"
    assert errors.size_text(100) == "100 bytes"


def test_transport_failures_are_told_without_class_names() -> None:
    from gemini_gateway.server.transports import describe

    class TransferEncodingError(Exception):
        pass

    wrapped = Exception(
        "Response payload is not completed: <TransferEncodingError: 400, "
        "message='Not enough data to satisfy transfer length header.'>"
    )
    assert describe(wrapped) == (
        "Response payload is not completed: 400, message='Not enough data to satisfy "
        "transfer length header.'"
    )
    assert describe(TransferEncodingError()) == "the connection failed"
    reset = ConnectionResetError("Connection reset by peer")
    assert describe(reset) == "Connection reset by peer"
