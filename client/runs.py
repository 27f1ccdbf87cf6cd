"""Re-runs of datasets, through the gateway's RunService.

`RunClient.rerun` replays every logged request of a dataset against a model (directly
through the gateway, or as one Batch API batch) and returns a `RunOperation`, which follows
the run with the gateway's WatchOperation stream: each change of the run's progress arrives
as it happens. `RunClient.get` reads a finished run with one result per log: the original
answer beside the new one, with their finish reasons, tokens, cost, latency and similarity.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Literal, TypeAlias

import grpc
from google.rpc import status_pb2

from gemini_gateway.client.gateway_client import DEFAULT_TARGET, ProjectClient, model_name
from gemini_gateway.client.logs import dataset_name
from gemini_gateway.generated.gemini.gateway.v1 import operations_pb2 as watch_pb2
from gemini_gateway.generated.gemini.gateway.v1 import operations_pb2_grpc as watch_pb2_grpc
from gemini_gateway.generated.gemini.gateway.v1 import runs_pb2, runs_pb2_grpc
from gemini_gateway.generated.google.ai.generativelanguage.v1beta import (
    content_pb2,
    generative_service_pb2,
)

Run: TypeAlias = runs_pb2.Run
RunResult: TypeAlias = runs_pb2.RunResult
GenerationConfig: TypeAlias = generative_service_pb2.GenerationConfig
Mode = Literal["direct", "batch"]
RunProgress = Callable[[Run], None]

MODES: dict[Mode, runs_pb2.RunMode.ValueType] = {"direct": runs_pb2.DIRECT, "batch": runs_pb2.BATCH}


def run_name(run: str, project: str | None = None) -> str:
    """The full name of a run: `projects/P/datasets/D/runs/R`, or `D/runs/R` (a dataset
    id or name, then the run id) put under `project`."""
    cleaned = run.strip()
    dataset, marker, run_id = cleaned.rpartition("/runs/")
    if not marker or not dataset or not run_id or "/" in run_id:
        raise ValueError(f"{run!r} is not a run: use DATASET/runs/RUN or its full name")
    return f"{dataset_name(dataset, project)}/runs/{run_id}"


def _status_code(code: int) -> grpc.StatusCode:
    return next((s for s in grpc.StatusCode if s.value[0] == code), grpc.StatusCode.UNKNOWN)


class RunFailed(Exception):
    """The run ended with an error (the operation's google.rpc.Status); `run` as last seen."""

    def __init__(self, operation_name: str, status: status_pb2.Status, run: Run) -> None:
        self.operation_name = operation_name
        self.code = _status_code(status.code)
        self.message = status.message
        self.run = run
        super().__init__(f"{operation_name} failed: {self.code.name}: {status.message}")


class RunOperation:
    """The operation of a re-run, as last seen; its metadata is the run as it progresses."""

    def __init__(self, client: RunClient, operation: Any) -> None:
        self._client = client
        self._operation = operation
        self._run = Run()
        self._update(operation)

    def _update(self, operation: Any) -> bool:
        """Keep `operation`; True when the run in it differs from the one seen before."""
        self._operation = operation
        run = Run()
        if operation.done and operation.HasField("response"):
            source = operation.response
        elif operation.HasField("metadata"):
            source = operation.metadata
        else:
            return False
        if not source.Unpack(run):
            raise ValueError(f"{operation.name}: {source.type_url} is not a Run")
        changed = run != self._run
        self._run = run
        return changed

    @property
    def name(self) -> str:
        """The operation's name, which is the run's: `projects/P/datasets/D/runs/R`."""
        return str(self._operation.name)

    @property
    def operation(self) -> Any:
        return self._operation

    @property
    def run(self) -> Run:
        return self._run

    @property
    def done(self) -> bool:
        return bool(self._operation.done)

    async def wait(
        self, timeout: float | None = None, on_progress: RunProgress | None = None
    ) -> Run:
        """Follow WatchOperation until the run ends; the finished run (without results).

        `on_progress` gets the run each time it changes, starting with the state the stream
        opens with. Raises RunFailed when the run ends with an error and TimeoutError after
        `timeout` seconds (the run goes on: read it later with `RunClient.get`).
        """
        if not self.done:
            await self._watch(timeout, on_progress)
        if self._operation.HasField("error"):
            raise RunFailed(self.name, self._operation.error, self._run)
        return self._run

    async def _watch(self, timeout: float | None, on_progress: RunProgress | None) -> None:
        request = watch_pb2.WatchOperationRequest(name=self.name)
        request.poll_interval.FromNanoseconds(int(self._client.poll_interval * 1e9))
        call = self._client.watch.WatchOperation(
            request, metadata=self._client.metadata, timeout=timeout
        )
        first = True
        try:
            async for message in call:
                changed = self._update(message.operation)
                if on_progress is not None and (changed or first):
                    on_progress(self._run)
                first = False
                if self.done:
                    return
        except grpc.aio.AioRpcError as exc:
            if exc.code() == grpc.StatusCode.DEADLINE_EXCEEDED and timeout is not None:
                raise TimeoutError(f"{self.name} not done after {timeout:g} s") from None
            raise
        finally:
            call.cancel()
        raise RuntimeError(f"WatchOperation for {self.name} ended before the run was done")


class RunClient(ProjectClient):
    """Async client of gemini.gateway.v1.RunService; calls raise grpc.aio.AioRpcError.

    Construction is as for `LogClient`; `poll_interval` is how often the gateway looks at a
    run it is watching for this client (seconds, at least 0.1).
    """

    stub_class = runs_pb2_grpc.RunServiceStub
    stub: runs_pb2_grpc.RunServiceAsyncStub

    def __init__(
        self,
        target: str = DEFAULT_TARGET,
        *,
        token: str | None = None,
        api_key: str | None = None,
        root_certificates: bytes | None = None,
        secure: bool = False,
        project: str | None = None,
        channel: grpc.aio.Channel | None = None,
        poll_interval: float = 0.25,
    ) -> None:
        super().__init__(
            target,
            token=token,
            api_key=api_key,
            root_certificates=root_certificates,
            secure=secure,
            project=project,
            channel=channel,
        )
        self.poll_interval = max(poll_interval, 0.1)
        self.watch = watch_pb2_grpc.OperationWatchServiceStub(self.channel)

    def run_name(self, run: str) -> str:
        return run_name(run, self.project)

    async def rerun(
        self,
        dataset: str,
        model: str,
        *,
        mode: Mode = "direct",
        system_instruction: str | None = None,
        generation_config: GenerationConfig | None = None,
        concurrency: int = 0,
        timeout: float | None = None,
    ) -> RunOperation:
        """Start replaying every logged request of `dataset` against `model`.

        `system_instruction` and `generation_config` replace those of every request when
        given; `concurrency` bounds the calls at once in direct mode (the service's default
        when 0). Returns at once: follow the run with `RunOperation.wait`.
        """
        if mode not in MODES:
            raise ValueError(f"mode must be 'direct' or 'batch', not {mode!r}")
        request = runs_pb2.RerunDatasetRequest(
            dataset=dataset_name(dataset, self.project),
            model=model_name(model),
            concurrency=concurrency,
            mode=MODES[mode],
        )
        if system_instruction is not None:
            request.system_instruction.CopyFrom(
                content_pb2.Content(parts=[content_pb2.Part(text=system_instruction)])
            )
        if generation_config is not None:
            request.generation_config.CopyFrom(generation_config)
        operation = await self.stub.RerunDataset(request, metadata=self.metadata, timeout=timeout)
        return RunOperation(self, operation)

    async def get(self, run: str, *, full: bool = True, timeout: float | None = None) -> Run:
        """A run with its summary and, unless `full` is False, one result per log."""
        request = runs_pb2.GetRunRequest(
            name=self.run_name(run),
            view=runs_pb2.RUN_VIEW_FULL if full else runs_pb2.RUN_VIEW_BASIC,
        )
        return await self.stub.GetRun(request, metadata=self.metadata, timeout=timeout)

    async def list(
        self,
        dataset: str,
        *,
        limit: int | None = None,
        page_size: int = 0,
        timeout: float | None = None,
    ) -> list[Run]:
        """The dataset's runs, newest first, with their summaries: every one, or the newest
        `limit`."""
        if limit is not None:
            page_size = min(page_size, limit) if page_size else limit
        request = runs_pb2.ListRunsRequest(
            parent=dataset_name(dataset, self.project), page_size=page_size
        )
        found: list[Run] = []
        while True:
            page = await self.stub.ListRuns(request, metadata=self.metadata, timeout=timeout)
            found.extend(page.runs)
            if not page.next_page_token or (limit is not None and len(found) >= limit):
                return found[:limit]
            request.page_token = page.next_page_token

    async def __aenter__(self) -> RunClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()
