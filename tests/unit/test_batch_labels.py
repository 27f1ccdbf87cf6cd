"""label_inlined_requests: each inlined request of a batch gets its labels as a generate call."""

from __future__ import annotations

from typing import Any

import grpc
import pytest

from gemini_gateway.generated.google.ai.generativelanguage.v1beta import (
    generative_service_pb2 as gs,
)
from gemini_gateway.server import errors
from gemini_gateway.server.batch_usage import label_inlined_requests


def batch(*labels: dict[str, str]) -> gs.BatchGenerateContentRequest:
    request = gs.BatchGenerateContentRequest(batch=gs.GenerateContentBatch(model="models/m"))
    for own in labels:
        inlined = request.batch.input_config.requests.requests.add()
        inlined.request.labels.update(own)
        inlined.request.contents.add(role="user").parts.add(text="hi")
    return request


def body_of(*requests: dict[str, Any] | None) -> dict[str, Any]:
    items = [{} if r is None else {"request": r} for r in requests]
    return {"batch": {"inputConfig": {"requests": {"requests": items}}}}


def test_defaults_go_under_each_requests_own_labels_in_the_message_and_the_body() -> None:
    request = batch({"team": "own"}, {}, {"x": "1"})
    body = body_of({"labels": {"team": "own"}}, None, {"labels": {"x": "1"}})
    label_inlined_requests(request, {"team": "default", "env": "prod"}, False, body)
    labels = [dict(r.request.labels) for r in request.batch.input_config.requests.requests]
    assert labels == [
        {"team": "own", "env": "prod"},
        {"team": "default", "env": "prod"},
        {"team": "default", "env": "prod", "x": "1"},
    ]
    sent = [item.get("request") for item in body["batch"]["inputConfig"]["requests"]["requests"]]
    # The second request has no JSON object of its own: the third keeps its own position.
    assert sent == [
        {"labels": {"env": "prod", "team": "own"}},
        None,
        {"labels": {"env": "prod", "team": "default", "x": "1"}},
    ]


def test_strip_keeps_labels_out_of_the_body_only() -> None:
    request = batch({"team": "a"})
    body = body_of({"labels": {"team": "a"}, "contents": []})
    label_inlined_requests(request, {"env": "prod"}, True, body)
    assert body_of({"contents": []}) == body
    assert dict(request.batch.input_config.requests.requests[0].request.labels) == {
        "team": "a",
        "env": "prod",
    }


def test_every_bad_label_of_every_request_is_named_by_its_path() -> None:
    request = batch({"ok": "1"}, {"Bad": "x"}, {f"k{i}": "v" for i in range(64)})
    with pytest.raises(errors.UpstreamError) as caught:
        label_inlined_requests(request, {"env": "prod"}, False, None)
    assert caught.value.code == grpc.StatusCode.INVALID_ARGUMENT
    text = caught.value.message
    assert "batch.input_config.requests.requests[1].request.labels[Bad]" in text
    assert "batch.input_config.requests.requests[2].request.labels" in text
    assert "requests[0]" not in text
