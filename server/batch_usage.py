"""Usage of the Batch API: each batch's requests are metered once, when the batch is done.

A batch is not a generate call: BatchGenerateContent answers at once with an operation, and
the tokens are known only from the answers, hours later. So:

- When BatchGenerateContent is called, each inlined request gets its labels as a generate
  call does (the caller's defaults under its own, validated by the same rules, sent
  upstream); `BatchUsage.created` then keeps who submitted the batch and each request's model
  and labels in `batch_meters` (the answers carry neither).
- Whenever an answer passing through the gateway shows a batch done (GetOperation,
  ListOperations on `batches`, a dataset re-run waiting for its batch), `BatchUsage.seen`
  writes one usage row per answered request (method `BatchGenerateContent`, `batch` true,
  so it is priced at the Batch API's discount), in the transaction that marks the batch
  metered: each batch is metered once, whichever replica sees it done first.

A batch nobody reads is read by the sweeper (batch_sweeper.py) once it has ended. Not
metered: batches whose answers are in a file (`responsesFile`; file input), batches
submitted before this gateway version or with usage recording off, and batches deleted
upstream before anyone read them done. Each is counted in
`gateway_batches_seen_total{outcome}`.
"""

from __future__ import annotations

import logging
import time
from collections import OrderedDict
from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any, cast

import grpc
import sqlalchemy as sa
from google.longrunning import operations_pb2
from google.protobuf.message import Message
from prometheus_client import Counter

from gemini_gateway.generated.google.ai.generativelanguage.v1beta import generative_service_pb2
from gemini_gateway.server import errors
from gemini_gateway.server.identity import Identity
from gemini_gateway.server.labels import LabelError, LabelSet
from gemini_gateway.server.metering import UsageMetrics
from gemini_gateway.server.recorder import UsageEvent
from gemini_gateway.server.store.engine import Store
from gemini_gateway.server.store.models import BatchMeter
from gemini_gateway.server.store.usage import write_usage_batch
from gemini_gateway.server.tenancy import LIST_OPERATIONS

log = logging.getLogger(__name__)

BATCH_GENERATE = "/google.ai.generativelanguage.v1beta.GenerativeService/BatchGenerateContent"
GET_OPERATION = "/google.longrunning.Operations/GetOperation"
# The calls whose answers BatchUsage looks at.
BATCH_METHODS = frozenset({BATCH_GENERATE, GET_OPERATION, LIST_OPERATIONS})
METHOD = "BatchGenerateContent"
BATCH_PREFIX = "batches/"
# Where an inlined request sits in a BatchGenerateContentRequest, for error field paths.
REQUESTS_PATH = "batch.input_config.requests.requests"
# Names of batches this process saw done (metered, or not to be): later reads of the same
# batch skip the store. Bounded; a name that falls out costs one more store read.
REMEMBERED = 10_000
SETTLED_KEPT = timedelta(days=7)
"""How long a settled batch (metered, answered in a file, or gone) stays in `batch_meters`:
its row only tells a later read that it is settled, which the caller of a week-old batch no
longer needs. So the table holds about a week of batches."""
FORGET_EVERY_S = 3600.0

SEEN = Counter(
    "gateway_batches_seen",
    "Batches seen done by outcome: metered (its usage written here), already_metered, "
    "file_output (answers in a file, not metered), unknown (not submitted through this "
    "gateway version or with recording off), gone (deleted upstream before it was metered), "
    "or error (the store failed; tried again at the next read).",
    ["outcome"],
)

_meters = cast(sa.Table, BatchMeter.__table__)
# gRPC code number -> name, for a request of the batch that failed (google.rpc.Status.code).
_CODE_NAMES = {code.value[0]: code.name for code in grpc.StatusCode}


def batch_output(
    operation: operations_pb2.Operation,
) -> generative_service_pb2.GenerateContentBatchOutput:
    """A done batch's output: the operation's response, else the output in its metadata (a
    cancelled batch answers with an error, its metadata holding what was answered)."""
    output = generative_service_pb2.GenerateContentBatchOutput()
    if operation.response.Unpack(output):
        return output
    batch = generative_service_pb2.GenerateContentBatch()
    if operation.metadata.Unpack(batch):
        return batch.output
    return output


