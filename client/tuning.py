"""Tuning through the gateway: load examples, start a job, follow it, manage tuned models.

`TuningClient` wraps ModelService's tuned-model RPCs; `TuningOperation` follows the job's
long-running operation with the gateway's WatchOperation stream, so progress arrives as it
happens instead of by polling GetOperation.
"""

from __future__ import annotations

import csv
import json
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from pathlib import Path
from typing import Any, TypeAlias

import grpc
from google.longrunning import operations_pb2, operations_pb2_grpc
from google.rpc import status_pb2

from gemini_gateway.generated.gemini.gateway.v1 import operations_pb2 as watch_pb2
from gemini_gateway.generated.gemini.gateway.v1 import operations_pb2_grpc as watch_pb2_grpc
from gemini_gateway.generated.google.ai.generativelanguage.v1beta import (
    model_service_pb2,
    model_service_pb2_grpc,
    tuned_model_pb2,
)

TunedModel: TypeAlias = tuned_model_pb2.TunedModel
TuningExample: TypeAlias = tuned_model_pb2.TuningExample
CreateTunedModelMetadata: TypeAlias = model_service_pb2.CreateTunedModelMetadata
Operation: TypeAlias = operations_pb2.Operation

DEFAULT_BASE_MODEL = "models/gemini-1.5-flash-001-tuning"
# Column / key names accepted for the prompt side of an example, in order of preference.
INPUT_KEYS = ("text_input", "textInput", "input")
OUTPUT_KEY = "output"
JSONL_SUFFIXES = {".jsonl", ".ndjson", ".json"}
CSV_SUFFIXES = {".csv"}

ProgressCallback = Callable[[CreateTunedModelMetadata], None]


def tuned_model_name(name: str) -> str:
    """Accept `increment-abc` as well as `tunedModels/increment-abc`."""
    return name if name.startswith("tunedModels/") else f"tunedModels/{name}"


# --- examples -----------------------------------------------------------------------------


def _example(record: dict[str, Any], where: str) -> TuningExample:
    key = next((k for k in INPUT_KEYS if k in record), None)
    if key is None:
        raise ValueError(f"{where}: no input (expected one of {', '.join(INPUT_KEYS)})")
    text_input, output = record[key], record.get(OUTPUT_KEY)
    if not isinstance(text_input, str):
        raise ValueError(f"{where}: {key} must be a string")
    if not text_input.strip():
        raise ValueError(f"{where}: {key} is empty")
    if output is None:
        raise ValueError(f"{where}: missing output")
    if not isinstance(output, str):
        raise ValueError(f"{where}: output must be a string")
    # An empty output would vanish from the proto3 JSON sent upstream and fail there.
    if not output.strip():
        raise ValueError(f"{where}: output is empty")
    return TuningExample(text_input=text_input, output=output)


def _load_jsonl(path: Path) -> list[TuningExample]:
    examples = []
    with path.open(encoding="utf-8-sig") as lines:
        for number, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            where = f"{path}:{number}"
            try:
                record = json.loads(line)
            except json.JSONDecodeError as exc:
                raise ValueError(f"{where}: bad JSON: {exc.msg}") from None
            if not isinstance(record, dict):
                raise ValueError(f"{where}: expected a JSON object")
            examples.append(_example(record, where))
    return examples


def _load_csv(path: Path) -> list[TuningExample]:
    examples = []
    with path.open(encoding="utf-8-sig", newline="") as handle:
        reader = csv.DictReader(handle)
        header = reader.fieldnames or []
        if OUTPUT_KEY not in header or not any(k in header for k in INPUT_KEYS):
            raise ValueError(
                f"{path}:1: the header must name an input column "
                f"({', '.join(INPUT_KEYS)}) and an output column"
            )
        for row in reader:
            # line_num is the physical line the record ended on (quoted fields may span lines).
            where = f"{path}:{reader.line_num}"
            if None in row:
                raise ValueError(f"{where}: more fields than the header has columns")
            examples.append(_example({k: v for k, v in row.items() if v is not None}, where))
    return examples


