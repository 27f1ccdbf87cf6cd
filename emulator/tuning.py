"""Tuned models and their tuning operations (ModelService tuning + Operations, v1beta).

A tuning job runs for EmulatorSettings.tuning_seconds of wall-clock time. Nothing runs in
the background: every read computes the job's progress from the time elapsed since
creation, so snapshots, completedSteps and the model state advance on their own.

Defaults follow Google: 5 epochs; datasets of fewer than LARGE_DATASET examples use batch
size 4 and learning rate 0.001, larger ones 16 and 0.0002. Total steps are
ceil(examples * epochs / batch size). An ACTIVE tuned model answers a prompt with the output
of the training example whose input matches it best.
"""

from __future__ import annotations

import difflib
import math
import random
import re
import string
import time
from collections.abc import Mapping
from dataclasses import dataclass
from dataclasses import field as dataclass_field
from datetime import UTC, datetime
from typing import Any

from aiohttp import web

from gemini_gateway.emulator.catalog import find_model, paginate
from gemini_gateway.emulator.errors import RPC_CODE, ApiError, bad_request, invalid_field, not_found
from gemini_gateway.emulator.fields import (
    as_float,
    as_int,
    camel_case,
    field,
    items,
    mapping,
    read_body,
)
from gemini_gateway.emulator.injection import header_plan
from gemini_gateway.emulator.tokens import TOKEN
from gemini_gateway.emulator.wire import json_response

V1BETA = "type.googleapis.com/google.ai.generativelanguage.v1beta."
LARGE_DATASET = 500
DEFAULT_EPOCHS = 5
SMALL_DEFAULTS = {"batchSize": 4, "learningRate": 0.001}
LARGE_DEFAULTS = {"batchSize": 16, "learningRate": 0.0002}
DEFAULT_PAGE_SIZE = 10
MAX_PAGE_SIZE = 1000
MAX_DISPLAY_NAME = 40
ID_PATTERN = re.compile(r"[a-z]([a-z0-9-]{0,38}[a-z0-9])?")
FAILURE_TOKEN = "[[fault:tuning_failed]]"
UPDATABLE = ("displayName", "description", "temperature", "topP", "topK", "readerProjectNumbers")
_SUFFIX_ALPHABET = string.ascii_lowercase + string.digits


def rfc3339(timestamp: float) -> str:
    return datetime.fromtimestamp(timestamp, UTC).isoformat(timespec="microseconds")[:-6] + "Z"


def _tokens(text: str) -> set[str]:
    return {m.group(0).casefold() for m in TOKEN.finditer(text)}


@dataclass
class Progress:
    """A tuning job as seen at one moment."""

    completed_steps: int
    done: bool
    state: str  # CREATING, ACTIVE or FAILED
    finished_at: float | None
    error: dict[str, Any] | None


