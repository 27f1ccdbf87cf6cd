"""The emulator's Batch API over REST: create, progress, results, cancel, delete, list, errors.

A batch's progress follows the wall clock. Tests that look at a batch mid-way give it a long
duration and move its creation time back, so what they see does not depend on timing.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from gemini_gateway.emulator import EmulatorHandle, EmulatorSettings, start_emulator
from gemini_gateway.emulator.batches import BATCHES_KEY, PENDING_SHARE, Batch
from tests.emulator.conftest import GENERATE, Api, user

CREATE = "/v1beta/models/gemini-2.5-flash:batchGenerateContent"
V1MAIN = "type.googleapis.com/google.ai.generativelanguage.v1main."
LONG = 1000.0  # seconds: a batch that will not move on its own during a test


def batch_body(*texts: str, display_name: str = "nightly") -> dict[str, Any]:
    return {
        "batch": {
            "displayName": display_name,
            "inputConfig": {
                "requests": {
                    "requests": [
                        {"request": user(text), "metadata": {"key": f"k{i}"}}
                        for i, text in enumerate(texts)
                    ]
                }
            },
        }
    }


def set_duration(emulator: EmulatorHandle, seconds: float) -> None:
    emulator.app[BATCHES_KEY].seconds = seconds


def batch_of(emulator: EmulatorHandle, name: str) -> Batch:
    return emulator.app[BATCHES_KEY].batches[name.removeprefix("batches/")]


def move_to(emulator: EmulatorHandle, name: str, share: float) -> None:
    """Make the batch `share` (0..1) of the way through its time."""
    batch = batch_of(emulator, name)
    batch.created -= batch.duration * share


async def create(api: Api, body: dict[str, Any] | None = None) -> dict[str, Any]:
    status, operation, text = await api.post(CREATE, body or batch_body("hello", "world"))
    assert status == 200, text
    return operation


async def test_create_answers_a_pending_operation(api: Api, emulator: EmulatorHandle) -> None:
    set_duration(emulator, LONG)
    body = batch_body("hello", "world")
    body["batch"]["priority"] = "7"
    operation = await create(api, body)
    name = operation["name"]
    assert name.startswith("batches/") and len(name) == len("batches/") + 40
    assert "done" not in operation and "response" not in operation
    metadata = operation["metadata"]
    assert list(metadata) == [
        "@type",
        "model",
        "displayName",
        "createTime",
        "updateTime",
        "batchStats",
        "state",
        "name",
        "priority",
    ]
    assert metadata["@type"] == V1MAIN + "GenerateContentBatch"
    assert metadata["model"] == "models/gemini-2.5-flash"
    assert metadata["displayName"] == "nightly"
    assert metadata["state"] == "BATCH_STATE_PENDING"
    assert metadata["name"] == name
    assert metadata["priority"] == "7"
    assert metadata["createTime"] == metadata["updateTime"]
    assert metadata["createTime"].endswith("Z")
    # int64 counts are JSON strings; zero counts are left out.
    assert metadata["batchStats"] == {"requestCount": "2", "pendingRequestCount": "2"}

    status, again, _ = await api.get(f"/v1beta/{name}")
    assert status == 200 and again == operation


async def test_running_batch_answers_requests_one_after_another(
    api: Api, emulator: EmulatorHandle
) -> None:
    set_duration(emulator, LONG)
    name = (await create(api))["name"]
    # Past the pending share and past the first request's turn, before the second's.
    move_to(emulator, name, PENDING_SHARE + (1 - PENDING_SHARE) * 0.75)
    status, operation, _ = await api.get(f"/v1beta/{name}")
    assert status == 200
    assert "done" not in operation
    metadata = operation["metadata"]
    assert metadata["state"] == "BATCH_STATE_RUNNING"
    assert metadata["batchStats"] == {
        "requestCount": "2",
        "successfulRequestCount": "1",
        "pendingRequestCount": "1",
    }
    assert "output" not in metadata and "endTime" not in metadata
    assert metadata["updateTime"] > metadata["createTime"]


async def test_finished_batch_holds_the_generate_answers_in_order(
    api: Api, emulator: EmulatorHandle
) -> None:
    set_duration(emulator, 0)
    operation = await create(api, batch_body("hello", "world", "third"))
    assert operation["done"] is True
    metadata = operation["metadata"]
    assert metadata["state"] == "BATCH_STATE_SUCCEEDED"
    assert metadata["batchStats"] == {"requestCount": "3", "successfulRequestCount": "3"}
    assert "endTime" in metadata
    response = operation["response"]
    assert response["@type"] == V1MAIN + "GenerateContentBatchOutput"
    inlined = response["inlinedResponses"]["inlinedResponses"]
    assert [entry["metadata"] for entry in inlined] == [{"key": "k0"}, {"key": "k1"}, {"key": "k2"}]
    # The metadata's output is the same as the response's.
    assert metadata["output"] == {"inlinedResponses": response["inlinedResponses"]}
    for entry, text in zip(inlined, ["hello", "world", "third"], strict=True):
        status, direct, _ = await api.post(GENERATE, user(text))
        assert status == 200
        assert entry["response"] == direct  # same generation, same responseId


async def test_snake_case_body_and_requests_without_metadata(
    api: Api, emulator: EmulatorHandle
) -> None:
    set_duration(emulator, 0)
    body = {
        "batch": {
            "display_name": "snake",
            "input_config": {"requests": {"requests": [{"request": user("hi")}]}},
        }
    }
    operation = await create(api, body)
    assert operation["metadata"]["displayName"] == "snake"
    (entry,) = operation["response"]["inlinedResponses"]["inlinedResponses"]
    assert list(entry) == ["response"]


async def test_a_failing_request_fails_alone(api: Api, emulator: EmulatorHandle) -> None:
    set_duration(emulator, 0)
    body = batch_body("fine", "busy [[fault:503]]", "also fine")
    body["batch"]["inputConfig"]["requests"]["requests"].append({"request": {"contents": []}})
    operation = await create(api, body)
    assert operation["metadata"]["state"] == "BATCH_STATE_SUCCEEDED"
    assert operation["metadata"]["batchStats"] == {
        "requestCount": "4",
        "successfulRequestCount": "2",
        "failedRequestCount": "2",
    }
    inlined = operation["response"]["inlinedResponses"]["inlinedResponses"]
    assert "response" in inlined[0] and "response" in inlined[2]
    assert inlined[1]["error"] == {
        "code": 14,
        "message": "The model is overloaded. Please try again later.",
    }
    assert inlined[1]["metadata"] == {"key": "k1"}
    assert inlined[3]["error"]["code"] == 3
    assert "contents is not specified" in inlined[3]["error"]["message"]


async def test_batch_failed_token_fails_the_whole_batch(api: Api, emulator: EmulatorHandle) -> None:
    set_duration(emulator, 0)
    operation = await create(api, batch_body("x", display_name="bad [[fault:batch_failed]]"))
    assert operation["done"] is True
    assert operation["metadata"]["state"] == "BATCH_STATE_FAILED"
    assert operation["error"]["code"] == 13
    assert "response" not in operation and "output" not in operation["metadata"]


async def test_cancel_stops_the_requests_not_yet_run(api: Api, emulator: EmulatorHandle) -> None:
    set_duration(emulator, LONG)
    name = (await create(api))["name"]
    move_to(emulator, name, PENDING_SHARE + (1 - PENDING_SHARE) * 0.75)
    status, body, _ = await api.post(f"/v1beta/{name}:cancel", None)
    assert (status, body) == (200, {})
    status, operation, _ = await api.get(f"/v1beta/{name}")
    assert operation["done"] is True
    assert operation["error"] == {"code": 1, "message": "Batch cancelled."}
    metadata = operation["metadata"]
    assert metadata["state"] == "BATCH_STATE_CANCELLED"
    assert metadata["batchStats"] == {
        "requestCount": "2",
        "successfulRequestCount": "1",
        "pendingRequestCount": "1",
    }
    (answered,) = metadata["output"]["inlinedResponses"]["inlinedResponses"]
    assert answered["metadata"] == {"key": "k0"}
    # The request never reached was never generated.
    assert set(batch_of(emulator, name).answers) == {0}


async def test_cancel_of_a_finished_batch_changes_nothing(
    api: Api, emulator: EmulatorHandle
) -> None:
    set_duration(emulator, 0)
    operation = await create(api)
    status, _, _ = await api.post(f"/v1beta/{operation['name']}:cancel", None)
    assert status == 200
    status, again, _ = await api.get(f"/v1beta/{operation['name']}")
    assert again == operation


async def test_delete_forgets_the_batch(api: Api, emulator: EmulatorHandle) -> None:
    name = (await create(api))["name"]
    status, body, _ = await api.call("DELETE", f"/v1beta/{name}")
    assert (status, body) == (200, {})
    status, body, _ = await api.get(f"/v1beta/{name}")
    assert status == 404
    assert body["error"]["status"] == "NOT_FOUND"
    assert body["error"]["message"] == f"Batch {name} not found."


@pytest.mark.parametrize(("method", "suffix"), [("GET", ""), ("DELETE", ""), ("POST", ":cancel")])
async def test_unknown_batches_are_not_found(api: Api, method: str, suffix: str) -> None:
    status, body, _ = await api.call(method, f"/v1beta/batches/nothing{suffix}")
    assert status == 404
    assert body == {
        "error": {
            "code": 404,
            "message": "Batch batches/nothing not found.",
            "status": "NOT_FOUND",
        }
    }


async def test_list_is_newest_first_and_paged(api: Api, emulator: EmulatorHandle) -> None:
    status, body, _ = await api.get("/v1beta/batches")
    assert (status, body) == (200, {})
    names = [(await create(api))["name"] for _ in range(3)]
    status, page, _ = await api.get("/v1beta/batches?pageSize=2")
    assert status == 200
    assert [op["name"] for op in page["operations"]] == names[::-1][:2]
    status, rest, _ = await api.get(f"/v1beta/batches?pageSize=2&pageToken={page['nextPageToken']}")
    assert [op["name"] for op in rest["operations"]] == names[:1]
    assert "nextPageToken" not in rest
    status, body, _ = await api.get("/v1beta/batches?pageToken=bogus")
    assert status == 400


def requests_body(requests: Any) -> dict[str, Any]:
    return {"batch": {"displayName": "x", "inputConfig": {"requests": {"requests": requests}}}}


@pytest.mark.parametrize(
    ("body", "field", "text"),
    [
        ({}, "batch", "batch is required"),
        ({"batch": {"displayName": "x"}}, "batch.input_config", "input_config is required"),
        (requests_body([]), "batch.input_config.requests.requests", "at least one request"),
        (requests_body([{"metadata": {}}]), "batch.input_config.requests.requests[0].request", ""),
        (requests_body([{"request": "hi"}]), "batch.input_config.requests.requests[0].request", ""),
        (
            requests_body([{"request": user("a"), "metadata": "k"}]),
            "batch.input_config.requests.requests[0].metadata",
            "must be an object",
        ),
        (
            {"batch": {"inputConfig": {"fileName": "files/abc"}}},
            "batch.input_config.file_name",
            "inlined requests only",
        ),
        (
            {"batch": {"displayName": 5, "inputConfig": {"requests": {"requests": [{}]}}}},
            "batch.display_name",
            "",
        ),
        ({"batch": {"priority": "high"}}, "batch.priority", "integer"),
    ],
)
async def test_bad_bodies_are_400(api: Api, body: Any, field: str, text: str) -> None:
    status, answer, raw = await api.post(CREATE, body)
    assert status == 400, raw
    error = answer["error"]
    assert error["status"] == "INVALID_ARGUMENT"
    assert text in error["message"]
    assert error["details"][0]["fieldViolations"][0]["field"] == field


async def test_unknown_fields_are_refused_unless_lenient(api: Api) -> None:
    body = batch_body("a")
    body["batch"]["inputConfig"]["requests"]["requests"][0]["request"]["fooBar"] = 1
    body["batch"]["colour"] = "red"
    status, answer, _ = await api.post(CREATE, body)
    assert status == 400
    # One sentence and one violation per unknown field, in the body's order.
    assert answer["error"]["message"] == (
        'Invalid JSON payload received. Unknown name "fooBar" at '
        "'batch.input_config.requests.requests[0].request': Cannot find field.\n"
        "Invalid JSON payload received. Unknown name \"colour\" at 'batch': Cannot find field."
    )
    assert [v["field"] for v in answer["error"]["details"][0]["fieldViolations"]] == [
        "batch.input_config.requests.requests[0].request",
        "batch",
    ]
    lenient = await start_emulator(EmulatorSettings(strict_fields=False))
    try:
        status, _, _ = await Api(lenient, api.session).post(CREATE, body)
        assert status == 200
    finally:
        await lenient.close()


async def test_labels_of_inlined_requests_are_accepted(api: Api) -> None:
    body = batch_body("a")
    body["batch"]["inputConfig"]["requests"]["requests"][0]["request"]["labels"] = {"team": "x"}
    status, _, raw = await api.post(CREATE, body)
    assert status == 200, raw


@pytest.mark.parametrize("model", ["gemini-9", "text-embedding-004"])
async def test_models_that_cannot_batch_are_not_found(api: Api, model: str) -> None:
    status, answer, _ = await api.post(
        f"/v1beta/models/{model}:batchGenerateContent", batch_body("a")
    )
    assert status == 404
    assert answer["error"]["message"].startswith(f"models/{model} is not found for API version")
    assert "batchGenerateContent" in answer["error"]["message"]


async def test_batches_are_v1beta_only(api: Api) -> None:
    status, _, _ = await api.post(
        "/v1/models/gemini-2.5-flash:batchGenerateContent", batch_body("a")
    )
    assert status == 404


async def test_header_faults_apply_to_create(api: Api) -> None:
    status, answer, _ = await api.post(CREATE, batch_body("a"), headers={"x-emulator-fault": "503"})
    assert status == 503
    assert answer["error"]["status"] == "UNAVAILABLE"


async def test_batches_follow_the_clock(emulator: EmulatorHandle, api: Api) -> None:
    """With no help from the test, a short batch goes from PENDING to SUCCEEDED."""
    set_duration(emulator, 0.2)
    operation = await create(api)
    assert operation["metadata"]["state"] == "BATCH_STATE_PENDING"
    while not operation.get("done"):
        await asyncio.sleep(0.05)
        status, operation, _ = await api.get(f"/v1beta/{operation['name']}")
        assert status == 200
    assert operation["metadata"]["state"] == "BATCH_STATE_SUCCEEDED"