def load_examples(path: str | Path) -> list[TuningExample]:
    """Read tuning examples from a JSONL or CSV file (chosen by the file's suffix)."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix in JSONL_SUFFIXES:
        examples = _load_jsonl(path)
    elif suffix in CSV_SUFFIXES:
        examples = _load_csv(path)
    else:
        raise ValueError(f"{path}: unknown format; use .jsonl or .csv")
    if not examples:
        raise ValueError(f"{path}: no examples")
    return examples


def build_tuned_model(
    examples: Iterable[TuningExample | tuple[str, str]],
    display_name: str,
    base_model: str = DEFAULT_BASE_MODEL,
    description: str = "",
    epochs: int | None = None,
    batch_size: int | None = None,
    learning_rate: float | None = None,
    learning_rate_multiplier: float | None = None,
    source_model: str | None = None,
) -> TunedModel:
    """The TunedModel for a CreateTunedModel request.

    Hyperparameters left as None are not sent, so the service picks its defaults.
    `source_model` (a tuned model to tune further) replaces `base_model`: they share a oneof.
    """
    if learning_rate is not None and learning_rate_multiplier is not None:
        raise ValueError("give learning_rate or learning_rate_multiplier, not both")
    model = TunedModel(display_name=display_name, description=description)
    if source_model:
        model.tuned_model_source.tuned_model = tuned_model_name(source_model)
    else:
        model.base_model = base_model
    dataset = model.tuning_task.training_data.examples.examples
    for example in examples:
        if isinstance(example, TuningExample):
            dataset.append(example)
        else:
            text_input, output = example
            dataset.add(text_input=text_input, output=output)
    hyperparameters = model.tuning_task.hyperparameters
    if epochs is not None:
        hyperparameters.epoch_count = epochs
    if batch_size is not None:
        hyperparameters.batch_size = batch_size
    if learning_rate is not None:
        hyperparameters.learning_rate = learning_rate
    if learning_rate_multiplier is not None:
        hyperparameters.learning_rate_multiplier = learning_rate_multiplier
    return model


def build_update_request(name: str, **fields: Any) -> model_service_pb2.UpdateTunedModelRequest:
    """An UpdateTunedModelRequest whose update_mask names exactly the fields given.

    None means "not given", so callers can pass every option and let the mask follow.
    Which fields may change is the service's rule; only unknown field names are refused here.
    """
    given = {key: value for key, value in fields.items() if value is not None}
    if not given:
        raise ValueError("nothing to update: give at least one field")
    request = model_service_pb2.UpdateTunedModelRequest()
    request.tuned_model.name = tuned_model_name(name)
    known = TunedModel.DESCRIPTOR.fields_by_name
    for key, value in given.items():
        descriptor = known.get(key)
        if descriptor is None:
            raise ValueError(f"TunedModel has no field {key!r}")
        if descriptor.is_repeated:
            getattr(request.tuned_model, key).extend(value)
        else:
            setattr(request.tuned_model, key, value)
        request.update_mask.paths.append(key)
    return request


# --- operations ---------------------------------------------------------------------------


def _status_code(code: int) -> grpc.StatusCode:
    for status in grpc.StatusCode:
        if status.value[0] == code:
            return status
    return grpc.StatusCode.UNKNOWN


class TuningFailed(Exception):
    """The tuning operation ended with an error (google.rpc.Status)."""

    def __init__(self, operation_name: str, status: status_pb2.Status) -> None:
        self.operation_name = operation_name
        self.status = status
        self.code = _status_code(status.code)
        self.message = status.message
        super().__init__(f"{operation_name} failed: {self.code.name}: {status.message}")


class TuningOperation:
    """A tuning job's long-running operation, as last seen by this client."""

    def __init__(self, client: TuningClient, operation: Operation) -> None:
        self._client = client
        self._operation = operation
        self._metadata = CreateTunedModelMetadata()
        self._update(operation)

    def _update(self, operation: Operation) -> bool:
        """Keep `operation`; True when its metadata differs from what was seen before."""
        self._operation = operation
        if not operation.HasField("metadata"):
            return False
        metadata = CreateTunedModelMetadata()
        if not operation.metadata.Unpack(metadata):
            raise ValueError(
                f"{operation.name}: metadata is {operation.metadata.type_url}, "
                "not CreateTunedModelMetadata"
            )
        changed = metadata != self._metadata
        self._metadata = metadata
        return changed

    @property
    def name(self) -> str:
        return str(self._operation.name)

    @property
    def operation(self) -> Operation:
        return self._operation

    @property
    def metadata(self) -> CreateTunedModelMetadata:
        return self._metadata

    @property
    def tuned_model_name(self) -> str:
        """`tunedModels/{id}`, from the metadata or else from the operation's name."""
        return self._metadata.tuned_model or self.name.partition("/operations/")[0]

    @property
    def done(self) -> bool:
        return bool(self._operation.done)

    async def refresh(self) -> Operation:
        """Read the operation once (Operations.GetOperation)."""
        operation = await self._client.operations.GetOperation(
            operations_pb2.GetOperationRequest(name=self.name), metadata=self._client.metadata
        )
        self._update(operation)
        return operation

    async def cancel(self) -> None:
        """Ask the service to stop the job (Operations.CancelOperation)."""
        await self._client.operations.CancelOperation(
            operations_pb2.CancelOperationRequest(name=self.name), metadata=self._client.metadata
        )

    async def wait(
        self, timeout: float | None = None, on_progress: ProgressCallback | None = None
    ) -> Operation:
        """Follow WatchOperation until the operation is done; TimeoutError after `timeout` s.

        `on_progress` gets the metadata each time it changes, starting with the state the
        stream opens with, so a progress display learns the total number of steps at once.
        """
        if self.done:
            return self._operation
        request = watch_pb2.WatchOperationRequest(name=self.name)
        request.poll_interval.FromNanoseconds(int(self._client.poll_interval * 1e9))
        # The deadline travels to the gateway, which stops polling upstream when it passes.
        call = self._client.watch.WatchOperation(
            request, metadata=self._client.metadata, timeout=timeout
        )
        first = True
        try:
            async for message in call:
                changed = self._update(message.operation)
                if on_progress is not None and (changed or first):
                    on_progress(self._metadata)
                first = False
                if self.done:
                    return self._operation
        except grpc.aio.AioRpcError as exc:
            if exc.code() == grpc.StatusCode.DEADLINE_EXCEEDED and timeout is not None:
                raise TimeoutError(f"{self.name} not done after {timeout:g} s") from None
            raise
        finally:
            call.cancel()
        raise RuntimeError(f"WatchOperation for {self.name} ended before the operation was done")

    async def result(
        self, timeout: float | None = None, on_progress: ProgressCallback | None = None
    ) -> TunedModel:
        """Wait, then return the tuned model; TuningFailed if the job ended with an error."""
        operation = await self.wait(timeout, on_progress)
        if operation.HasField("error"):
            raise TuningFailed(self.name, operation.error)
        model = TunedModel()
        if not operation.response.Unpack(model):
            raise ValueError(
                f"{self.name}: response is {operation.response.type_url}, not TunedModel"
            )
        return model