def label_inlined_requests(
    request: generative_service_pb2.BatchGenerateContentRequest,
    defaults: Mapping[str, str],
    strip: bool,
    body: dict[str, Any] | None,
) -> None:
    """Give each inlined request its labels as a generate call gets them: the caller's
    defaults under its own, validated as one set (INVALID_ARGUMENT naming each bad label).

    The merged labels are written into the request, and into the JSON `body` to be sent,
    unless `strip` (upstreams that refuse the field), which drops them from `body` only.
    """
    inlined = request.batch.input_config.requests.requests
    violations: list[tuple[str, str]] = []
    merged: list[LabelSet] = []
    for index, item in enumerate(inlined):
        own = item.request.labels
        try:
            merged.append(LabelSet.merged(defaults, own))
        except LabelError as exc:
            prefix = f"{REQUESTS_PATH}[{index}].request."
            violations += [(prefix + field, text) for field, text in exc.violations]
    if violations:
        raise errors.bad_request(violations)
    sent = _inlined_bodies(body)
    for index, (item, labels) in enumerate(zip(inlined, merged, strict=True)):
        if len(labels) != len(item.request.labels):
            item.request.labels.update(labels.as_dict())
        target = sent[index] if index < len(sent) else None
        if target is not None:
            if strip:
                target.pop("labels", None)
            elif labels:
                target["labels"] = labels.as_dict()


def _inlined_bodies(body: dict[str, Any] | None) -> list[dict[str, Any] | None]:
    """The inlined requests' JSON objects within a BatchGenerateContent body, by position
    (None where one is missing, e.g. an empty request)."""
    try:
        items = body["batch"]["inputConfig"]["requests"]["requests"]  # type: ignore[index]
    except (KeyError, TypeError):
        return []
    requests = [item.get("request") if isinstance(item, dict) else None for item in items]
    return [r if isinstance(r, dict) else None for r in requests]


def request_kinds(request: generative_service_pb2.BatchGenerateContentRequest) -> dict[str, Any]:
    """Each inlined request's model and labels, compactly: the distinct (model, labels) kinds
    and, unless all share the first, each request's kind."""
    batch = request.batch
    kinds: list[list[Any]] = []
    index_of: dict[tuple[str, tuple[tuple[str, str], ...]], int] = {}
    kind_of: list[int] = []
    for item in batch.input_config.requests.requests:
        model = item.request.model or batch.model
        labels = tuple(sorted(item.request.labels.items()))
        key = (model, labels)
        index = index_of.get(key)
        if index is None:
            index = index_of[key] = len(kinds)
            kinds.append([model, dict(labels)])
        kind_of.append(index)
    if not kinds:
        kinds.append([batch.model, {}])
    return {"kinds": kinds, "kind_of": [] if max(kind_of, default=0) == 0 else kind_of}


def usage_events(
    requests: Mapping[str, Any],
    project: str,
    caller: str,
    operation: operations_pb2.Operation,
    when: datetime,
) -> list[UsageEvent]:
    """One usage event per answered request of a done batch, in input order."""
    kinds: Sequence[Sequence[Any]] = requests["kinds"]
    kind_of: Sequence[int] = requests["kind_of"]
    events = []
    answers = batch_output(operation).inlined_responses.inlined_responses
    for index, answer in enumerate(answers):
        kind = kind_of[index] if index < len(kind_of) else 0
        model, labels = kinds[kind] if kind < len(kinds) else kinds[0]
        status = "OK"
        usage = None
        if answer.HasField("error"):
            status = _CODE_NAMES.get(answer.error.code, "UNKNOWN")
        elif answer.response.HasField("usage_metadata"):
            usage = answer.response.usage_metadata
        events.append(
            UsageEvent(
                time=when,
                project=project,
                caller=caller,
                model=model,
                method=METHOD,
                labels=labels,
                status=status,
                prompt_tokens=usage.prompt_token_count if usage else 0,
                candidates_tokens=usage.candidates_token_count if usage else 0,
                cached_tokens=usage.cached_content_token_count if usage else 0,
                thoughts_tokens=usage.thoughts_token_count if usage else 0,
                tool_use_tokens=usage.tool_use_prompt_token_count if usage else 0,
                total_tokens=usage.total_token_count if usage else 0,
                latency_ms=0.0,
                first_chunk_ms=None,
                incomplete=False,
                batch=True,
            )
        )
    return events


def _end_time(operation: operations_pb2.Operation) -> datetime:
    """When the batch ended (its metadata's end time), else now: the hour it is billed in."""
    batch = generative_service_pb2.GenerateContentBatch()
    if operation.metadata.Unpack(batch) and batch.HasField("end_time"):
        return batch.end_time.ToDatetime(tzinfo=UTC)
    return datetime.now(UTC)


