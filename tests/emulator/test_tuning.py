"""Tuned models: create, watch the operation, use, list, update, delete, fail, cancel."""

from __future__ import annotations

import asyncio
import itertools
import json
import re
from typing import Any

from tests.emulator.conftest import STREAM_SSE, Api, parse_sse, user

V1BETA = "type.googleapis.com/google.ai.generativelanguage.v1beta."
WORDS = ["one", "two", "three", "four", "five", "six", "seven", "eight"]
TIMESTAMP = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z$")


def increment_dataset() -> list[dict[str, str]]:
    examples = [{"textInput": str(i), "output": str(i + 1)} for i in range(1, 8)]
    examples += [{"textInput": a, "output": b} for a, b in itertools.pairwise(WORDS)]
    return examples


def tuned_model(display_name: str = "Number Generator", **extra: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "displayName": display_name,
        "baseModel": "models/gemini-1.5-flash-001-tuning",
        "tuningTask": {
            "hyperparameters": {"epochCount": 2},
            "trainingData": {"examples": {"examples": increment_dataset()}},
        },
    }
    return body | extra


async def wait_done(api: Api, operation: str) -> dict[str, Any]:
    for _ in range(200):
        status, op, _ = await api.get(f"/v1beta/{operation}")
        assert status == 200
        if op.get("done"):
            return op
        await asyncio.sleep(0.05)
    raise AssertionError("operation never finished")


async def test_create_poll_and_use(api: Api) -> None:
    status, op, _ = await api.post("/v1beta/tunedModels?tunedModelId=increment", tuned_model())
    assert status == 200
    assert re.fullmatch(r"tunedModels/increment/operations/[a-z0-9]+", op["name"])
    assert "done" not in op
    metadata = op["metadata"]
    assert metadata["@type"] == V1BETA + "CreateTunedModelMetadata"
    assert metadata["tunedModel"] == "tunedModels/increment"
    total = metadata["totalSteps"]
    assert total == 7  # ceil(14 examples * 2 epochs / batch size 4)

    _, model, _ = await api.get("/v1beta/tunedModels/increment")
    assert model["state"] == "CREATING"
    status, body, _ = await api.post("/v1beta/tunedModels/increment:generateContent", user("seven"))
    assert status == 400
    assert body["error"]["status"] == "FAILED_PRECONDITION"

    partial_seen = False
    for _ in range(200):
        _, current, _ = await api.get(f"/v1beta/{op['name']}")
        steps = current["metadata"].get("completedSteps", 0)
        if 0 < steps < total:
            partial_seen = True
            assert len(current["metadata"]["snapshots"]) == steps
            assert "done" not in current
        if current.get("done"):
            break
        await asyncio.sleep(0.02)
    assert partial_seen
    done = await wait_done(api, op["name"])
    assert done["metadata"]["completedSteps"] == total
    assert done["metadata"]["completedPercent"] == 100
    snapshots = done["metadata"]["snapshots"]
    assert [s["step"] for s in snapshots] == list(range(1, total + 1))
    losses = [s["meanLoss"] for s in snapshots]
    assert all(a > b for a, b in itertools.pairwise(losses))
    assert {s["epoch"] for s in snapshots} == {1, 2}
    assert all(TIMESTAMP.match(s["computeTime"]) for s in snapshots)
    response = done["response"]
    assert response["@type"] == V1BETA + "TunedModel"
    assert response["state"] == "ACTIVE"

    _, model, _ = await api.get("/v1beta/tunedModels/increment")
    assert model["state"] == "ACTIVE"
    assert model["name"] == "tunedModels/increment"
    assert model["baseModel"] == "models/gemini-1.5-flash-001-tuning"
    assert model["tuningTask"]["hyperparameters"] == {
        "learningRate": 0.001,
        "epochCount": 2,
        "batchSize": 4,
    }
    for key in ("createTime", "updateTime"):
        assert TIMESTAMP.match(model[key])
    assert TIMESTAMP.match(model["tuningTask"]["completeTime"])

    status, answer, _ = await api.post(
        "/v1beta/tunedModels/increment:generateContent", user("seven")
    )
    assert status == 200
    assert answer["candidates"][0]["content"]["parts"][0]["text"] == "eight"
    _, answer, _ = await api.post("/v1/tunedModels/increment:generateContent", user("3"))
    assert answer["candidates"][0]["content"]["parts"][0]["text"] == "4"
    _, _, raw = await api.post(
        STREAM_SSE.replace("models/gemini-2.5-flash", "tunedModels/increment"),
        user("what comes after six"),
    )
    assert (
        "".join(
            json.loads(p)["candidates"][0]["content"]["parts"][0]["text"] for p in parse_sse(raw)
        )
        == "seven"
    )

    _, ops, _ = await api.get("/v1beta/tunedModels/increment/operations")
    assert [o["name"] for o in ops["operations"]] == [op["name"]]