# --- client -------------------------------------------------------------------------------


class TuningClient:
    """Tuned models and tuning jobs over a gateway channel.

    `metadata` goes with every call; `api_key` is a shortcut for x-goog-api-key. The
    `poll_interval` is how often the gateway re-reads an operation upstream while watching.
    """

    def __init__(
        self,
        channel: grpc.aio.Channel,
        metadata: Sequence[tuple[str, str]] = (),
        *,
        api_key: str | None = None,
        poll_interval: float = 0.5,
    ) -> None:
        self.metadata: tuple[tuple[str, str], ...] = tuple(metadata)
        if api_key:
            self.metadata += (("x-goog-api-key", api_key),)
        self.poll_interval = poll_interval
        self.models = model_service_pb2_grpc.ModelServiceStub(channel)
        self.operations = operations_pb2_grpc.OperationsStub(channel)
        self.watch = watch_pb2_grpc.OperationWatchServiceStub(channel)

    async def create(
        self, tuned_model: TunedModel, tuned_model_id: str | None = None
    ) -> TuningOperation:
        """Start a tuning job (CreateTunedModel); the operation follows it."""
        request = model_service_pb2.CreateTunedModelRequest(tuned_model=tuned_model)
        if tuned_model_id is not None:
            request.tuned_model_id = tuned_model_id
        operation = await self.models.CreateTunedModel(request, metadata=self.metadata)
        return TuningOperation(self, operation)

    async def operation(self, name: str) -> TuningOperation:
        """The operation `tunedModels/{id}/operations/{op}`, read now.

        A tuned model's name (with or without `tunedModels/`) finds that model's operation.
        """
        if "/operations/" not in name:
            listed = await self.operations.ListOperations(
                operations_pb2.ListOperationsRequest(name=tuned_model_name(name)),
                metadata=self.metadata,
            )
            if not listed.operations:
                raise LookupError(f"{tuned_model_name(name)} has no operation")
            return TuningOperation(self, listed.operations[0])
        operation = await self.operations.GetOperation(
            operations_pb2.GetOperationRequest(name=name), metadata=self.metadata
        )
        return TuningOperation(self, operation)

    async def get(self, name: str) -> TunedModel:
        return await self.models.GetTunedModel(
            model_service_pb2.GetTunedModelRequest(name=tuned_model_name(name)),
            metadata=self.metadata,
        )

    async def pages(
        self, filter: str = "", page_size: int = 0
    ) -> AsyncIterator[model_service_pb2.ListTunedModelsResponse]:
        """ListTunedModels page by page; each page is fetched when the previous one is used."""
        page_token = ""
        while True:
            page = await self.models.ListTunedModels(
                model_service_pb2.ListTunedModelsRequest(
                    page_size=page_size, page_token=page_token, filter=filter
                ),
                metadata=self.metadata,
            )
            yield page
            page_token = page.next_page_token
            if not page_token:
                return

    async def list(self, filter: str = "", page_size: int = 0) -> AsyncIterator[TunedModel]:
        """Every tuned model matching `filter`, walking the pages as needed."""
        async for page in self.pages(filter, page_size):
            for model in page.tuned_models:
                yield model

    async def update(self, name: str, **fields: Any) -> TunedModel:
        """Change the fields given (None = leave alone); the update mask names exactly those."""
        return await self.models.UpdateTunedModel(
            build_update_request(name, **fields), metadata=self.metadata
        )

    async def delete(self, name: str) -> None:
        await self.models.DeleteTunedModel(
            model_service_pb2.DeleteTunedModelRequest(name=tuned_model_name(name)),
            metadata=self.metadata,
        )
