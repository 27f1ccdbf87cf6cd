"""The Batch API: models.batchGenerateContent and the batches/* operations (v1beta).

A batch of inlined GenerateContent requests runs for `batch_seconds` of wall-clock time.
Nothing runs in the background: every read works out where the batch is from the time
elapsed since creation, as tuning does. The batch is PENDING for the first PENDING_SHARE of
its time, then RUNNING, answering its requests one after another at even intervals, and
SUCCEEDED at the end. A request is answered (by the same generation as :generateContent, so
the same request gets the same answer) the first time a read finds its moment passed; the
requests a cancelled batch never reached are never run.

The operation is named `batches/{id}`; its metadata is the batch (`@type ...v1main.
GenerateContentBatch`, int64 counts as strings, zero counts left out). When done it carries
`"done": true` and either `response` (`@type ...v1main.GenerateContentBatchOutput`, holding
`inlinedResponses.inlinedResponses[i]` = `{"response": ...}` or `{"error": Status}` plus the
request's `metadata`, in input order) or `error` (a cancelled or failed batch); the metadata
then also holds the `output` and `endTime`.
"""

from __future__ import annotations

import random
import string
import time
from collections.abc import Mapping
from dataclasses import dataclass
from dataclasses import field as dataclass_field
from typing import Any

from aiohttp import web

from gemini_gateway.emulator.catalog import (
    decode_page_token,
    encode_page_token,
    find_model,
    page_size,
    supports,
    thinking_spec,
)
from gemini_gateway.emulator.errors import (
    RPC_CODE,
    ApiError,
    detail,
    fault_error,
    invalid_field,
    model_not_found,
    not_found,
)
from gemini_gateway.emulator.faults import FaultPlan
from gemini_gateway.emulator.fields import as_int, field, items, mapping, read_body
from gemini_gateway.emulator.generation import build_answer, read_prompt
from gemini_gateway.emulator.injection import checked_plan, settings_plan
from gemini_gateway.emulator.known_fields import unknown_field_sentence, unknown_fields
from gemini_gateway.emulator.settings import SETTINGS_KEY
from gemini_gateway.emulator.tuning import rfc3339
from gemini_gateway.emulator.wire import json_response
from gemini_gateway.generated.google.ai.generativelanguage.v1beta import generative_service_pb2

# Google names the batch messages in an internal package that its public protos lack.
V1MAIN = "type.googleapis.com/google.ai.generativelanguage.v1main."
PENDING_SHARE = 0.2
"""Share of a batch's time spent PENDING before it starts answering."""
DEFAULT_PAGE_SIZE = 10
MAX_PAGE_SIZE = 1000
FAILURE_TOKEN = "[[fault:batch_failed]]"
"""In a batch's display name: the batch fails as a whole when it would start running."""
ID_LENGTH = 40
_ID_ALPHABET = string.ascii_lowercase + string.digits
_REQUEST_TYPE = "BatchGenerateContentRequest"
_BATCH_REQUEST = generative_service_pb2.DESCRIPTOR.message_types_by_name[_REQUEST_TYPE]
_REQUESTS_FIELD = "batch.input_config.requests.requests"

PENDING, RUNNING = "BATCH_STATE_PENDING", "BATCH_STATE_RUNNING"
SUCCEEDED, FAILED, CANCELLED = (
    "BATCH_STATE_SUCCEEDED",
    "BATCH_STATE_FAILED",
    "BATCH_STATE_CANCELLED",
)


def status_json(error: ApiError) -> dict[str, Any]:
    """google.rpc.Status as proto3 JSON (the code is the google.rpc.Code number)."""
    status: dict[str, Any] = {"code": RPC_CODE.get(error.status, RPC_CODE["UNKNOWN"])}
    status["message"] = error.message
    if error.details:
        status["details"] = error.details
    return status


@dataclass
class InlinedRequest:
    body: Mapping[str, Any]
    metadata: Mapping[str, Any] | None