@dataclass
class TunedModel:
    id: str
    operation_id: str
    display_name: str
    description: str
    base_model: str
    source_model: str | None
    temperature: float
    top_p: float
    top_k: int
    reader_project_numbers: list[str]
    hyperparameters: dict[str, Any]
    examples: list[tuple[str, str]]
    total_steps: int
    example_count: int
    created: float
    duration: float
    fails: bool
    updated: float = 0.0
    cancelled_at: float | None = None
    _words: list[set[str]] = dataclass_field(default_factory=list, repr=False)

    @property
    def name(self) -> str:
        return f"tunedModels/{self.id}"

    @property
    def operation_name(self) -> str:
        return f"{self.name}/operations/{self.operation_id}"

    def _time_of_step(self, step: int) -> float:
        return self.created + self.duration * step / self.total_steps

    def progress(self, now: float) -> Progress:
        end = self.created + (self.duration / 2 if self.fails else self.duration)
        error = None
        if self.fails:
            error = {
                "code": RPC_CODE["INTERNAL"],
                "message": "The tuning job failed (fault injected by tuning_failed).",
            }
        if self.cancelled_at is not None and self.cancelled_at < end:
            end = self.cancelled_at
            error = {"code": RPC_CODE["CANCELLED"], "message": "Operation cancelled."}
        moment = min(now, end)
        if self.duration > 0:
            elapsed = max(0.0, moment - self.created)
            steps = min(self.total_steps, int(self.total_steps * elapsed / self.duration))
        else:
            steps = self.total_steps
        if now < end:
            return Progress(steps, False, "CREATING", None, None)
        return Progress(steps, True, "FAILED" if error else "ACTIVE", end, error)

    def epoch_of(self, step: int) -> int:
        epoch = math.ceil(step * self.hyperparameters["batchSize"] / self.example_count)
        return min(max(epoch, 1), self.hyperparameters["epochCount"])

    def snapshots(self, steps: int) -> list[dict[str, Any]]:
        """One snapshot per completed step; the loss falls steadily as training goes on."""
        return [
            {
                "step": step,
                "epoch": self.epoch_of(step),
                "meanLoss": round(0.05 + 2.5 * math.exp(-4 * step / self.total_steps), 9),
                "computeTime": rfc3339(self._time_of_step(step)),
            }
            for step in range(1, steps + 1)
        ]

    def to_json(self, now: float) -> dict[str, Any]:
        progress = self.progress(now)
        updated = max(self.updated, progress.finished_at or 0.0, self.created)
        body: dict[str, Any] = {"name": self.name}
        if self.source_model:
            body["tunedModelSource"] = {
                "tunedModel": self.source_model,
                "baseModel": self.base_model,
            }
        else:
            body["baseModel"] = self.base_model
        body["displayName"] = self.display_name
        if self.description:
            body["description"] = self.description
        body["state"] = progress.state
        body["createTime"] = rfc3339(self.created)
        body["updateTime"] = rfc3339(updated)
        task: dict[str, Any] = {"startTime": rfc3339(self.created)}
        if progress.done:
            task["completeTime"] = rfc3339(progress.finished_at or now)
        snapshots = self.snapshots(progress.completed_steps)
        if snapshots:
            task["snapshots"] = snapshots
        task["hyperparameters"] = dict(self.hyperparameters)
        body["tuningTask"] = task
        body["temperature"] = self.temperature
        body["topP"] = self.top_p
        body["topK"] = self.top_k
        if self.reader_project_numbers:
            body["readerProjectNumbers"] = list(self.reader_project_numbers)
        return body

    def operation(self, now: float) -> dict[str, Any]:
        progress = self.progress(now)
        metadata: dict[str, Any] = {
            "@type": V1BETA + "CreateTunedModelMetadata",
            "totalSteps": self.total_steps,
        }
        # proto3 JSON leaves zero values and empty lists out.
        if progress.completed_steps:
            metadata["completedSteps"] = progress.completed_steps
            metadata["completedPercent"] = round(
                100 * progress.completed_steps / self.total_steps, 4
            )
            metadata["snapshots"] = self.snapshots(progress.completed_steps)
        metadata["tunedModel"] = self.name
        operation: dict[str, Any] = {"name": self.operation_name, "metadata": metadata}
        if progress.done:
            operation["done"] = True
            if progress.error:
                operation["error"] = progress.error
            else:
                operation["response"] = {"@type": V1BETA + "TunedModel", **self.to_json(now)}
        return operation

    def best_output(self, prompt: str) -> str:
        """The output of the example whose input matches `prompt` best.

        Exact match (ignoring case and surrounding blanks) first; otherwise the highest token
        overlap (Jaccard), ties broken by character similarity, then by example order.
        """
        wanted = prompt.strip().casefold()
        for text_input, output in self.examples:
            if text_input.strip().casefold() == wanted:
                return output
        if not self._words:
            self._words = [_tokens(text_input) for text_input, _ in self.examples]
        prompt_words = _tokens(prompt)

        def score(index: int) -> tuple[float, float, int]:
            words = self._words[index]
            union = words | prompt_words
            overlap = len(words & prompt_words) / len(union) if union else 0.0
            text_input = self.examples[index][0].strip().casefold()
            similarity = difflib.SequenceMatcher(None, text_input, wanted).ratio()
            return overlap, similarity, -index

        best = max(range(len(self.examples)), key=score)
        return self.examples[best][1]


