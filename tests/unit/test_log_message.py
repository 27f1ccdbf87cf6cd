"""A stored log as the log service shows it: the request and response of each kind of row."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

from google.protobuf import json_format

from gemini_gateway.generated.google.ai.generativelanguage.v1 import (
    generative_service_pb2 as v1_service,
)
from gemini_gateway.generated.google.ai.generativelanguage.v1beta import (
    generative_service_pb2,
)
from gemini_gateway.server.services.logs import log_message
from gemini_gateway.server.store.logs import LogRecord

Request = generative_service_pb2.GenerateContentRequest
Response = generative_service_pb2.GenerateContentResponse


def record(**fields: Any) -> LogRecord:
    values: dict[str, Any] = {
        "id": "0000000000010000000000a1", "project": "p1",
        "create_time": datetime(2026, 11, 25, tzinfo=UTC), "caller": "alice",
        "model": "models/gemini-2.5-flash", "method": "GenerateContent",
        "api_version": "v1beta", "labels": {}, "status": "OK", "error_message": "",
        "latency_ms": 1.0, "first_chunk_ms": None, "prompt_tokens": 1, "candidates_tokens": 1,
        "cached_tokens": 0, "thoughts_tokens": 0, "tool_use_tokens": 0, "total_tokens": 2,
        "incomplete": False, "finish_reason": "STOP", "response_id": "", "prompt_preview": "",
        "response_preview": "", "full": True,
    }  # fmt: skip
    values.update(fields)
    return LogRecord(**values)


def sent() -> Any:
    message = Request(model="models/gemini-2.5-flash")
    message.contents.add(role="user").parts.add(text="Ping")
    message.generation_config.temperature = 0.25
    message.labels["team"] = "search"
    return message


def answer() -> Any:
    message = Response(response_id="r-1")
    message.candidates.add(finish_reason=1).content.parts.add(text="Pong")
    return message


def test_a_v1beta_log_reads_its_bytes_straight_into_the_messages() -> None:
    stored = record(request_pb=sent().SerializeToString(), response_pb=answer().SerializeToString())
    shown = log_message(stored, full=True)
    assert shown.request == sent()
    assert shown.response == answer()
    # The JSON the exports and re-runs read says the same.
    assert json_format.Parse(stored.request_json, Request()) == sent()


def test_fields_the_gateway_does_not_know_are_not_shown() -> None:
    """A newer client's field went nowhere (the upstream's JSON leaves it out): the log
    shows what the JSON would."""
    unknown = sent().SerializeToString() + b"\xf8\xff\x03\x01"  # field 65535, varint 1
    size = sent().ByteSize()
    assert Request.FromString(unknown).ByteSize() == size + 4  # a parse keeps it
    shown = log_message(record(request_pb=unknown), full=True)
    assert shown.request == sent()
    assert shown.request.ByteSize() == size
    assert json_format.Parse(record(request_pb=unknown).request_json, Request()) == sent()


def test_a_v1_log_and_a_log_kept_as_json_read_through_json() -> None:
    v1_request = v1_service.GenerateContentRequest(model="models/gemini-2.5-flash")
    v1_request.contents.add(role="user").parts.add(text="Bonjour")
    v1_log = record(api_version="v1", request_pb=v1_request.SerializeToString())
    assert log_message(v1_log, full=True).request.contents[0].parts[0].text == "Bonjour"

    old = record(
        stored_request_json=json.dumps(json_format.MessageToDict(sent())),
        stored_response_json=json.dumps(json_format.MessageToDict(answer())),
    )
    shown = log_message(old, full=True)
    assert (shown.request, shown.response) == (sent(), answer())


def test_bytes_that_do_not_parse_show_no_message_and_no_error() -> None:
    broken = record(request_pb=b"\xff\xff", response_pb=answer().SerializeToString())
    shown = log_message(broken, full=True)
    assert shown.request == Request()  # empty, as for JSON that does not parse
    assert shown.response == answer()
    assert broken.request_json == ""


def test_the_basic_view_carries_no_messages() -> None:
    basic = record(full=False)
    shown = log_message(basic, full=False)
    assert not shown.HasField("request") and not shown.HasField("response")
    assert basic.request_json == basic.response_json == ""
