"""gemini.gateway.v1.RunService: re-runs of a project's datasets, and their operations.

Thin: identify the caller, check the project, validate the request, create the run in the
store and hand it to a background task (reruns.RunExecutor), translate records to messages.
A caller reaches only its own project's runs (`projects/-` stands for it).

A run is also a google.longrunning Operation named after it: `operation()` answers
WaitOperation / WatchOperation for such names (server/operations.py). Its metadata is the Run
(BASIC view) as it progresses; when done, `response` holds the finished Run (BASIC view too:
GetRun gives the results) or `error` says why it FAILED.

Runs are tasks of this process. While a run goes on, this process extends its lease in the
store every quarter of `RUN_LEASE_S`. `stop()` cancels the runs still going, before the store
closes: a BATCH run whose batch was submitted is handed over (its lease ended at once, its
batch left running upstream); every other run is marked FAILED (UNAVAILABLE). At start and at
each renewal, every replica sweeps the runs whose lease has run out (handed over, or left by a
process that died): it adopts the BATCH runs with a submitted batch, reading their answers
(reruns.RunExecutor.resume), and fails the others (FAILED, UNAVAILABLE). A run of this
process that another replica ended meanwhile (its lease lapsed while the store was out of
reach), or that was deleted, is cancelled here.
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import Coroutine
from datetime import datetime, timedelta
from typing import Any

import grpc
from google.longrunning import operations_pb2
from google.protobuf import duration_pb2, json_format, timestamp_pb2
from google.rpc import status_pb2

from gemini_gateway.generated.gemini.gateway.v1 import runs_pb2, runs_pb2_grpc, usage_pb2
from gemini_gateway.generated.google.ai.generativelanguage.v1beta import (
    content_pb2,
    generative_service_pb2,
)
from gemini_gateway.server import errors
from gemini_gateway.server.forwarder import Forwarder
from gemini_gateway.server.identity import CallerDirectory, Identity
from gemini_gateway.server.log_event import is_project_id, log_name
from gemini_gateway.server.pricing import PriceTable
from gemini_gateway.server.reruns import (
    DEFAULT_CONCURRENCY,
    MAX_CONCURRENCY,
    RunExecutor,
    RunPlan,
    compact_json,
    identity_metadata,
)
from gemini_gateway.server.store import Store
from gemini_gateway.server.store.engine import describe_error
from gemini_gateway.server.store.runs import (
    MAX_PAGE_SIZE,
    RUN_LEASE_S,
    CallOutput,
    EmptyDataset,
    NoSuchDataset,
    RunKey,
    RunMode,
    RunRecord,
    RunSummary,
    Tokens,
    adopt_batch_runs,
    create_run,
    dataset_exists,
    fail_abandoned_runs,
    get_run,
    hand_over_batch_runs,
    list_runs,
    renew_run_leases,
    set_run_state,
)

log = logging.getLogger(__name__)

MODEL_PATTERN = re.compile(r"(models|tunedModels)/[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
STOPPED_MESSAGE = "the gateway stopped before the run finished; start the run again"
_MODES: dict[int, RunMode] = {
    runs_pb2.RUN_MODE_UNSPECIFIED: "direct",
    runs_pb2.DIRECT: "direct",
    runs_pb2.BATCH: "batch",
}
_MODE_ENUM = {"direct": runs_pb2.DIRECT, "batch": runs_pb2.BATCH}
_STATE_ENUM = {
    "pending": runs_pb2.PENDING,
    "running": runs_pb2.RUNNING,
    "succeeded": runs_pb2.SUCCEEDED,
    "failed": runs_pb2.FAILED,
}


# --- names ------------------------------------------------------------------------------------


def _split(name: str, kinds: tuple[str, ...]) -> list[str] | None:
    """The ids of `projects/{p}/<kind>/{id}/...` when `name` has exactly these kinds."""
    parts = name.split("/")
    if len(parts) != 2 * len(kinds) or parts[0::2] != list(kinds):
        return None
    ids = parts[1::2]
    if not is_project_id(ids[0]) or not all(ids[1:]):
        return None
    return ids


def parse_run_name(name: str) -> tuple[str, str, str] | None:
    """(project, dataset, run) of `projects/{p}/datasets/{d}/runs/{r}`; None otherwise."""
    ids = _split(name, ("projects", "datasets", "runs"))
    return (ids[0], ids[1], ids[2]) if ids else None


def _own_project(callers: CallerDirectory, identity: Identity, project: str) -> str:
    """The caller's project, when `project` names it (or is `-`); else PERMISSION_DENIED."""
    if project != "-":
        callers.check_project(identity, project)
    return identity.project


