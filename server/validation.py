"""Request checks the gateway makes before any upstream call.

Each validator returns every problem it finds as (field path, description); the forwarder
turns a non-empty list into one INVALID_ARGUMENT with a google.rpc.BadRequest naming each
field. Field paths use proto field names, as Google's BadRequest details do.
"""

from __future__ import annotations

import math
import re
from typing import Literal

from google.protobuf.message import Message

from gemini_gateway.generated.google.ai.generativelanguage.v1beta import (
    model_service_pb2,
    tuned_model_pb2,
)

Violations = list[tuple[str, str]]

TUNED_MODEL_ID = re.compile(r"[a-z]([a-z0-9-]{0,38}[a-z0-9])?")
DISPLAY_NAME_MAX = 40
TEMPERATURE_RANGE = (0.0, 2.0)
TOP_P_RANGE = (0.0, 1.0)
# The TunedModel fields UpdateTunedModel may change.
UPDATABLE_TUNED_MODEL_FIELDS = frozenset(
    {"display_name", "description", "temperature", "top_p", "top_k", "reader_project_numbers"}
)


def _sampling(model: tuned_model_pb2.TunedModel, prefix: str, only: set[str] | None) -> Violations:
    """Range checks of the sampling defaults (only the fields in `only`, when given)."""
    problems: Violations = []

    def wanted(name: Literal["temperature", "top_p", "top_k"]) -> bool:
        return model.HasField(name) and (only is None or name in only)

    low, high = TEMPERATURE_RANGE
    if wanted("temperature") and not low <= model.temperature <= high:
        problems.append((f"{prefix}temperature", f"must be between {low} and {high}"))
    low, high = TOP_P_RANGE
    if wanted("top_p") and not low <= model.top_p <= high:
        problems.append((f"{prefix}top_p", f"must be between {low} and {high}"))
    if wanted("top_k") and model.top_k < 0:
        problems.append((f"{prefix}top_k", "must not be negative"))
    if (only is None or "display_name" in only) and len(model.display_name) > DISPLAY_NAME_MAX:
        problems.append((f"{prefix}display_name", f"must be at most {DISPLAY_NAME_MAX} characters"))
    return problems


def _hyperparameters(params: tuned_model_pb2.Hyperparameters, prefix: str) -> Violations:
    problems: Violations = []
    for name in ("learning_rate", "learning_rate_multiplier", "epoch_count", "batch_size"):
        if params.HasField(name):
            value = getattr(params, name)
            if not (value > 0 and math.isfinite(value)):
                problems.append((f"{prefix}{name}", "must be positive"))
    return problems


def _examples(dataset: tuned_model_pb2.Dataset, prefix: str) -> Violations:
    examples = dataset.examples.examples
    if not examples:
        return [(f"{prefix}examples.examples", "at least one training example is required")]
    problems: Violations = []
    input_kinds = set()
    for index, example in enumerate(examples):
        path = f"{prefix}examples.examples[{index}]"
        kind = example.WhichOneof("model_input")
        if kind is None:
            problems.append((f"{path}.text_input", "every example needs an input"))
        else:
            input_kinds.add(kind)
        if not example.output:
            problems.append((f"{path}.output", "every example needs an output"))
    if len(input_kinds) > 1:
        problems.append(
            (f"{prefix}examples.examples", "all examples must use the same kind of input")
        )
    return problems


def create_tuned_model(request: Message) -> Violations:
    assert isinstance(request, model_service_pb2.CreateTunedModelRequest)
    problems: Violations = []
    if request.HasField("tuned_model_id") and not TUNED_MODEL_ID.fullmatch(request.tuned_model_id):
        problems.append(
            (
                "tuned_model_id",
                f"must match {TUNED_MODEL_ID.pattern} (got {request.tuned_model_id!r})",
            )
        )
    model = request.tuned_model
    if model.WhichOneof("source_model") is None:
        problems.append(("tuned_model.base_model", "base_model or tuned_model_source is required"))
    elif model.HasField("tuned_model_source") and not model.tuned_model_source.tuned_model:
        problems.append(
            ("tuned_model.tuned_model_source.tuned_model", "names the tuned model to start from")
        )
    problems += _sampling(model, "tuned_model.", None)
    task = model.tuning_task
    problems += _examples(task.training_data, "tuned_model.tuning_task.training_data.")
    problems += _hyperparameters(task.hyperparameters, "tuned_model.tuning_task.hyperparameters.")
    return problems


def _snake_case(path: str) -> str:
    """Masks may arrive in JSON spelling (displayName) as well as proto spelling."""
    return re.sub(r"(?<!^)(?=[A-Z])", "_", path).lower()


def update_tuned_model(request: Message) -> Violations:
    assert isinstance(request, model_service_pb2.UpdateTunedModelRequest)
    paths = list(request.update_mask.paths)
    if not paths:
        return [("update_mask", "is required: name the fields to update")]
    problems: Violations = []
    named = {_snake_case(path) for path in paths}
    for path in paths:
        if _snake_case(path) not in UPDATABLE_TUNED_MODEL_FIELDS:
            allowed = ", ".join(sorted(UPDATABLE_TUNED_MODEL_FIELDS))
            problems.append(("update_mask", f"{path!r} cannot be updated (updatable: {allowed})"))
    problems += _sampling(request.tuned_model, "tuned_model.", named)
    return problems


VALIDATORS = {
    "google.ai.generativelanguage.v1beta.ModelService.CreateTunedModel": create_tuned_model,
    "google.ai.generativelanguage.v1beta.ModelService.UpdateTunedModel": update_tuned_model,
}