@dataclass
class Batch:
    """One batch: its requests, its timing and the answers produced so far."""

    id: str
    model_id: str
    display_name: str
    priority: int
    requests: list[InlinedRequest]
    created: float
    duration: float
    seed: int
    faults: FaultPlan
    fails: bool
    cancelled_at: float | None = None
    answers: dict[int, dict[str, Any]] = dataclass_field(default_factory=dict)

    @property
    def name(self) -> str:
        return f"batches/{self.id}"

    @property
    def start(self) -> float:
        return self.created + self.duration * PENDING_SHARE

    def _answered_at(self, index: int) -> float:
        share = PENDING_SHARE + (1 - PENDING_SHARE) * (index + 1) / len(self.requests)
        return self.created + self.duration * share

    def end(self) -> float:
        """When the batch ends (or ended): at the end of its time, on failure or on cancel."""
        end = self.start if self.fails else self.created + self.duration
        if self.cancelled_at is not None:
            end = min(end, self.cancelled_at)
        return end

    def state(self, now: float) -> str:
        end = self.end()
        if now >= end:
            if self.cancelled_at is not None and self.cancelled_at <= end:
                return CANCELLED
            return FAILED if self.fails else SUCCEEDED
        return PENDING if now < self.start else RUNNING

    def answered_count(self, now: float) -> int:
        if self.fails:
            return 0  # it fails before it answers anything
        moment = min(now, self.end())
        return sum(1 for i in range(len(self.requests)) if self._answered_at(i) <= moment)

    def _answer(self, index: int) -> dict[str, Any]:
        """The inlined response for request `index`, generated once."""
        if index not in self.answers:
            self.answers[index] = self._generate(self.requests[index].body)
        return self.answers[index]

    def _generate(self, body: Mapping[str, Any]) -> dict[str, Any]:
        try:
            prompt = read_prompt(body)
            # A magic fault token fails this request only, as would the settings' fault list.
            plan = checked_plan(",".join(prompt.magic), "magic token in the prompt")
            plan = plan.then(self.faults)
            if plan.error_code is not None:
                raise fault_error(plan.error_code, self.model_id)
            answer = build_answer(
                body, prompt, self.model_id, self.seed, thinking=thinking_spec(self.model_id)
            )
        except ApiError as exc:
            return {"error": status_json(exc)}
        return {"response": answer.response()}

    def _inlined_responses(self, count: int) -> list[dict[str, Any]]:
        responses = []
        for index in range(count):
            entry = dict(self._answer(index))
            metadata = self.requests[index].metadata
            if metadata is not None:
                entry["metadata"] = metadata
            responses.append(entry)
        return responses

    def _update_time(self, now: float) -> float:
        """The last moment something changed: creation, start, an answer or the end."""
        moments = [self.created]
        if now >= self.start and (self.cancelled_at is None or self.cancelled_at >= self.start):
            moments.append(self.start)
        answered = self.answered_count(now)
        if answered:
            moments.append(self._answered_at(answered - 1))
        if now >= self.end():
            moments.append(self.end())
        return max(moments)

    def operation(self, now: float) -> dict[str, Any]:
        state = self.state(now)
        done = state in (SUCCEEDED, FAILED, CANCELLED)
        answered = self.answered_count(now)
        inlined = self._inlined_responses(answered)
        failed = sum(1 for entry in inlined if "error" in entry)
        output = {"inlinedResponses": {"inlinedResponses": inlined}} if inlined else {}

        metadata: dict[str, Any] = {"@type": V1MAIN + "GenerateContentBatch"}
        metadata["model"] = f"models/{self.model_id}"
        if self.display_name:
            metadata["displayName"] = self.display_name
        if done and output:
            metadata["output"] = output
        metadata["createTime"] = rfc3339(self.created)
        if done:
            metadata["endTime"] = rfc3339(self.end())
        metadata["updateTime"] = rfc3339(self._update_time(now))
        counts = {
            "requestCount": len(self.requests),
            "successfulRequestCount": answered - failed,
            "failedRequestCount": failed,
            "pendingRequestCount": len(self.requests) - answered,
        }
        # proto3 JSON: int64 as strings, zero values left out.
        metadata["batchStats"] = {key: str(value) for key, value in counts.items() if value}
        metadata["state"] = state
        metadata["name"] = self.name
        if self.priority:
            metadata["priority"] = str(self.priority)

        operation: dict[str, Any] = {"name": self.name, "metadata": metadata}
        if not done:
            return operation
        operation["done"] = True
        if state == SUCCEEDED:
            operation["response"] = {"@type": V1MAIN + "GenerateContentBatchOutput", **output}
        elif state == CANCELLED:
            operation["error"] = {"code": RPC_CODE["CANCELLED"], "message": "Batch cancelled."}
        else:
            operation["error"] = {
                "code": RPC_CODE["INTERNAL"],
                "message": "The batch failed (fault injected by batch_failed).",
            }
        return operation


def _check_known_fields(body: Mapping[str, Any]) -> None:
    """Google's 400 for fields BatchGenerateContentRequest lacks (see known_fields)."""
    found = unknown_fields(body, _BATCH_REQUEST)
    if not found:
        return
    sentences = [unknown_field_sentence(path, name) for path, name in found]
    violations = [
        {**({"field": path} if path else {}), "description": sentence}
        for (path, _), sentence in zip(found, sentences, strict=True)
    ]
    raise ApiError(
        "INVALID_ARGUMENT", "\n".join(sentences), [detail("BadRequest", fieldViolations=violations)]
    )