# --- messages ---------------------------------------------------------------------------------


def _timestamp(value: datetime) -> timestamp_pb2.Timestamp:
    stamp = timestamp_pb2.Timestamp()
    stamp.FromDatetime(value)
    return stamp


def _duration(ms: float) -> duration_pb2.Duration:
    duration = duration_pb2.Duration()
    duration.FromTimedelta(timedelta(milliseconds=ms))
    return duration


def _tokens(tokens: Tokens) -> usage_pb2.TokenCounts:
    return usage_pb2.TokenCounts(
        prompt=tokens.prompt,
        candidates=tokens.candidates,
        cached=tokens.cached,
        thoughts=tokens.thoughts,
        tool_use=tokens.tool_use,
        total=tokens.total,
    )


def _output(output: CallOutput, cost: float) -> runs_pb2.RunOutput:
    message = runs_pb2.RunOutput(
        text=output.text,
        finish_reason=output.finish_reason,
        tokens=_tokens(output.tokens),
        estimated_cost=cost,
        model=output.model,
    )
    if output.latency_ms is not None:
        message.latency.CopyFrom(_duration(output.latency_ms))
    if output.failed:
        message.error.CopyFrom(
            status_pb2.Status(code=output.error_code, message=output.error_message)
        )
    return message


def _summary(summary: RunSummary) -> runs_pb2.RunSummary:
    message = runs_pb2.RunSummary(
        request_count=summary.request_count,
        completed_count=summary.completed_count,
        failed_count=summary.failed_count,
        same_text_count=summary.same_text_count,
        mean_text_similarity=summary.mean_text_similarity,
        original_tokens=_tokens(summary.original_tokens),
        rerun_tokens=_tokens(summary.rerun_tokens),
        original_cost=summary.original_cost,
        rerun_cost=summary.rerun_cost,
    )
    if summary.original_latency_p50_ms is not None:
        message.original_latency_p50.CopyFrom(_duration(summary.original_latency_p50_ms))
    if summary.rerun_latency_p50_ms is not None:
        message.rerun_latency_p50.CopyFrom(_duration(summary.rerun_latency_p50_ms))
    return message


def run_message(run: RunRecord) -> runs_pb2.Run:
    """The Run of a record; with `results` when the record was read in full."""
    message = runs_pb2.Run(
        name=run.key.name,
        model=run.model,
        mode=_MODE_ENUM[run.mode],
        state=_STATE_ENUM[run.state],
        batch=run.batch,
        summary=_summary(run.summary),
    )
    message.create_time.CopyFrom(_timestamp(run.create_time))
    if run.end_time is not None:
        message.end_time.CopyFrom(_timestamp(run.end_time))
    if run.system_instruction_json:
        json_format.Parse(
            run.system_instruction_json, message.system_instruction, ignore_unknown_fields=True
        )
    if run.generation_config_json:
        json_format.Parse(
            run.generation_config_json, message.generation_config, ignore_unknown_fields=True
        )
    if run.state == "failed":
        message.error.CopyFrom(
            status_pb2.Status(
                code=run.error_code or grpc.StatusCode.UNKNOWN.value[0],
                message=run.error_message,
            )
        )
    for result in run.results or ():
        entry = message.results.add(
            log=log_name(run.key.project, result.log_id),
            original=_output(result.original, result.original_cost),
            same_text=result.same_text,
            text_similarity=result.text_similarity,
        )
        if result.rerun is not None:
            entry.rerun.CopyFrom(_output(result.rerun, result.rerun_cost))
        if result.response_json:
            json_format.Parse(result.response_json, entry.response, ignore_unknown_fields=True)
    return message


