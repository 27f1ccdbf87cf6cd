"""gemini.gateway.v1.DatasetService: named selections of a project's logs.

Thin, as the other servicers: identify the caller, check the project of every name in the
request, call the dataset store, translate the answer. A caller only ever reaches its own
project's datasets and logs: another project's name is PERMISSION_DENIED, and a dataset id
of another project, looked up in the caller's own, is NOT_FOUND.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager

import grpc
from google.longrunning import operations_pb2
from google.protobuf import empty_pb2

from gemini_gateway.generated.gemini.gateway.v1 import datasets_pb2, datasets_pb2_grpc
from gemini_gateway.generated.google.ai.generativelanguage.v1beta import (
    model_service_pb2,
    tuned_model_pb2,
)
from gemini_gateway.server import errors
from gemini_gateway.server.exports import (
    ExportFormat,
    ExportWriter,
    chunked,
    content_type,
    export_pieces,
    file_name,
    tuning_example,
)
from gemini_gateway.server.filters import FilterError
from gemini_gateway.server.forwarder import Forwarder
from gemini_gateway.server.identity import CallerDirectory, Identity
from gemini_gateway.server.log_event import is_project_id, log_name, parse_log_name
from gemini_gateway.server.store import Store
from gemini_gateway.server.store import datasets as dataset_store
from gemini_gateway.server.store.datasets import (
    DATASET_ID_PATTERN,
    MAX_LOG_IDS,
    DatasetError,
    DatasetExists,
    DatasetNotFound,
    DatasetRecord,
    UnknownLogs,
)

CREATE_TUNED_MODEL = "/google.ai.generativelanguage.v1beta.ModelService/CreateTunedModel"
UPDATABLE_FIELDS = ("display_name", "description")
# Unknown log names an error lists before saying how many more there are.
LISTED_UNKNOWN_LOGS = 5

_FORMATS = {
    datasets_pb2.EXPORT_FORMAT_CSV: ExportFormat.CSV,
    datasets_pb2.EXPORT_FORMAT_JSONL: ExportFormat.JSONL,
    datasets_pb2.EXPORT_FORMAT_BATCH: ExportFormat.BATCH,
    datasets_pb2.EXPORT_FORMAT_TUNING: ExportFormat.TUNING,
}
# The store's names for its inputs -> the request fields they come from.
_REQUEST_FIELDS = {
    "display_name": "dataset.display_name",
    "description": "dataset.description",
    "log_ids": "log_names",
}


def _dataset_message(record: DatasetRecord) -> datasets_pb2.Dataset:
    message = datasets_pb2.Dataset(
        name=record.name,
        display_name=record.display_name,
        description=record.description,
        log_count=record.log_count,
    )
    message.create_time.FromDatetime(record.create_time)
    message.update_time.FromDatetime(record.update_time)
    return message


def _unknown_logs(exc: UnknownLogs) -> errors.UpstreamError:
    listed = ", ".join(
        log_name(exc.project, log_id) for log_id in exc.log_ids[:LISTED_UNKNOWN_LOGS]
    )
    more = len(exc.log_ids) - LISTED_UNKNOWN_LOGS
    if more > 0:
        listed += f" and {more} more"
    return errors.UpstreamError(
        grpc.StatusCode.NOT_FOUND,
        f"{len(exc.log_ids)} of the named logs do not exist in project {exc.project}: {listed}",
    )


@asynccontextmanager
async def _answering(context: grpc.aio.ServicerContext) -> AsyncIterator[None]:
    """End the call with the status the store's error stands for."""
    async with errors.aborting_on_error(context):
        try:
            yield
        except DatasetNotFound as exc:
            raise errors.UpstreamError(grpc.StatusCode.NOT_FOUND, str(exc)) from None
        except DatasetExists as exc:
            raise errors.UpstreamError(grpc.StatusCode.ALREADY_EXISTS, str(exc)) from None
        except UnknownLogs as exc:
            raise _unknown_logs(exc) from None
        except FilterError as exc:
            # FilterError's text already starts with "filter: ".
            raise errors.invalid_argument(
                str(exc).removeprefix("filter: "), field="filter"
            ) from None
        except DatasetError as exc:
            field = _REQUEST_FIELDS.get(exc.field or "", exc.field)
            raise errors.invalid_argument(str(exc), field=field) from None


def _snake_case(path: str) -> str:
    """Masks may arrive in JSON spelling (displayName) as well as proto spelling."""
    return re.sub(r"(?<!^)(?=[A-Z])", "_", path).lower()


