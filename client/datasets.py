"""Datasets of request logs, through the gateway's DatasetService.

`DatasetClient` creates datasets from log ids or from a ListLogs filter, changes their logs,
exports them as files (CSV, JSONL of the exchanges, the Batch API's input, tuning examples)
and starts tuning jobs on them. Re-runs of a dataset are `RunClient`'s (client/runs.py).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import BinaryIO, Literal, TypeAlias

from gemini_gateway.client.gateway_client import ProjectClient
from gemini_gateway.client.logs import dataset_name, log_name
from gemini_gateway.client.tuning import TunedModel, TuningClient, TuningOperation
from gemini_gateway.generated.gemini.gateway.v1 import datasets_pb2, datasets_pb2_grpc

Dataset: TypeAlias = datasets_pb2.Dataset
ExportFormat = Literal["csv", "jsonl", "batch", "tuning"]

EXPORT_FORMATS: dict[ExportFormat, datasets_pb2.ExportFormat.ValueType] = {
    "csv": datasets_pb2.EXPORT_FORMAT_CSV,
    "jsonl": datasets_pb2.EXPORT_FORMAT_JSONL,
    "batch": datasets_pb2.EXPORT_FORMAT_BATCH,
    "tuning": datasets_pb2.EXPORT_FORMAT_TUNING,
}


@dataclass(frozen=True, slots=True)
class ExportedFile:
    """What an export wrote: the file name and content type the service suggested, and size."""

    file_name: str
    content_type: str
    size: int


@dataclass(frozen=True, slots=True)
class LogChange:
    """What AddLogs or RemoveLogs did: logs added or removed, and the dataset after it."""

    count: int
    dataset: Dataset


class DatasetClient(ProjectClient):
    """Async client of gemini.gateway.v1.DatasetService; calls raise grpc.aio.AioRpcError.

    Datasets are given by id (`my-set`) or name (`projects/search/datasets/my-set`), logs
    by id or name. Construction is as for `LogClient` (target or channel, token, project).
    """

    stub_class = datasets_pb2_grpc.DatasetServiceStub
    stub: datasets_pb2_grpc.DatasetServiceAsyncStub

    def dataset_name(self, dataset: str) -> str:
        """`dataset` (an id or a name) as a name under this client's project."""
        return dataset_name(dataset, self.project)

    def _log_names(self, logs: Sequence[str]) -> list[str]:
        return [log_name(log, self.project) for log in logs]

    async def create(
        self,
        display_name: str,
        *,
        logs: Sequence[str] = (),
        filter: str = "",
        description: str = "",
        dataset_id: str = "",
        timeout: float | None = None,
    ) -> Dataset:
        """A new dataset holding `logs` (ids or names) or every log matching `filter`.

        `dataset_id` becomes the last part of its name; the service makes one up when empty.
        """
        if bool(logs) == bool(filter):
            raise ValueError("give the dataset's logs or a filter (one of them)")
        request = datasets_pb2.CreateDatasetRequest(
            parent=self.parent,
            dataset=Dataset(display_name=display_name, description=description),
            dataset_id=dataset_id,
            log_names=self._log_names(logs),
            filter=filter,
        )
        return await self.stub.CreateDataset(request, metadata=self.metadata, timeout=timeout)

    async def get(self, dataset: str, *, timeout: float | None = None) -> Dataset:
        request = datasets_pb2.GetDatasetRequest(name=self.dataset_name(dataset))
        return await self.stub.GetDataset(request, metadata=self.metadata, timeout=timeout)

    async def list(self, *, page_size: int = 0, timeout: float | None = None) -> list[Dataset]:
        """Every dataset of the project, newest first (all pages)."""
        request = datasets_pb2.ListDatasetsRequest(parent=self.parent, page_size=page_size)
        found: list[Dataset] = []
        while True:
            page = await self.stub.ListDatasets(request, metadata=self.metadata, timeout=timeout)
            found.extend(page.datasets)
            if not page.next_page_token:
                return found
            request.page_token = page.next_page_token

    async def update(
        self,
        dataset: str,
        *,
        display_name: str | None = None,
        description: str | None = None,
        timeout: float | None = None,
    ) -> Dataset:
        """Rename a dataset or change its description (None leaves a field as it is)."""
        request = datasets_pb2.UpdateDatasetRequest(
            dataset=Dataset(name=self.dataset_name(dataset))
        )
        if display_name is not None:
            request.dataset.display_name = display_name
            request.update_mask.paths.append("display_name")
        if description is not None:
            request.dataset.description = description
            request.update_mask.paths.append("description")
        if not request.update_mask.paths:
            raise ValueError("nothing to change: give display_name or description")
        return await self.stub.UpdateDataset(request, metadata=self.metadata, timeout=timeout)

    async def delete(self, dataset: str, *, timeout: float | None = None) -> None:
        """Delete a dataset and its runs; its logs stay."""
        request = datasets_pb2.DeleteDatasetRequest(name=self.dataset_name(dataset))
        await self.stub.DeleteDataset(request, metadata=self.metadata, timeout=timeout)

    async def add_logs(
        self,
        dataset: str,
        logs: Sequence[str] = (),
        *,
        filter: str = "",
        timeout: float | None = None,
    ) -> LogChange:
        """Add logs by id or name, or every log matching `filter`."""
        if bool(logs) == bool(filter):
            raise ValueError("give the logs to add or a filter (one of them)")
        request = datasets_pb2.AddLogsRequest(
            dataset=self.dataset_name(dataset), log_names=self._log_names(logs), filter=filter
        )
        answer = await self.stub.AddLogs(request, metadata=self.metadata, timeout=timeout)
        return LogChange(int(answer.added_count), answer.dataset)

    async def remove_logs(
        self,
        dataset: str,
        logs: Sequence[str] = (),
        *,
        filter: str = "",
        timeout: float | None = None,
    ) -> LogChange:
        """Take logs out of a dataset (the logs themselves stay), by id, name or filter."""
        if bool(logs) == bool(filter):
            raise ValueError("give the logs to remove or a filter (one of them)")
        request = datasets_pb2.RemoveLogsRequest(
            dataset=self.dataset_name(dataset), log_names=self._log_names(logs), filter=filter
        )
        answer = await self.stub.RemoveLogs(request, metadata=self.metadata, timeout=timeout)
        return LogChange(int(answer.removed_count), answer.dataset)

    async def export(
        self, dataset: str, format: ExportFormat, *, timeout: float | None = None
    ) -> AsyncIterator[datasets_pb2.ExportDatasetResponse]:
        """The ExportDataset stream: the first piece names the file and its content type."""
        if format not in EXPORT_FORMATS:
            raise ValueError(f"format must be one of {', '.join(EXPORT_FORMATS)}, not {format!r}")
        request = datasets_pb2.ExportDatasetRequest(
            name=self.dataset_name(dataset), format=EXPORT_FORMATS[format]
        )
        call = self.stub.ExportDataset(request, metadata=self.metadata, timeout=timeout)
        try:
            async for piece in call:
                yield piece
        finally:
            call.cancel()

    async def export_to(
        self,
        dataset: str,
        format: ExportFormat,
        out: BinaryIO,
        *,
        timeout: float | None = None,
    ) -> ExportedFile:
        """Write the exported file to `out` piece by piece, as the pieces arrive."""
        file_name = content_type = ""
        size = 0
        async for piece in self.export(dataset, format, timeout=timeout):
            file_name = file_name or piece.file_name
            content_type = content_type or piece.content_type
            out.write(piece.data)
            size += len(piece.data)
        return ExportedFile(file_name=file_name, content_type=content_type, size=size)

    async def create_tuned_model(
        self,
        dataset: str,
        tuned_model: TunedModel,
        *,
        tuned_model_id: str | None = None,
        timeout: float | None = None,
    ) -> TuningOperation:
        """Start a tuning job on the dataset's logs (their last user turn as input, the
        response text as output); follow it with the TuningOperation returned.

        `tuned_model` gives the base model, display name and hyperparameters (e.g. from
        `build_tuned_model([], ...)`); its training data is filled in from the dataset.
        """
        request = datasets_pb2.CreateTunedModelFromDatasetRequest(
            dataset=self.dataset_name(dataset), tuned_model=tuned_model
        )
        if tuned_model_id:
            request.tuned_model_id = tuned_model_id
        operation = await self.stub.CreateTunedModelFromDataset(
            request, metadata=self.metadata, timeout=timeout
        )
        return TuningOperation(TuningClient(self.channel, self.metadata), operation)

    async def __aenter__(self) -> DatasetClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()