def run_operation(run: RunRecord) -> operations_pb2.Operation:
    """The run as a google.longrunning Operation."""
    message = run_message(run)
    operation = operations_pb2.Operation(name=run.key.name, done=run.done)
    operation.metadata.Pack(message)
    if run.state == "succeeded":
        operation.response.Pack(message)
    elif run.state == "failed":
        operation.error.CopyFrom(message.error)
    return operation


# --- validation -------------------------------------------------------------------------------


def _mode(request: runs_pb2.RerunDatasetRequest) -> RunMode:
    mode = _MODES.get(request.mode)
    if mode is None:
        raise errors.invalid_argument(f"unknown mode {request.mode}", field="mode")
    return mode


def _model(request: runs_pb2.RerunDatasetRequest, mode: RunMode) -> str:
    model = request.model
    if not model:
        raise errors.invalid_argument(
            "model is required, e.g. models/gemini-2.5-flash", field="model"
        )
    if not MODEL_PATTERN.fullmatch(model):
        raise errors.invalid_argument(
            f"model must look like models/{{model}} or tunedModels/{{model}}, got {model[:100]!r}",
            field="model",
        )
    if mode == "batch" and not model.startswith("models/"):
        raise errors.invalid_argument(
            "the Batch API runs models/* only; re-run a tuned model in DIRECT mode", field="model"
        )
    return model


def _concurrency(request: runs_pb2.RerunDatasetRequest) -> int:
    if not 0 <= request.concurrency <= MAX_CONCURRENCY:
        raise errors.invalid_argument(
            f"concurrency must be between 0 (the default, {DEFAULT_CONCURRENCY}) and "
            f"{MAX_CONCURRENCY}, got {request.concurrency}",
            field="concurrency",
        )
    return request.concurrency or DEFAULT_CONCURRENCY