class DatasetServicer(datasets_pb2_grpc.DatasetServiceServicer):
    def __init__(self, store: Store, callers: CallerDirectory, forwarder: Forwarder) -> None:
        self._store = store
        self._callers = callers
        self._forwarder = forwarder

    # --- names ---------------------------------------------------------------------------

    def _identity(self, context: grpc.aio.ServicerContext) -> Identity:
        return self._callers.identify(context.invocation_metadata() or ())

    def _own(self, identity: Identity, project: str) -> str:
        """The caller's project, after checking that `project` (or `-`) names it."""
        if project != "-":
            self._callers.check_project(identity, project)
        return identity.project

    def _parent(self, identity: Identity, parent: str) -> str:
        """The project of `projects/{project}`; empty or `projects/-` is the caller's own."""
        if not parent:
            return identity.project
        kind, _, project = parent.partition("/")
        if kind != "projects" or not is_project_id(project):
            raise errors.invalid_argument(
                f"parent must look like projects/{{project}}, got {parent[:100]!r}", field="parent"
            )
        return self._own(identity, project)

    def _dataset(
        self, context: grpc.aio.ServicerContext, name: str, field: str
    ) -> tuple[Identity, str, str]:
        """(caller, project, dataset id) of `projects/{project}/datasets/{dataset}`."""
        identity = self._identity(context)
        parts = name.split("/")
        if (
            len(parts) != 4
            or parts[0] != "projects"
            or parts[2] != "datasets"
            or not is_project_id(parts[1])
            or DATASET_ID_PATTERN.fullmatch(parts[3]) is None
        ):
            raise errors.invalid_argument(
                f"{field} must look like projects/{{project}}/datasets/{{dataset}}, got "
                f"{name[:100]!r}",
                field=field,
            )
        return identity, self._own(identity, parts[1]), parts[3]

    def _log_ids(self, identity: Identity, names: Sequence[str]) -> list[str]:
        """The ids of `projects/{project}/logs/{log}` names, all of the caller's project."""
        if len(names) > MAX_LOG_IDS:
            raise errors.invalid_argument(
                f"{len(names)} log names; at most {MAX_LOG_IDS} per call (use a filter for more)",
                field="log_names",
            )
        ids: list[str] = []
        violations: list[tuple[str, str]] = []
        for index, name in enumerate(names):
            parsed = parse_log_name(name)
            if parsed is None:
                violations.append(
                    (
                        f"log_names[{index}]",
                        f"must look like projects/{{project}}/logs/{{log}}, got {name[:100]!r}",
                    )
                )
                continue
            self._own(identity, parsed[0])
            ids.append(parsed[1])
        if violations:
            raise errors.bad_request(violations)
        return ids

    # --- the methods ---------------------------------------------------------------------

    async def CreateDataset(
        self, request: datasets_pb2.CreateDatasetRequest, context: grpc.aio.ServicerContext
    ) -> datasets_pb2.Dataset:
        async with _answering(context):
            identity = self._identity(context)
            project = self._parent(identity, request.parent)
            record = await dataset_store.create_dataset(
                self._store,
                project,
                display_name=request.dataset.display_name,
                description=request.dataset.description,
                dataset_id=request.dataset_id,
                log_ids=self._log_ids(identity, request.log_names),
                filter_text=request.filter,
            )
            return _dataset_message(record)

    async def GetDataset(
        self, request: datasets_pb2.GetDatasetRequest, context: grpc.aio.ServicerContext
    ) -> datasets_pb2.Dataset:
        async with _answering(context):
            _identity, project, dataset_id = self._dataset(context, request.name, "name")
            record = await dataset_store.get_dataset(self._store, project, dataset_id)
            return _dataset_message(record)

    async def ListDatasets(
        self, request: datasets_pb2.ListDatasetsRequest, context: grpc.aio.ServicerContext
    ) -> datasets_pb2.ListDatasetsResponse:
        async with _answering(context):
            project = self._parent(self._identity(context), request.parent)
            records, next_token = await dataset_store.list_datasets(
                self._store, project, page_size=request.page_size, page_token=request.page_token
            )
            return datasets_pb2.ListDatasetsResponse(
                datasets=[_dataset_message(record) for record in records],
                next_page_token=next_token,
            )

    async def UpdateDataset(
        self, request: datasets_pb2.UpdateDatasetRequest, context: grpc.aio.ServicerContext
    ) -> datasets_pb2.Dataset:
        async with _answering(context):
            dataset = request.dataset
            _identity, project, dataset_id = self._dataset(context, dataset.name, "dataset.name")
            paths = [_snake_case(path) for path in request.update_mask.paths] or list(
                UPDATABLE_FIELDS
            )
            unknown = [path for path in paths if path not in UPDATABLE_FIELDS]
            if unknown:
                raise errors.invalid_argument(
                    f"cannot update {', '.join(unknown)}; updatable: {', '.join(UPDATABLE_FIELDS)}",
                    field="update_mask",
                )
            record = await dataset_store.update_dataset(
                self._store,
                project,
                dataset_id,
                display_name=dataset.display_name if "display_name" in paths else None,
                description=dataset.description if "description" in paths else None,
            )
            return _dataset_message(record)

    async def DeleteDataset(
        self, request: datasets_pb2.DeleteDatasetRequest, context: grpc.aio.ServicerContext
    ) -> empty_pb2.Empty:
        async with _answering(context):
            _identity, project, dataset_id = self._dataset(context, request.name, "name")
            await dataset_store.delete_dataset(self._store, project, dataset_id)
            return empty_pb2.Empty()

    async def AddLogs(
        self, request: datasets_pb2.AddLogsRequest, context: grpc.aio.ServicerContext
    ) -> datasets_pb2.AddLogsResponse:
        async with _answering(context):
            identity, project, dataset_id = self._dataset(context, request.dataset, "dataset")
            added, record = await dataset_store.add_logs(
                self._store,
                project,
                dataset_id,
                log_ids=self._log_ids(identity, request.log_names),
                filter_text=request.filter,
            )
            return datasets_pb2.AddLogsResponse(added_count=added, dataset=_dataset_message(record))

    async def RemoveLogs(
        self, request: datasets_pb2.RemoveLogsRequest, context: grpc.aio.ServicerContext
    ) -> datasets_pb2.RemoveLogsResponse:
        async with _answering(context):
            identity, project, dataset_id = self._dataset(context, request.dataset, "dataset")
            removed, record = await dataset_store.remove_logs(
                self._store,
                project,
                dataset_id,
                log_ids=self._log_ids(identity, request.log_names),
                filter_text=request.filter,
            )
            return datasets_pb2.RemoveLogsResponse(
                removed_count=removed, dataset=_dataset_message(record)
            )

    async def ExportDataset(
        self, request: datasets_pb2.ExportDatasetRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[datasets_pb2.ExportDatasetResponse]:
        async with _answering(context):
            _identity, project, dataset_id = self._dataset(context, request.name, "name")
            export_format = _FORMATS.get(request.format)
            if export_format is None:
                raise errors.invalid_argument(
                    "choose a format: EXPORT_FORMAT_CSV, _JSONL, _BATCH or _TUNING",
                    field="format",
                )
            # A missing dataset ends the call before anything is sent.
            await dataset_store.get_dataset(self._store, project, dataset_id)
            yield datasets_pb2.ExportDatasetResponse(
                file_name=file_name(dataset_id, export_format),
                content_type=content_type(export_format),
            )
            writer = ExportWriter(export_format)
            logs = dataset_store.iter_dataset_logs(self._store, project, dataset_id)
            async for chunk in chunked(export_pieces(writer, logs)):
                yield datasets_pb2.ExportDatasetResponse(data=chunk)
            # How many logs the file holds and how many the format left out.
            context.set_trailing_metadata(
                (
                    ("gateway-export-rows", str(writer.rows)),
                    ("gateway-export-skipped", str(writer.skipped)),
                )
            )

    async def CreateTunedModelFromDataset(
        self,
        request: datasets_pb2.CreateTunedModelFromDatasetRequest,
        context: grpc.aio.ServicerContext,
    ) -> operations_pb2.Operation:
        async with _answering(context):
            _identity, project, dataset_id = self._dataset(context, request.dataset, "dataset")
            if not request.HasField("tuned_model"):
                raise errors.invalid_argument(
                    "tuned_model is required (base_model, display_name, hyperparameters)",
                    field="tuned_model",
                )
            examples: list[tuned_model_pb2.TuningExample] = []
            left_out = 0
            async for log in dataset_store.iter_dataset_logs(self._store, project, dataset_id):
                example = tuning_example(log)
                if example is None:
                    left_out += 1
                else:
                    examples.append(example)
            if not examples:
                raise errors.UpstreamError(
                    grpc.StatusCode.FAILED_PRECONDITION,
                    f"dataset projects/{project}/datasets/{dataset_id} has no log usable as a "
                    f"tuning example ({left_out} logs; each needs a successful call with text "
                    "in its last user turn and in its response)",
                )
            tuned_model = tuned_model_pb2.TunedModel()
            tuned_model.CopyFrom(request.tuned_model)
            tuned_model.tuning_task.training_data.Clear()
            tuned_model.tuning_task.training_data.examples.examples.extend(examples)
            create = model_service_pb2.CreateTunedModelRequest(tuned_model=tuned_model)
            if request.tuned_model_id:
                create.tuned_model_id = request.tuned_model_id
            route = self._forwarder.routes[CREATE_TUNED_MODEL]
            operation = await self._forwarder.call(route, create, context)
            assert isinstance(operation, operations_pb2.Operation)
            return operation