async def test_ids_defaults_and_duplicates(api: Api) -> None:
    _, op, _ = await api.post("/v1beta/tunedModels", tuned_model("Sentence Translator"))
    assert re.fullmatch(
        r"tunedModels/sentence-translator-[a-z0-9]{5}", op["metadata"]["tunedModel"]
    )
    body = tuned_model("")
    del body["tuningTask"]["hyperparameters"]
    _, op, _ = await api.post("/v1beta/tunedModels", body)
    assert re.fullmatch(r"tunedModels/tunedmodel-[a-z0-9]{5}", op["metadata"]["tunedModel"])
    assert op["metadata"]["totalSteps"] == 18  # ceil(14 * 5 / 4) with the defaults
    big = tuned_model("Big")
    big["tuningTask"]["trainingData"]["examples"]["examples"] = [
        {"textInput": f"q{i}", "output": f"a{i}"} for i in range(600)
    ]
    del big["tuningTask"]["hyperparameters"]
    _, op, _ = await api.post("/v1beta/tunedModels?tunedModelId=big", big)
    assert op["metadata"]["totalSteps"] == 188  # ceil(600 * 5 / 16)
    _, model, _ = await api.get("/v1beta/tunedModels/big")
    assert model["tuningTask"]["hyperparameters"]["batchSize"] == 16
    assert model["tuningTask"]["hyperparameters"]["learningRate"] == 0.0002

    status, body, _ = await api.post("/v1beta/tunedModels?tunedModelId=big", big)
    assert status == 409
    assert body["error"]["status"] == "ALREADY_EXISTS"
    status, _, _ = await api.post("/v1beta/tunedModels?tunedModelId=Bad_Id", tuned_model())
    assert status == 400
    status, _, _ = await api.post("/v1beta/tunedModels", tuned_model("x" * 41))
    assert status == 400
    no_data = tuned_model()
    no_data["tuningTask"]["trainingData"] = {}
    status, _, _ = await api.post("/v1beta/tunedModels", no_data)
    assert status == 400


async def test_list_filter_and_pagination(api: Api) -> None:
    for name in ("Alpha Poet", "Beta Poet", "Gamma Coder", "Delta Poet"):
        await api.post("/v1beta/tunedModels", tuned_model(name, description="writes things"))
    _, page, _ = await api.get("/v1beta/tunedModels")
    assert len(page["tunedModels"]) == 4
    assert "nextPageToken" not in page

    names: list[str] = []
    token = ""
    while True:
        _, page, _ = await api.get(f"/v1beta/tunedModels?pageSize=3&pageToken={token}")
        names += [m["displayName"] for m in page["tunedModels"]]
        token = page.get("nextPageToken", "")
        if not token:
            break
    assert names == ["Alpha Poet", "Beta Poet", "Gamma Coder", "Delta Poet"]

    _, page, _ = await api.get("/v1beta/tunedModels?filter=poet owner:me")
    assert [m["displayName"] for m in page["tunedModels"]] == [
        "Alpha Poet",
        "Beta Poet",
        "Delta Poet",
    ]
    _, page, _ = await api.get("/v1beta/tunedModels?filter=POET beta")
    assert [m["displayName"] for m in page["tunedModels"]] == ["Beta Poet"]
    _, page, _ = await api.get("/v1beta/tunedModels?filter=writes")
    assert len(page["tunedModels"]) == 4
    _, page, _ = await api.get("/v1beta/tunedModels?filter=nothing-matches")
    assert page == {}