def _inlined_requests(batch: Mapping[str, Any]) -> list[InlinedRequest]:
    config = field(batch, "inputConfig")
    if not isinstance(config, Mapping):
        raise invalid_field(_REQUEST_TYPE, "batch.input_config", "input_config is required")
    if field(config, "fileName") is not None:
        raise invalid_field(
            _REQUEST_TYPE,
            "batch.input_config.file_name",
            "the emulator runs inlined requests only (input_config.requests)",
        )
    entries = items(mapping(config, "requests"), "requests")
    if not entries:
        raise invalid_field(
            _REQUEST_TYPE, _REQUESTS_FIELD, "requests must hold at least one request"
        )
    requests = []
    for index, entry in enumerate(entries):
        body = field(entry, "request")
        if not isinstance(body, Mapping):
            raise invalid_field(
                _REQUEST_TYPE, f"{_REQUESTS_FIELD}[{index}].request", "request is required"
            )
        metadata = field(entry, "metadata")
        if metadata is not None and not isinstance(metadata, Mapping):
            raise invalid_field(
                _REQUEST_TYPE, f"{_REQUESTS_FIELD}[{index}].metadata", "metadata must be an object"
            )
        requests.append(InlinedRequest(body, metadata))
    return requests


class BatchStore:
    """All batches of one emulator, by id."""

    def __init__(self, batch_seconds: float, seed: int) -> None:
        self.seconds = batch_seconds
        self.seed = seed
        self.batches: dict[str, Batch] = {}
        self._rng = random.Random(seed)

    def _new_id(self) -> str:
        while True:
            candidate = "".join(self._rng.choice(_ID_ALPHABET) for _ in range(ID_LENGTH))
            if candidate not in self.batches:
                return candidate

    def create(self, model_id: str, body: Mapping[str, Any], faults: FaultPlan) -> Batch:
        batch = field(body, "batch")
        if not isinstance(batch, Mapping):
            raise invalid_field(_REQUEST_TYPE, "batch", "batch is required")
        display_name = field(batch, "displayName", "")
        if not isinstance(display_name, str):
            raise invalid_field(
                _REQUEST_TYPE, "batch.display_name", "display_name must be a string"
            )
        raw_priority = field(batch, "priority")
        priority = as_int(raw_priority, 0) if raw_priority is not None else 0
        if raw_priority is not None and as_int(raw_priority) is None:
            raise invalid_field(_REQUEST_TYPE, "batch.priority", "priority must be an integer")
        created = Batch(
            id=self._new_id(),
            model_id=model_id,
            display_name=display_name,
            priority=priority,
            requests=_inlined_requests(batch),
            created=time.time(),
            duration=max(0.0, self.seconds),
            seed=self.seed,
            faults=faults,
            fails=FAILURE_TOKEN in display_name,
        )
        self.batches[created.id] = created
        return created

    def get(self, batch_id: str) -> Batch:
        batch = self.batches.get(batch_id)
        if batch is None:
            raise not_found(f"Batch batches/{batch_id} not found.")
        return batch


BATCHES_KEY = web.AppKey("emulator_batches", BatchStore)


def _store(request: web.Request) -> BatchStore:
    return request.app[BATCHES_KEY]


async def batch_generate_content(request: web.Request) -> web.Response:
    body = await read_body(request)
    # Google parses the body (refusing unknown fields) before it looks the model up.
    if request.app[SETTINGS_KEY].strict_fields:
        _check_known_fields(body)
    model_id = request.match_info["model"]
    model = find_model(model_id)
    if model is None or not supports(model, "batchGenerateContent"):
        raise model_not_found(model_id, "v1beta", "batchGenerateContent")
    batch = _store(request).create(model_id, body, settings_plan(request))
    return json_response(batch.operation(time.time()))


async def get_batch(request: web.Request) -> web.Response:
    batch = _store(request).get(request.match_info["batch"])
    return json_response(batch.operation(time.time()))


async def cancel_batch(request: web.Request) -> web.Response:
    """Stop a batch: requests not yet answered are never run. A finished batch is left as is."""
    batch = _store(request).get(request.match_info["batch"])
    now = time.time()
    if now < batch.end():
        batch.cancelled_at = now
    return json_response({})


async def delete_batch(request: web.Request) -> web.Response:
    store = _store(request)
    store.get(request.match_info["batch"])
    del store.batches[request.match_info["batch"]]
    return json_response({})


async def list_batches(request: web.Request) -> web.Response:
    """ListOperations on `batches`: newest first, pageSize default 10, at most 1000."""
    newest_first = sorted(_store(request).batches.values(), key=lambda b: b.created, reverse=True)
    size = page_size(request.query, DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE)
    offset = decode_page_token(request.query.get("pageToken", request.query.get("page_token", "")))
    now = time.time()
    body: dict[str, Any] = {}
    page = newest_first[offset : offset + size]
    if page:
        body["operations"] = [batch.operation(now) for batch in page]
    if offset + size < len(newest_first):
        body["nextPageToken"] = encode_page_token(offset + size)
    return json_response(body)


def add_routes(app: web.Application) -> None:
    batch = "/v1beta/batches/{batch:[^/:]+}"
    app.router.add_post(
        "/v1beta/models/{model:[^/:]+}:batchGenerateContent", batch_generate_content
    )
    app.router.add_get("/v1beta/batches", list_batches)
    app.router.add_get(batch, get_batch)
    app.router.add_delete(batch, delete_batch)
    app.router.add_post(batch + ":cancel", cancel_batch)