def _examples(body: Mapping[str, Any]) -> list[tuple[str, str]]:
    data = mapping(mapping(body, "tuningTask"), "trainingData")
    entries = items(mapping(data, "examples"), "examples")
    if not entries:
        raise invalid_field(
            "CreateTunedModelRequest",
            "tuned_model.tuning_task.training_data",
            "training_data must hold at least one example",
        )
    examples = []
    for index, entry in enumerate(entries):
        text_input, output = field(entry, "textInput"), field(entry, "output")
        if not isinstance(text_input, str) or not isinstance(output, str):
            raise invalid_field(
                "CreateTunedModelRequest",
                f"tuned_model.tuning_task.training_data.examples.examples[{index}]",
                "every example needs text_input and output strings",
            )
        examples.append((text_input, output))
    return examples


def _hyperparameters(body: Mapping[str, Any], example_count: int) -> dict[str, Any]:
    given = mapping(mapping(body, "tuningTask"), "hyperparameters")
    defaults = LARGE_DEFAULTS if example_count >= LARGE_DATASET else SMALL_DEFAULTS
    epochs = as_int(field(given, "epochCount")) or DEFAULT_EPOCHS
    batch = as_int(field(given, "batchSize")) or defaults["batchSize"]
    if epochs < 1 or batch < 1:
        raise bad_request(
            "epoch_count and batch_size must be positive.",
            [("tuned_model.tuning_task.hyperparameters", "epoch_count and batch_size > 0")],
        )
    result: dict[str, Any] = {}
    multiplier = as_float(field(given, "learningRateMultiplier"))
    rate = as_float(field(given, "learningRate"))
    if multiplier is not None and rate is None:
        result["learningRateMultiplier"] = multiplier
    else:
        result["learningRate"] = rate if rate is not None else defaults["learningRate"]
    result["epochCount"] = epochs
    result["batchSize"] = batch
    return result


def _check_display_name(name: Any) -> str:
    if name is None:
        return ""
    if not isinstance(name, str) or len(name) > MAX_DISPLAY_NAME:
        raise invalid_field(
            "TunedModel",
            "display_name",
            f"display_name must be a string of at most {MAX_DISPLAY_NAME} characters",
        )
    return name


def _reader_projects(value: Any) -> list[str]:
    numbers = [as_int(v) for v in value] if isinstance(value, list) else [None]
    if any(n is None for n in numbers):
        raise invalid_field(
            "TunedModel", "reader_project_numbers", "reader_project_numbers must be integers"
        )
    return [str(n) for n in numbers]