async def test_update_with_mask(api: Api) -> None:
    await api.post("/v1beta/tunedModels?tunedModelId=patchme", tuned_model())
    _, before, _ = await api.get("/v1beta/tunedModels/patchme")
    await asyncio.sleep(0.01)
    change = {"displayName": "Renamed", "description": "new words", "temperature": 0.3}
    status, after, _ = await api.call(
        "PATCH", "/v1beta/tunedModels/patchme?updateMask=display_name,description", change
    )
    assert status == 200
    assert after["displayName"] == "Renamed"
    assert after["description"] == "new words"
    assert after["temperature"] == before["temperature"]  # not in the mask
    assert after["updateTime"] > before["updateTime"]
    status, after, _ = await api.call(
        "PATCH",
        "/v1beta/tunedModels/patchme?updateMask=temperature,topK,readerProjectNumbers",
        {"temperature": 0.3, "topK": 5, "readerProjectNumbers": [123]},
    )
    assert (after["temperature"], after["topK"]) == (0.3, 5)
    assert after["readerProjectNumbers"] == ["123"]
    status, _, _ = await api.call("PATCH", "/v1beta/tunedModels/patchme", change)
    assert status == 400
    status, _, _ = await api.call(
        "PATCH", "/v1beta/tunedModels/patchme?updateMask=baseModel", change
    )
    assert status == 400
    status, _, _ = await api.call("PATCH", "/v1beta/tunedModels/nope?updateMask=description", {})
    assert status == 404


async def test_delete(api: Api) -> None:
    await api.post("/v1beta/tunedModels?tunedModelId=gone", tuned_model())
    status, body, _ = await api.call("DELETE", "/v1beta/tunedModels/gone")
    assert status == 200 and body == {}
    status, body, _ = await api.get("/v1beta/tunedModels/gone")
    assert status == 404
    assert body["error"]["status"] == "NOT_FOUND"
    status, _, _ = await api.call("DELETE", "/v1beta/tunedModels/gone")
    assert status == 404
    status, _, _ = await api.post("/v1beta/tunedModels/gone:generateContent", user("seven"))
    assert status == 404


async def test_tuning_failure_fault(api: Api) -> None:
    body = tuned_model("Doomed", description="breaks [[fault:tuning_failed]]")
    _, op, _ = await api.post("/v1beta/tunedModels?tunedModelId=doomed", body)
    done = await wait_done(api, op["name"])
    assert "response" not in done
    assert done["error"]["code"] == 13
    assert done["error"]["message"]
    assert done["metadata"].get("completedSteps", 0) < done["metadata"]["totalSteps"]
    _, model, _ = await api.get("/v1beta/tunedModels/doomed")
    assert model["state"] == "FAILED"
    status, _, _ = await api.post("/v1beta/tunedModels/doomed:generateContent", user("1"))
    assert status == 400
    # The header selects the same fault.
    _, op, _ = await api.post(
        "/v1beta/tunedModels?tunedModelId=doomed2",
        tuned_model(),
        headers={"x-emulator-fault": "tuning_failed"},
    )
    assert (await wait_done(api, op["name"]))["error"]["code"] == 13


async def test_cancel_operation(api: Api) -> None:
    _, op, _ = await api.post("/v1beta/tunedModels?tunedModelId=stopme", tuned_model())
    status, body, _ = await api.post(f"/v1beta/{op['name']}:cancel", {})
    assert status == 200 and body == {}
    _, done, _ = await api.get(f"/v1beta/{op['name']}")
    assert done["done"] is True
    assert done["error"]["code"] == 1
    _, model, _ = await api.get("/v1beta/tunedModels/stopme")
    assert model["state"] == "FAILED"
    status, _, _ = await api.get("/v1beta/tunedModels/stopme/operations/unknown")
    assert status == 404
    status, body, _ = await api.post("/v1beta/batches/123:cancel", {})
    assert status == 404
    assert body["error"]["status"] == "NOT_FOUND"


async def test_model_from_tuned_source_inherits_examples(api: Api) -> None:
    _, op, _ = await api.post("/v1beta/tunedModels?tunedModelId=parent", tuned_model())
    await wait_done(api, op["name"])
    child = {
        "displayName": "Child",
        "tunedModelSource": {"tunedModel": "tunedModels/parent"},
        "tuningTask": {
            "trainingData": {"examples": {"examples": [{"textInput": "ten", "output": "eleven"}]}}
        },
    }
    _, op, _ = await api.post("/v1beta/tunedModels?tunedModelId=child", child)
    assert op["metadata"]["totalSteps"] == 2  # ceil(1 * 5 / 4)
    await wait_done(api, op["name"])
    _, model, _ = await api.get("/v1beta/tunedModels/child")
    assert model["tunedModelSource"] == {
        "tunedModel": "tunedModels/parent",
        "baseModel": "models/gemini-1.5-flash-001-tuning",
    }
    for prompt, expected in (("ten", "eleven"), ("seven", "eight")):
        _, answer, _ = await api.post("/v1beta/tunedModels/child:generateContent", user(prompt))
        assert answer["candidates"][0]["content"]["parts"][0]["text"] == expected