class RunServicer(runs_pb2_grpc.RunServiceServicer):
    def __init__(
        self,
        store: Store,
        callers: CallerDirectory,
        forwarder: Forwarder,
        prices: PriceTable,
        *,
        lease_s: float | None = None,
    ) -> None:
        self._store = store
        self._callers = callers
        self._prices = prices
        self._executor = RunExecutor(store, forwarder)
        self._tasks: dict[RunKey, asyncio.Task[None]] = {}
        self._stopping = False
        self._lease_s = RUN_LEASE_S if lease_s is None else lease_s
        self._upkeep: asyncio.Task[None] | None = None

    async def start(self) -> None:
        """Sweep the runs left by processes that stopped or died, then keep this process's
        runs leased and sweep again at each renewal."""
        await self._sweep()
        self._upkeep = asyncio.get_running_loop().create_task(
            self._keep_leases(), name="run-leases"
        )

    async def _keep_leases(self) -> None:
        while True:
            await asyncio.sleep(self._lease_s / 4)
            if self._tasks:
                await self._renew()
            await self._sweep()

    async def _renew(self) -> None:
        try:
            gone = await renew_run_leases(self._store, list(self._tasks), lease_s=self._lease_s)
        except Exception as exc:  # the store is out of reach: try again at the next round
            log.warning("could not extend the leases of the runs: %s", describe_error(exc))
            return
        for key in gone:  # ended by another replica, or deleted: stop sending its requests
            task = self._tasks.get(key)
            if task is not None and not task.done():
                log.warning("run %s was ended elsewhere; stopping it here", key.name)
                task.cancel()

    async def _sweep(self) -> None:
        """Adopt the lapsed BATCH runs whose batch was submitted; fail the other lapsed runs."""
        try:
            adopted = await adopt_batch_runs(self._store, lease_s=self._lease_s)
        except Exception as exc:
            log.warning("could not look for runs to adopt: %s", describe_error(exc))
            adopted = []
        for run in adopted:
            if run.key in self._tasks:
                continue  # this process's own, whose lease lapsed while the store was away
            log.info("adopted run %s: reading its batch %s", run.key.name, run.batch)
            self._track(run.key, self._executor.resume(run))
        try:
            failed = await fail_abandoned_runs(self._store)
        except Exception as exc:
            log.warning("could not look for abandoned runs: %s", describe_error(exc))
            return
        for key in failed:
            log.warning(
                "run %s was left unfinished by a gateway process that stopped; it is FAILED",
                key.name,
            )

    def _identity(self, context: grpc.aio.ServicerContext) -> Identity:
        return self._callers.identify(context.invocation_metadata() or ())

    def _dataset(self, identity: Identity, name: str, field: str) -> tuple[str, str]:
        """(project, dataset id) of `projects/{p}/datasets/{d}`, the project the caller's."""
        ids = _split(name, ("projects", "datasets"))
        if ids is None:
            raise errors.invalid_argument(
                f"{field} must look like projects/{{project}}/datasets/{{dataset}}, "
                f"got {name[:100]!r}",
                field=field,
            )
        return _own_project(self._callers, identity, ids[0]), ids[1]

    def _run_key(self, identity: Identity, name: str) -> RunKey:
        parsed = parse_run_name(name)
        if parsed is None:
            raise errors.invalid_argument(
                "name must look like projects/{project}/datasets/{dataset}/runs/{run}, "
                f"got {name[:100]!r}",
                field="name",
            )
        project, dataset_id, run_id = parsed
        return RunKey(_own_project(self._callers, identity, project), dataset_id, run_id)

    async def _read(self, key: RunKey, full: bool) -> RunRecord:
        run = await get_run(self._store, key, self._prices, full=full)
        if run is None:
            raise errors.UpstreamError(grpc.StatusCode.NOT_FOUND, f"run {key.name} does not exist")
        return run

    # --- RunService ---------------------------------------------------------------------------

    async def RerunDataset(
        self, request: runs_pb2.RerunDatasetRequest, context: grpc.aio.ServicerContext
    ) -> operations_pb2.Operation:
        async with errors.aborting_on_error(context):
            identity = self._identity(context)
            project, dataset_id = self._dataset(identity, request.dataset, "dataset")
            mode = _mode(request)
            model = _model(request, mode)
            concurrency = _concurrency(request)
            system_instruction = None
            if request.HasField("system_instruction"):
                system_instruction = content_pb2.Content()
                system_instruction.CopyFrom(request.system_instruction)
            generation_config = None
            if request.HasField("generation_config"):
                generation_config = generative_service_pb2.GenerationConfig()
                generation_config.CopyFrom(request.generation_config)
            if self._stopping:
                raise errors.UpstreamError(
                    grpc.StatusCode.UNAVAILABLE, "the gateway is stopping; start the run later"
                )
            try:
                run = await create_run(
                    self._store,
                    project,
                    dataset_id,
                    model=model,
                    mode=mode,
                    concurrency=concurrency,
                    system_instruction_json=compact_json(system_instruction)
                    if system_instruction is not None
                    else "",
                    generation_config_json=compact_json(generation_config)
                    if generation_config is not None
                    else "",
                    prices=self._prices,
                    lease_s=self._lease_s,
                )
            except NoSuchDataset as exc:
                raise errors.UpstreamError(grpc.StatusCode.NOT_FOUND, str(exc)) from None
            except EmptyDataset as exc:
                raise errors.UpstreamError(grpc.StatusCode.FAILED_PRECONDITION, str(exc)) from None
            self._start(
                RunPlan(
                    key=run.key,
                    model=model,
                    mode=mode,
                    concurrency=concurrency,
                    system_instruction=system_instruction,
                    generation_config=generation_config,
                    metadata=identity_metadata(context.invocation_metadata() or ()),
                )
            )
            return run_operation(run)

    async def GetRun(
        self, request: runs_pb2.GetRunRequest, context: grpc.aio.ServicerContext
    ) -> runs_pb2.Run:
        async with errors.aborting_on_error(context):
            key = self._run_key(self._identity(context), request.name)
            if request.view not in (
                runs_pb2.RUN_VIEW_UNSPECIFIED,
                runs_pb2.RUN_VIEW_BASIC,
                runs_pb2.RUN_VIEW_FULL,
            ):
                raise errors.invalid_argument(f"unknown view {request.view}", field="view")
            full = request.view != runs_pb2.RUN_VIEW_BASIC
            return run_message(await self._read(key, full))

    async def ListRuns(
        self, request: runs_pb2.ListRunsRequest, context: grpc.aio.ServicerContext
    ) -> runs_pb2.ListRunsResponse:
        async with errors.aborting_on_error(context):
            project, dataset_id = self._dataset(self._identity(context), request.parent, "parent")
            if request.page_size < 0:
                raise errors.invalid_argument("page_size must not be negative", field="page_size")
            if not await dataset_exists(self._store, project, dataset_id):
                raise errors.UpstreamError(
                    grpc.StatusCode.NOT_FOUND,
                    f"dataset projects/{project}/datasets/{dataset_id} does not exist",
                )
            try:
                runs, token = await list_runs(
                    self._store,
                    project,
                    dataset_id,
                    self._prices,
                    page_size=min(request.page_size, MAX_PAGE_SIZE),
                    page_token=request.page_token,
                )
            except ValueError as exc:
                raise errors.invalid_argument(str(exc), field="page_token") from None
            return runs_pb2.ListRunsResponse(
                runs=[run_message(run) for run in runs], next_page_token=token
            )

    # --- operations and the run tasks ---------------------------------------------------------

    async def operation(self, name: str, identity: Identity) -> operations_pb2.Operation | None:
        """The operation of the run `name` names; None when `name` is not a run's name.

        Raises UpstreamError: PERMISSION_DENIED for another project's run, NOT_FOUND.
        """
        parsed = parse_run_name(name)
        if parsed is None:
            return None
        project, dataset_id, run_id = parsed
        key = RunKey(_own_project(self._callers, identity, project), dataset_id, run_id)
        return run_operation(await self._read(key, full=False))

    def _start(self, plan: RunPlan) -> None:
        self._track(plan.key, self._executor.execute(plan))

    def _track(self, key: RunKey, work: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(work, name=f"rerun {key.name}")
        self._tasks[key] = task
        task.add_done_callback(lambda _: self._tasks.pop(key, None))

    async def stop(self) -> None:
        """Cancel the runs still going; hand over the BATCH runs whose batch was submitted
        and mark the others FAILED. Call before the store closes."""
        self._stopping = True
        self._executor.handing_over = True
        upkeep, self._upkeep = self._upkeep, None
        if upkeep is not None:
            upkeep.cancel()
            await asyncio.gather(upkeep, return_exceptions=True)
        running = list(self._tasks.items())
        for _, task in running:
            task.cancel()
        await asyncio.gather(*(task for _, task in running), return_exceptions=True)
        try:
            handed = set(await hand_over_batch_runs(self._store, [key for key, _ in running]))
        except Exception:
            log.exception("could not hand over the interrupted batch runs")
            handed = set()
        for key in handed:
            log.info("run %s handed over: its batch goes on upstream", key.name)
        for key, _ in running:
            if key in handed:
                continue
            try:
                await set_run_state(
                    self._store,
                    key,
                    "failed",
                    error_code=grpc.StatusCode.UNAVAILABLE.value[0],
                    error_message=STOPPED_MESSAGE,
                )
            except Exception:
                log.exception("could not mark the interrupted run %s failed", key.name)