class TuningStore:
    """All tuned models of one emulator, in creation order."""

    def __init__(self, tuning_seconds: float, seed: int) -> None:
        self.tuning_seconds = tuning_seconds
        self.models: dict[str, TunedModel] = {}
        self.rng = random.Random(seed)

    def _suffix(self, length: int) -> str:
        return "".join(self.rng.choice(_SUFFIX_ALPHABET) for _ in range(length))

    def new_id(self, display_name: str) -> str:
        """`Sentence Translator` -> `sentence-translator-u3b7m`; no name -> tunedmodel-xxxxx."""
        words = re.findall(r"[a-z0-9]+", display_name.lower())
        stem = "-".join(words)
        if not stem or not stem[0].isalpha():
            stem = "-".join(["tunedmodel", *words])
        stem = stem[: 40 - 6].rstrip("-")
        while True:
            candidate = f"{stem}-{self._suffix(5)}"
            if candidate not in self.models:
                return candidate

    def get(self, model_id: str) -> TunedModel:
        model = self.models.get(model_id)
        if model is None:
            raise not_found(f"Tuned model tunedModels/{model_id} does not exist.")
        return model

    def create(self, body: Mapping[str, Any], model_id: str | None, fails: bool) -> TunedModel:
        display_name = _check_display_name(field(body, "displayName"))
        description = field(body, "description") or ""
        if not isinstance(description, str):
            raise invalid_field("TunedModel", "description", "description must be a string")
        if model_id is not None:
            if not ID_PATTERN.fullmatch(model_id):
                raise invalid_field(
                    "CreateTunedModelRequest",
                    "tuned_model_id",
                    "tuned_model_id must match [a-z]([a-z0-9-]{0,38}[a-z0-9])?",
                )
            if model_id in self.models:
                raise ApiError("ALREADY_EXISTS", f"Tuned model tunedModels/{model_id} exists.")
        own_examples = _examples(body)

        source_name = field(mapping(body, "tunedModelSource"), "tunedModel")
        base_model = field(body, "baseModel")
        inherited: list[tuple[str, str]] = []
        if source_name:
            source = self.get(str(source_name).removeprefix("tunedModels/"))
            base_model, source_name = source.base_model, source.name
            inherited = source.examples
        elif not isinstance(base_model, str) or not base_model.startswith("models/"):
            raise invalid_field(
                "CreateTunedModelRequest",
                "tuned_model.base_model",
                "base_model (models/...) or tuned_model_source is required",
            )
        catalogued = find_model(base_model) or {}

        hyperparameters = _hyperparameters(body, len(own_examples))
        total_steps = math.ceil(
            len(own_examples) * hyperparameters["epochCount"] / hyperparameters["batchSize"]
        )
        now = time.time()
        model = TunedModel(
            id=model_id or self.new_id(display_name),
            operation_id=self._suffix(12),
            display_name=display_name,
            description=description,
            base_model=base_model,
            source_model=source_name or None,
            temperature=as_float(field(body, "temperature"), catalogued.get("temperature", 1.0)),
            top_p=as_float(field(body, "topP"), catalogued.get("topP", 0.95)),
            top_k=as_int(field(body, "topK"), catalogued.get("topK", 64)),
            reader_project_numbers=_reader_projects(field(body, "readerProjectNumbers", [])),
            hyperparameters=hyperparameters,
            examples=[*inherited, *own_examples],
            total_steps=max(1, total_steps),
            example_count=len(own_examples),
            created=now,
            duration=max(0.0, self.tuning_seconds),
            fails=fails or FAILURE_TOKEN in display_name or FAILURE_TOKEN in description,
            updated=now,
        )
        self.models[model.id] = model
        return model

    def update(self, model_id: str, body: Mapping[str, Any], mask: str | None) -> TunedModel:
        model = self.get(model_id)
        if not mask:
            raise invalid_field("UpdateTunedModelRequest", "update_mask", "update_mask is required")
        paths = [camel_case(p.strip().removeprefix("tuned_model.")) for p in mask.split(",")]
        unknown = [p for p in paths if p and p not in UPDATABLE]
        if unknown:
            raise invalid_field(
                "UpdateTunedModelRequest",
                "update_mask",
                f"field(s) {', '.join(unknown)} cannot be updated; updatable: "
                + ", ".join(UPDATABLE),
            )
        for path in filter(None, paths):
            value = field(body, path)
            if path == "displayName":
                model.display_name = _check_display_name(value)
            elif path == "description":
                model.description = value if isinstance(value, str) else ""
            elif path == "temperature":
                model.temperature = as_float(value, model.temperature)
            elif path == "topP":
                model.top_p = as_float(value, model.top_p)
            elif path == "topK":
                model.top_k = as_int(value, model.top_k)
            elif path == "readerProjectNumbers":
                model.reader_project_numbers = _reader_projects(value or [])
        model.updated = time.time()
        return model

    def answer(self, model_id: str, prompt: str) -> tuple[str, str]:
        """Text and modelVersion of a generate call on tunedModels/{model_id}."""
        model = self.get(model_id)
        progress = model.progress(time.time())
        if progress.state == "CREATING":
            raise ApiError(
                "FAILED_PRECONDITION",
                f"Tuned model {model.name} is not ready: its tuning job is still running.",
            )
        if progress.state == "FAILED":
            raise ApiError(
                "FAILED_PRECONDITION",
                f"Tuned model {model.name} cannot serve: its tuning job failed.",
            )
        return model.best_output(prompt), model.base_model.removeprefix("models/")