def done_batches(method: str, response: Message) -> list[operations_pb2.Operation]:
    """The done batch operations in an answer of `method` (none for other methods)."""
    operations: Iterable[Any] = ()
    if method in (GET_OPERATION, BATCH_GENERATE):
        operations = (response,)
    elif method == LIST_OPERATIONS:
        operations = getattr(response, "operations", ())
    return [
        op
        for op in operations
        if isinstance(op, operations_pb2.Operation) and op.done and op.name.startswith(BATCH_PREFIX)
    ]


class BatchUsage:
    """Keeps the batches this gateway submits and meters each once it is seen done."""

    def __init__(self, store: Store, metrics: UsageMetrics) -> None:
        self._store = store
        self._metrics = metrics
        self._settled: OrderedDict[str, None] = OrderedDict()
        self._next_forget = 0.0  # time.monotonic() of the next deletion of settled batches

    async def created(
        self,
        identity: Identity,
        request: generative_service_pb2.BatchGenerateContentRequest,
        operation: Message,
    ) -> None:
        """Keep the batch a BatchGenerateContent call made, to meter it when done.

        A failure is logged, not answered: the batch exists upstream whatever the store says
        (it then goes unmetered, as `unknown`).
        """
        name = getattr(operation, "name", "")
        if not name.startswith(BATCH_PREFIX):
            return
        now = datetime.now(UTC)
        row = {
            "name": name,
            "project": identity.project,
            "caller": identity.caller,
            "requests": request_kinds(request),
            "create_time": now,
            "metered_time": None,
        }
        try:
            async with self._store.begin() as conn:
                await conn.execute(sa.insert(_meters).values(**row))
        except Exception:
            log.exception("could not keep batch %s for metering", name)
            return
        # The table grows only here, so this is where it is kept short: at most hourly, in
        # every mode (the sweeper does not run in pass-through mode or with interval 0).
        if time.monotonic() >= self._next_forget:
            self._next_forget = time.monotonic() + FORGET_EVERY_S
            try:
                await forget_settled(self._store, now - SETTLED_KEPT)
            except Exception:
                log.exception("could not delete the batches settled long ago")
        if isinstance(operation, operations_pb2.Operation) and operation.done:
            await self.seen(BATCH_GENERATE, operation)

    async def seen(self, method: str, response: Message) -> None:
        """Meter every done batch in an answer of `method` not metered yet. Never raises."""
        for operation in done_batches(method, response):
            if operation.name in self._settled:
                continue
            try:
                outcome = await self._meter(operation)
            except Exception:
                log.exception("could not meter batch %s", operation.name)
                outcome = "error"
            SEEN.labels(outcome).inc()
            if outcome != "error":
                self._settled[operation.name] = None
                if len(self._settled) > REMEMBERED:
                    self._settled.popitem(last=False)

    async def _meter(self, operation: operations_pb2.Operation) -> str:
        output = batch_output(operation)
        now = datetime.now(UTC)
        if output.WhichOneof("output") == "responses_file":
            # Not metered, but settled: the sweeper would otherwise read it every round.
            await settle(self._store, operation.name, now)
            return "file_output"
        async with self._store.begin() as conn:
            # The claim: only the transaction that sets metered_time writes the usage.
            claimed = (
                await conn.execute(
                    sa.update(_meters)
                    .where(_meters.c.name == operation.name, _meters.c.metered_time.is_(None))
                    .values(metered_time=now)
                    .returning(_meters.c.project, _meters.c.caller, _meters.c.requests)
                )
            ).first()
            if claimed is None:
                known = await conn.scalar(
                    sa.select(sa.func.count()).where(_meters.c.name == operation.name)
                )
                return "already_metered" if known else "unknown"
            events = usage_events(
                claimed.requests, claimed.project, claimed.caller, operation, _end_time(operation)
            )
            await write_usage_batch(conn, events)
        for event in events:
            self._metrics.observe(event)
        return "metered"


async def settle(store: Store, name: str, now: datetime) -> bool:
    """Mark the batch `name` settled without usage (answered in a file, or gone upstream);
    False if it was not waiting (unknown, or settled already)."""
    async with store.begin() as conn:
        marked = await conn.execute(
            sa.update(_meters)
            .where(_meters.c.name == name, _meters.c.metered_time.is_(None))
            .values(metered_time=now)
        )
    return bool(marked.rowcount)


async def forget_settled(store: Store, before: datetime) -> int:
    """Delete the batches settled before `before`; how many.

    A batch read again after this is `unknown`, and still not metered twice.
    """
    async with store.begin() as conn:
        deleted = await conn.execute(sa.delete(_meters).where(_meters.c.metered_time < before))
    return int(deleted.rowcount or 0)
