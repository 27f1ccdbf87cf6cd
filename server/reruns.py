"""Replaying a dataset's logged requests against a model: the work behind RerunDataset.

Each logged GenerateContentRequest is read back from its log, pointed at the run's model,
given the run's system-instruction / generation-config overrides, labelled
`gateway_run: <run id>` (unless it already holds the 64 labels allowed), and sent:

- DIRECT: through the gateway's own forward path (Forwarder.call on GenerateContent), at most
  `concurrency` calls at once. These are ordinary generate calls of the caller who started the
  run: identified by the caller's metadata (kept in memory for the run's life, never stored),
  metered as usage and logged as the project's logging settings say, like any other call. Each
  answer is stored as soon as it arrives, so a running run shows its progress.
- BATCH: one BatchGenerateContent call with every request inlined (metadata `key` = log id),
  then GetOperation on the `batches/*` operation until it is done, then each inlined response
  stored by its key. The Batch API is not a generate call: the requests are not logged, and
  their usage is metered once the batch is done, at the Batch API's price (batch_usage.py).

A request whose log is gone, or whose answer is an error, gets an error result; the run still
SUCCEEDS. A run FAILS when it cannot go on as a whole: the batch is refused or ends with an
error, or the store fails.

A BATCH run outlives its gateway process once its batch is submitted: the batch goes on
upstream whatever becomes of the process. A gateway that stops hands such runs over instead
of cancelling their batches, and one that dies leaves them behind; either way any gateway on
the store adopts them when their lease has run out (`resume`): it reads the batch's answers
as the run's project (the caller's token is not kept, so it cannot call as the caller), and
ends the run as the first process would have.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Coroutine, Sequence
from dataclasses import dataclass
from typing import Any, cast

import grpc
from google.longrunning import operations_pb2
from google.protobuf import json_format, struct_pb2
from google.protobuf.message import Message

from gemini_gateway.generated.google.ai.generativelanguage.v1beta import (
    content_pb2,
    generative_service_pb2,
)
from gemini_gateway.server import errors
from gemini_gateway.server.batch_usage import BATCH_GENERATE, GET_OPERATION, batch_output
from gemini_gateway.server.forwarder import Forwarder
from gemini_gateway.server.identity import Identity, Metadata
from gemini_gateway.server.labels import MAX_LABELS
from gemini_gateway.server.store import Store
from gemini_gateway.server.store.runs import (
    AdoptedRun,
    CallOutput,
    RerunAnswer,
    RunKey,
    RunMode,
    RunRequest,
    RunState,
    Tokens,
    first_candidate_text,
    record_answers,
    run_requests,
    set_run_state,
    unanswered_log_ids,
)

log = logging.getLogger(__name__)

GENERATE = "/google.ai.generativelanguage.v1beta.GenerativeService/GenerateContent"
CANCEL_OPERATION = "/google.longrunning.Operations/CancelOperation"

DEFAULT_CONCURRENCY = 4
MAX_CONCURRENCY = 64
RUN_LABEL = "gateway_run"
"""Label key every re-run call carries, with the run id as its value (usage by run)."""
ADOPTING_CALLER = "gateway:adopted-run"
"""Caller name of the calls a gateway makes for a run it adopted (as the run's project)."""
IDENTITY_METADATA = frozenset({"authorization", "x-goog-api-key"})
"""The caller's metadata a run keeps (in memory) to make its calls as that caller."""
REQUEST_PAGE = 100
"""Logged requests read from the store at a time (DIRECT)."""

# Batch polling policy: first GetOperation after BATCH_POLL_INITIAL_S, each later one
# BATCH_POLL_MULTIPLIER times later, never more than BATCH_POLL_MAX_S apart. Up to
# BATCH_POLL_RETRIES transient failures in a row are retried; a batch left behind by a
# stopping gateway is cancelled upstream within BATCH_CANCEL_TIMEOUT_S, if at all.
BATCH_POLL_INITIAL_S = 0.25
BATCH_POLL_MULTIPLIER = 1.5
BATCH_POLL_MAX_S = 10.0
BATCH_POLL_RETRIES = 5
BATCH_CANCEL_TIMEOUT_S = 2.0
_TRANSIENT = frozenset(
    {
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        grpc.StatusCode.INTERNAL,
    }
)


class CallContext:
    """What the forwarder reads of a grpc.aio.ServicerContext, for calls a run makes itself.

    The metadata identifies the caller who started the run, unless `identity` is given (an
    adopted run's project); the calls have no deadline of their own (the upstream timeout
    applies) unless `timeout_s` sets one.
    """

    def __init__(
        self,
        metadata: Metadata,
        timeout_s: float | None = None,
        identity: Identity | None = None,
    ) -> None:
        self._metadata = tuple(metadata)
        self._deadline = None if timeout_s is None else time.monotonic() + timeout_s
        self.identity = identity

    def invocation_metadata(self) -> tuple[tuple[str, str | bytes], ...]:
        return self._metadata

    def time_remaining(self) -> float | None:
        return None if self._deadline is None else max(0.0, self._deadline - time.monotonic())

    def peer(self) -> str:
        return "gateway:rerun"


def identity_metadata(metadata: Metadata) -> tuple[tuple[str, str | bytes], ...]:
    """The entries of a call's metadata that say who the caller is (see IDENTITY_METADATA)."""
    return tuple((key, value) for key, value in metadata if key in IDENTITY_METADATA)


class RunFailed(Exception):
    """The run as a whole cannot complete; the message says why."""

    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


@dataclass(frozen=True)
class RunPlan:
    """Everything a run needs to execute, fixed when it is started."""

    key: RunKey
    model: str
    mode: RunMode
    concurrency: int
    system_instruction: content_pb2.Content | None
    generation_config: generative_service_pb2.GenerationConfig | None
    metadata: tuple[tuple[str, str | bytes], ...]
    identity: Identity | None = None  # who its calls are made as, when not by `metadata`

    @property
    def batch_display_name(self) -> str:
        return f"gateway re-run {self.key.run_id} of {self.key.dataset_id}"


def build_request(
    plan: RunPlan, request_json: str
) -> generative_service_pb2.GenerateContentRequest:
    """The logged request as the run sends it; raises json_format.ParseError if unreadable."""
    request = generative_service_pb2.GenerateContentRequest()
    json_format.Parse(request_json, request, ignore_unknown_fields=True)
    request.model = plan.model
    if plan.system_instruction is not None:
        request.system_instruction.CopyFrom(plan.system_instruction)
    if plan.generation_config is not None:
        request.generation_config.CopyFrom(plan.generation_config)
    if RUN_LABEL in request.labels or len(request.labels) < MAX_LABELS:
        request.labels[RUN_LABEL] = plan.key.run_id
    return request


def compact_json(message: Message) -> str:
    return json.dumps(json_format.MessageToDict(message), separators=(",", ":"), ensure_ascii=False)


def answer_from_response(
    log_id: str,
    model: str,
    response: generative_service_pb2.GenerateContentResponse,
    latency_ms: float | None,
) -> RerunAnswer:
    response_json = compact_json(response)
    finish_reason = ""
    if response.candidates:
        finish_reason = generative_service_pb2.Candidate.FinishReason.Name(
            response.candidates[0].finish_reason
        )
        if finish_reason == "FINISH_REASON_UNSPECIFIED":
            finish_reason = ""
    usage = response.usage_metadata
    output = CallOutput(
        model=model,
        text=first_candidate_text(response_json),
        finish_reason=finish_reason,
        tokens=Tokens(
            usage.prompt_token_count,
            usage.candidates_token_count,
            usage.cached_content_token_count,
            usage.thoughts_token_count,
            usage.tool_use_prompt_token_count,
            usage.total_token_count,
        ),
        latency_ms=latency_ms,
    )
    return RerunAnswer(log_id, output, response_json)


def failed_answer(log_id: str, model: str, code: int, message: str) -> RerunAnswer:
    return RerunAnswer(log_id, CallOutput(model=model, error_code=code, error_message=message))


def _unsendable(plan: RunPlan, item: RunRequest) -> RerunAnswer | None:
    """An error answer for a request that cannot be sent at all; None when it can."""
    if item.request_json is None:
        return failed_answer(
            item.log_id,
            plan.model,
            grpc.StatusCode.NOT_FOUND.value[0],
            f"log {item.log_id} was deleted before the run could read its request",
        )
    return None


class RunExecutor:
    """Executes runs: sends the requests and stores the answers and the run's state."""

    def __init__(self, store: Store, forwarder: Forwarder) -> None:
        self._store = store
        self._forwarder = forwarder
        # Set when the gateway stops: a cancelled BATCH run then leaves its batch running
        # upstream, for the gateway that adopts the run.
        self.handing_over = False

    async def _call(self, method: str, request: Message, context: CallContext) -> Message:
        """Forward one call of `method` (a route table key) as the run's caller."""
        route = self._forwarder.routes[method]
        return await self._forwarder.call(
            route, request, cast(grpc.aio.ServicerContext, context), context.identity
        )

    async def execute(self, plan: RunPlan) -> None:
        """Run to the end. Cancellation (the gateway stopping) propagates; whoever cancels
        marks the run failed, or hands it over."""
        await self._conclude(plan, self._start_and_run(plan))

    async def resume(self, run: AdoptedRun) -> None:
        """Finish a BATCH run that another process submitted: wait for its batch, store the
        answers to the requests still unanswered, end the run."""
        identity = Identity(run.key.project, ADOPTING_CALLER)
        plan = RunPlan(
            key=run.key,
            model=run.model,
            mode="batch",
            concurrency=1,
            system_instruction=None,  # the batch was sent with them; only its answers are read
            generation_config=None,
            metadata=(),
            identity=identity,
        )
        await self._conclude(plan, self._read_batch(plan, run.batch))

    async def _start_and_run(self, plan: RunPlan) -> bool:
        if not await set_run_state(self._store, plan.key, "running"):
            return False  # deleted (with its dataset) before it started
        if plan.mode == "batch":
            await self._batch(plan)
        else:
            await self._direct(plan)
        return True

    async def _read_batch(self, plan: RunPlan, name: str) -> bool:
        sent = await unanswered_log_ids(self._store, plan.key)
        context = CallContext(plan.metadata, identity=plan.identity)
        operation = await self._await_batch(operations_pb2.Operation(name=name), plan, context)
        await record_answers(self._store, plan.key, _batch_answers(plan, operation, sent))
        return True

    async def _conclude(self, plan: RunPlan, work: Coroutine[Any, Any, bool]) -> None:
        """Await `work` (False: the run is gone) and end the run as it went."""
        try:
            if not await work:
                return
        except RunFailed as exc:
            await self._end(plan, "failed", exc.code.value[0], exc.message)
        except Exception as exc:  # a store outage, or a bug: the run fails, the gateway goes on
            log.exception("re-run %s failed", plan.key.name)
            await self._end(plan, "failed", grpc.StatusCode.INTERNAL.value[0], _describe(exc))
        else:
            await self._end(plan, "succeeded", 0, "")

    async def _end(self, plan: RunPlan, state: RunState, code: int, message: str) -> None:
        try:
            await set_run_state(
                self._store, plan.key, state, error_code=code, error_message=message
            )
        except Exception:
            log.exception("re-run %s: could not record its end", plan.key.name)

    # --- DIRECT -------------------------------------------------------------------------------

    async def _direct(self, plan: RunPlan) -> None:
        queue: asyncio.Queue[RunRequest | None] = asyncio.Queue(maxsize=2 * plan.concurrency)

        async def read_requests() -> None:
            after = -1
            while True:
                page = await run_requests(
                    self._store, plan.key, after_position=after, limit=REQUEST_PAGE
                )
                for item in page:
                    await queue.put(item)
                if len(page) < REQUEST_PAGE:
                    break
                after = page[-1].position
            for _ in range(plan.concurrency):
                await queue.put(None)

        async def send_requests() -> None:
            while (item := await queue.get()) is not None:
                answer = _unsendable(plan, item) or await self._send(plan, item)
                await record_answers(self._store, plan.key, [answer])

        async with asyncio.TaskGroup() as group:
            group.create_task(read_requests())
            for _ in range(plan.concurrency):
                group.create_task(send_requests())

    async def _send(self, plan: RunPlan, item: RunRequest) -> RerunAnswer:
        assert item.request_json is not None
        try:
            request = build_request(plan, item.request_json)
        except json_format.ParseError as exc:
            return failed_answer(
                item.log_id,
                plan.model,
                grpc.StatusCode.INVALID_ARGUMENT.value[0],
                f"the logged request cannot be read back: {exc}",
            )
        started = time.perf_counter()
        try:
            response = await self._call(GENERATE, request, CallContext(plan.metadata))
        except errors.UpstreamError as exc:
            return failed_answer(item.log_id, plan.model, exc.code.value[0], exc.message)
        except ValueError as exc:  # a request the route table cannot send
            code = grpc.StatusCode.INVALID_ARGUMENT.value[0]
            return failed_answer(item.log_id, plan.model, code, str(exc))
        latency_ms = (time.perf_counter() - started) * 1000
        assert isinstance(response, generative_service_pb2.GenerateContentResponse)
        return answer_from_response(item.log_id, plan.model, response, latency_ms)

    # --- BATCH --------------------------------------------------------------------------------

    async def _all_requests(self, key: RunKey) -> list[RunRequest]:
        requests: list[RunRequest] = []
        while True:
            after = requests[-1].position if requests else -1
            page = await run_requests(self._store, key, after_position=after, limit=REQUEST_PAGE)
            requests.extend(page)
            if len(page) < REQUEST_PAGE:
                return requests

    async def _batch(self, plan: RunPlan) -> None:
        answers: list[RerunAnswer] = []
        inlined: list[generative_service_pb2.InlinedRequest] = []
        sent: list[str] = []
        for item in await self._all_requests(plan.key):
            unsendable = _unsendable(plan, item)
            if unsendable is not None:
                answers.append(unsendable)
                continue
            assert item.request_json is not None
            try:
                request = build_request(plan, item.request_json)
            except json_format.ParseError as exc:
                code = grpc.StatusCode.INVALID_ARGUMENT.value[0]
                message = f"the logged request cannot be read back: {exc}"
                answers.append(failed_answer(item.log_id, plan.model, code, message))
                continue
            request.ClearField("model")  # the batch's model applies
            metadata = struct_pb2.Struct()
            metadata.update({"key": item.log_id})
            inlined.append(
                generative_service_pb2.InlinedRequest(request=request, metadata=metadata)
            )
            sent.append(item.log_id)
        await record_answers(self._store, plan.key, answers)
        if not inlined:
            return

        context = CallContext(plan.metadata, identity=plan.identity)
        batch_request = generative_service_pb2.BatchGenerateContentRequest(
            batch=generative_service_pb2.GenerateContentBatch(
                model=plan.model,
                display_name=plan.batch_display_name,
                input_config=generative_service_pb2.InputConfig(
                    requests=generative_service_pb2.InlinedRequests(requests=inlined)
                ),
            )
        )
        try:
            operation = await self._call(BATCH_GENERATE, batch_request, context)
        except errors.UpstreamError as exc:
            raise RunFailed(exc.code, f"the Batch API refused the batch: {exc.message}") from None
        assert isinstance(operation, operations_pb2.Operation)
        await set_run_state(self._store, plan.key, "running", batch=operation.name)
        operation = await self._await_batch(operation, plan, context)
        await record_answers(self._store, plan.key, _batch_answers(plan, operation, sent))

    async def _await_batch(
        self, operation: operations_pb2.Operation, plan: RunPlan, context: CallContext
    ) -> operations_pb2.Operation:
        """The batch once done. Cancelled, it cancels the batch upstream (nobody would read
        it), unless the gateway is handing the run over."""
        try:
            return await self._wait_for_batch(operation, context)
        except asyncio.CancelledError:
            if not self.handing_over:
                await self._cancel_batch(operation.name, plan)
            raise

    async def _wait_for_batch(
        self, operation: operations_pb2.Operation, context: CallContext
    ) -> operations_pb2.Operation:
        delay = BATCH_POLL_INITIAL_S
        failures = 0
        while not operation.done:
            await asyncio.sleep(delay)
            delay = min(delay * BATCH_POLL_MULTIPLIER, BATCH_POLL_MAX_S)
            request = operations_pb2.GetOperationRequest(name=operation.name)
            try:
                latest = await self._call(GET_OPERATION, request, context)
            except errors.UpstreamError as exc:
                failures += 1
                if exc.code not in _TRANSIENT or failures > BATCH_POLL_RETRIES:
                    raise RunFailed(
                        exc.code, f"batch {operation.name} could not be read: {exc.message}"
                    ) from None
                continue
            failures = 0
            assert isinstance(latest, operations_pb2.Operation)
            operation = latest
        if operation.HasField("error"):
            code = _status_code(operation.error.code)
            raise RunFailed(
                code, f"batch {operation.name} ended with {code.name}: {operation.error.message}"
            )
        return operation

    async def _cancel_batch(self, name: str, plan: RunPlan) -> None:
        """Best effort: a batch nobody will read is not left running upstream."""
        context = CallContext(plan.metadata, BATCH_CANCEL_TIMEOUT_S, plan.identity)
        request = operations_pb2.CancelOperationRequest(name=name)
        try:
            await self._call(CANCEL_OPERATION, request, context)
        except Exception as exc:
            log.warning("re-run %s: could not cancel %s: %s", plan.key.name, name, exc)


def _status_code(number: int) -> grpc.StatusCode:
    for code in grpc.StatusCode:
        if code.value[0] == number:
            return code
    return grpc.StatusCode.UNKNOWN


def _batch_answers(
    plan: RunPlan, operation: operations_pb2.Operation, sent: Sequence[str]
) -> list[RerunAnswer]:
    """One answer per sent log id: by each response's `key`, else by its position."""
    answers: dict[str, RerunAnswer] = {}
    entries = batch_output(operation).inlined_responses.inlined_responses
    for index, entry in enumerate(entries):
        key = entry.metadata.fields.get("key")
        log_id = key.string_value if key is not None else (sent[index] if index < len(sent) else "")
        if log_id not in sent or log_id in answers:
            continue
        if entry.HasField("error"):
            answers[log_id] = failed_answer(
                log_id, plan.model, entry.error.code, entry.error.message
            )
        else:
            answers[log_id] = answer_from_response(log_id, plan.model, entry.response, None)
    for log_id in sent:
        if log_id not in answers:
            answers[log_id] = failed_answer(
                log_id,
                plan.model,
                grpc.StatusCode.INTERNAL.value[0],
                f"batch {operation.name} returned no answer for this request",
            )
    return [answers[log_id] for log_id in sent]


def _describe(exc: BaseException) -> str:
    if isinstance(exc, BaseExceptionGroup):
        exc = exc.exceptions[0]
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