TUNING_KEY = web.AppKey("emulator_tuning", TuningStore)


def _store(request: web.Request) -> TuningStore:
    return request.app[TUNING_KEY]


def _matches(model: TunedModel, words: list[str]) -> bool:
    text = f"{model.display_name} {model.description}".casefold()
    return all(word in text for word in words)


async def create_tuned_model(request: web.Request) -> web.Response:
    body = await read_body(request)
    model_id = request.query.get("tunedModelId", request.query.get("tuned_model_id"))
    model = _store(request).create(body, model_id, header_plan(request).tuning_failed)
    return json_response(model.operation(time.time()))


async def list_tuned_models(request: web.Request) -> web.Response:
    # owner:me, readers:everyone and the like are about sharing; every model here is ours.
    raw_filter = request.query.get("filter", "")
    words = [w.casefold() for w in raw_filter.split() if ":" not in w]
    models = [m for m in _store(request).models.values() if _matches(m, words)]
    now = time.time()
    page, token = paginate(
        [m.to_json(now) for m in models], request.query, DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE
    )
    body: dict[str, Any] = {}
    if page:
        body["tunedModels"] = page
    if token:
        body["nextPageToken"] = token
    return json_response(body)


async def get_tuned_model(request: web.Request) -> web.Response:
    model = _store(request).get(request.match_info["model"])
    return json_response(model.to_json(time.time()))


async def update_tuned_model(request: web.Request) -> web.Response:
    body = await read_body(request)
    mask = request.query.get("updateMask", request.query.get("update_mask"))
    model = _store(request).update(request.match_info["model"], body, mask)
    return json_response(model.to_json(time.time()))


async def delete_tuned_model(request: web.Request) -> web.Response:
    store = _store(request)
    store.get(request.match_info["model"])
    del store.models[request.match_info["model"]]
    return json_response({})


def _operation_owner(request: web.Request) -> TunedModel:
    model = _store(request).get(request.match_info["model"])
    if request.match_info["operation"] != model.operation_id:
        raise not_found(
            f"Operation {model.name}/operations/{request.match_info['operation']} not found."
        )
    return model


async def list_operations(request: web.Request) -> web.Response:
    model = _store(request).get(request.match_info["model"])
    return json_response({"operations": [model.operation(time.time())]})


async def get_operation(request: web.Request) -> web.Response:
    return json_response(_operation_owner(request).operation(time.time()))


async def cancel_operation(request: web.Request) -> web.Response:
    """Stop a running job: the model ends FAILED and the operation carries CANCELLED."""
    model = _operation_owner(request)
    now = time.time()
    if not model.progress(now).done:
        model.cancelled_at = now
    return json_response({})


def add_routes(app: web.Application) -> None:
    model = "/v1beta/tunedModels/{model:[^/:]+}"
    app.router.add_post("/v1beta/tunedModels", create_tuned_model)
    app.router.add_get("/v1beta/tunedModels", list_tuned_models)
    app.router.add_get(model, get_tuned_model)
    app.router.add_patch(model, update_tuned_model)
    app.router.add_delete(model, delete_tuned_model)
    app.router.add_get(model + "/operations", list_operations)
    app.router.add_get(model + "/operations/{operation:[^/:]+}", get_operation)
    app.router.add_post(model + "/operations/{operation:[^/:]+}:cancel", cancel_operation)
