"""Re-runs of datasets in the store: runs, their results, and the summaries read from them.

A run is one `dataset_runs` row and one `run_results` row per logged request of the dataset
when the run was created. Each result copies the original call's figures from its log at
creation (model, text of the first candidate, finish reason, tokens, latency, error), so a run
still reads the same after the log has expired or been deleted; the re-run's side is filled in
as each answer arrives, which is what makes a running run's progress visible.

Costs are not stored: they are computed with the price table at read time (as for usage), so a
corrected table re-prices past runs. Summaries are computed from the results when a run is
read: a run holds at most the logs of one dataset.

Every function takes the project the caller may act in; another project's runs are simply
not found.
"""

from __future__ import annotations

import difflib
import json
import os
import statistics
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Literal, cast

import grpc
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from gemini_gateway.server.pricing import LONG_PROMPT_TOKENS, PriceTable, TokenSums
from gemini_gateway.server.store.engine import Store
from gemini_gateway.server.store.log_tables import (
    DatasetLog,
    DatasetRow,
    DatasetRun,
    RequestLog,
    RunResultRow,
)
from gemini_gateway.server.store.logs import stored_message_json
from gemini_gateway.server.store.page_tokens import decode_page_token, encode_page_token

RunMode = Literal["direct", "batch"]
RunState = Literal["pending", "running", "succeeded", "failed"]
UNFINISHED: tuple[RunState, ...] = ("pending", "running")
# A run is executed by the gateway process that created it, which extends the run's lease
# while it goes on (services/runs.py, every quarter of this). An unfinished run whose lease
# has run out was left by a process that died without ending it: any replica fails it.
RUN_LEASE_S = 60.0
ABANDONED_MESSAGE = (
    "the gateway process running it stopped without ending it (its lease ran out); "
    "start the run again"
)
DEFAULT_PAGE_SIZE = 50
MAX_PAGE_SIZE = 1000
# Rows per multi-row INSERT: far below SQLite's and asyncpg's bound-parameter limits.
_INSERT_CHUNK = 200

_runs = cast(sa.Table, DatasetRun.__table__)
_results = cast(sa.Table, RunResultRow.__table__)
_datasets = cast(sa.Table, DatasetRow.__table__)
_members = cast(sa.Table, DatasetLog.__table__)
_logs = cast(sa.Table, RequestLog.__table__)


class NoSuchDataset(LookupError):
    def __init__(self, project: str, dataset_id: str) -> None:
        super().__init__(f"dataset projects/{project}/datasets/{dataset_id} does not exist")


class EmptyDataset(ValueError):
    def __init__(self, project: str, dataset_id: str) -> None:
        super().__init__(
            f"dataset projects/{project}/datasets/{dataset_id} holds no logs: nothing to re-run"
        )


@dataclass(frozen=True)
class Tokens:
    """Token counts of one call, or summed over many."""

    prompt: int = 0
    candidates: int = 0
    cached: int = 0
    thoughts: int = 0
    tool_use: int = 0
    total: int = 0

    def __add__(self, other: Tokens) -> Tokens:
        return Tokens(
            self.prompt + other.prompt,
            self.candidates + other.candidates,
            self.cached + other.cached,
            self.thoughts + other.thoughts,
            self.tool_use + other.tool_use,
            self.total + other.total,
        )

    def as_json(self) -> dict[str, int]:
        return {
            "prompt": self.prompt,
            "candidates": self.candidates,
            "cached": self.cached,
            "thoughts": self.thoughts,
            "tool_use": self.tool_use,
            "total": self.total,
        }

    @classmethod
    def from_json(cls, data: object) -> Tokens:
        values = data if isinstance(data, Mapping) else {}
        return cls(**{name: int(values.get(name) or 0) for name in cls().as_json()})

    def priced(self) -> TokenSums:
        return TokenSums(self.prompt, self.candidates, self.cached, self.thoughts, self.tool_use)


@dataclass(frozen=True)
class CallOutput:
    """One side of a result (the original call or its re-run), as RunOutput shows it."""

    model: str
    text: str = ""
    finish_reason: str = ""
    tokens: Tokens = field(default_factory=Tokens)
    latency_ms: float | None = None
    error_code: int = 0  # google.rpc.Code; 0 when the call succeeded
    error_message: str = ""

    @property
    def failed(self) -> bool:
        return self.error_code != 0

    def cost(self, prices: PriceTable) -> float:
        return prices.cost(
            self.model, self.tokens.prompt > LONG_PROMPT_TOKENS, self.tokens.priced()
        )

    def as_json(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "text": self.text,
            "finish_reason": self.finish_reason,
            "tokens": self.tokens.as_json(),
            "latency_ms": self.latency_ms,
            "error_code": self.error_code,
            "error_message": self.error_message,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> CallOutput:
        latency = data.get("latency_ms")
        return cls(
            model=str(data.get("model") or ""),
            text=str(data.get("text") or ""),
            finish_reason=str(data.get("finish_reason") or ""),
            tokens=Tokens.from_json(data.get("tokens")),
            latency_ms=float(latency) if isinstance(latency, int | float) else None,
            error_code=int(data.get("error_code") or 0),
            error_message=str(data.get("error_message") or ""),
        )


@dataclass(frozen=True)
class RunKey:
    project: str
    dataset_id: str
    run_id: str

    @property
    def name(self) -> str:
        return f"projects/{self.project}/datasets/{self.dataset_id}/runs/{self.run_id}"

    def where(self, table: sa.Table) -> sa.ColumnElement[bool]:
        return sa.and_(
            table.c.project == self.project,
            table.c.dataset_id == self.dataset_id,
            table.c.run_id == self.run_id,
        )


@dataclass(frozen=True)
class ResultRecord:
    """One logged request of a run and both its answers (costs at today's prices)."""

    log_id: str
    position: int
    original: CallOutput
    rerun: CallOutput | None
    response_json: str
    same_text: bool
    text_similarity: float
    original_cost: float
    rerun_cost: float


@dataclass(frozen=True)
class RunSummary:
    request_count: int = 0
    completed_count: int = 0
    failed_count: int = 0
    same_text_count: int = 0
    mean_text_similarity: float = 0.0
    original_tokens: Tokens = field(default_factory=Tokens)
    rerun_tokens: Tokens = field(default_factory=Tokens)
    original_cost: float = 0.0
    rerun_cost: float = 0.0
    original_latency_p50_ms: float | None = None
    rerun_latency_p50_ms: float | None = None


@dataclass(frozen=True)
class RunRecord:
    key: RunKey
    model: str
    mode: RunMode
    state: RunState
    create_time: datetime
    end_time: datetime | None
    concurrency: int
    system_instruction_json: str
    generation_config_json: str
    batch: str
    error_code: int
    error_message: str
    request_count: int
    summary: RunSummary
    results: list[ResultRecord] | None = None  # read in full only

    @property
    def done(self) -> bool:
        return self.state not in UNFINISHED


@dataclass(frozen=True)
class RunRequest:
    """What a re-run sends for one result: the logged request (None if the log is gone)."""

    log_id: str
    position: int
    request_json: str | None


@dataclass(frozen=True)
class RerunAnswer:
    """A re-run's answer to one logged request."""

    log_id: str
    output: CallOutput
    response_json: str = ""


def new_run_id(now_s: float | None = None) -> str:
    """12 hex digits of the time in ms, then 12 random ones: ids sort by creation."""
    ms = int((time.time() if now_s is None else now_s) * 1000)
    return f"{ms:012x}{os.urandom(6).hex()}"


def first_candidate_text(response_json: str) -> str:
    """Text of the first candidate of a GenerateContentResponse's JSON, thoughts left out."""
    if not response_json:
        return ""
    try:
        response = json.loads(response_json)
    except ValueError:
        return ""
    candidates = response.get("candidates") if isinstance(response, dict) else None
    if not isinstance(candidates, list) or not candidates or not isinstance(candidates[0], dict):
        return ""
    content = candidates[0].get("content")
    parts = content.get("parts") if isinstance(content, dict) else None
    if not isinstance(parts, list):
        return ""
    return "".join(
        part["text"]
        for part in parts
        if isinstance(part, dict) and isinstance(part.get("text"), str) and not part.get("thought")
    )


def text_similarity(original: str, rerun: str) -> float:
    """difflib's ratio over the two texts' words: 1.0 for equal texts, 0.0 for disjoint ones."""
    return difflib.SequenceMatcher(None, original.split(), rerun.split(), autojunk=False).ratio()


def status_code(name: str) -> int:
    """google.rpc.Code number of a gRPC code name as the logs keep it ("OK" -> 0)."""
    code = grpc.StatusCode.__members__.get(name)
    return int(code.value[0]) if code is not None else grpc.StatusCode.UNKNOWN.value[0]


def _now(now: datetime | None) -> datetime:
    return now if now is not None else datetime.now(UTC)


# --- creating ------------------------------------------------------------------------------


def _original(row: Any) -> CallOutput:
    failed = row.status != "OK"
    return CallOutput(
        model=row.model,
        text=first_candidate_text(
            stored_message_json(row.api_version, row.response_pb, row.response_json, response=True)
        ),
        finish_reason=row.finish_reason,
        tokens=Tokens(
            row.prompt_tokens,
            row.candidates_tokens,
            row.cached_tokens,
            row.thoughts_tokens,
            row.tool_use_tokens,
            row.total_tokens,
        ),
        latency_ms=row.latency_ms,
        error_code=status_code(row.status) if failed else 0,
        error_message=row.error_message if failed else "",
    )


async def _dataset_exists(conn: AsyncConnection, project: str, dataset_id: str) -> bool:
    query = sa.select(_datasets.c.dataset_id).where(
        _datasets.c.project == project, _datasets.c.dataset_id == dataset_id
    )
    return (await conn.execute(query)).first() is not None


async def dataset_exists(store: Store, project: str, dataset_id: str) -> bool:
    async with store.connect() as conn:
        return await _dataset_exists(conn, project, dataset_id)


async def create_run(
    store: Store,
    project: str,
    dataset_id: str,
    *,
    model: str,
    mode: RunMode,
    concurrency: int,
    system_instruction_json: str = "",
    generation_config_json: str = "",
    prices: PriceTable,
    now: datetime | None = None,
    lease_s: float = RUN_LEASE_S,
) -> RunRecord:
    """A new PENDING run over the dataset's logs as they are now (newest first), leased
    for `lease_s` to the process creating it (which executes it).

    Raises NoSuchDataset or EmptyDataset.
    """
    created = _now(now)
    key = RunKey(project, dataset_id, new_run_id(created.timestamp()))
    logs = (
        sa.select(
            _logs.c.id,
            _logs.c.model,
            _logs.c.status,
            _logs.c.error_message,
            _logs.c.latency_ms,
            _logs.c.prompt_tokens,
            _logs.c.candidates_tokens,
            _logs.c.cached_tokens,
            _logs.c.thoughts_tokens,
            _logs.c.tool_use_tokens,
            _logs.c.total_tokens,
            _logs.c.finish_reason,
            _logs.c.api_version,
            _logs.c.response_pb,
            _logs.c.response_json,
        )
        .select_from(_members.join(_logs, _logs.c.id == _members.c.log_id))
        .where(
            _members.c.project == project,
            _members.c.dataset_id == dataset_id,
            _logs.c.project == project,
        )
        .order_by(_members.c.log_id.desc())
    )
    async with store.begin() as conn:
        if not await _dataset_exists(conn, project, dataset_id):
            raise NoSuchDataset(project, dataset_id)
        originals = [(row.id, _original(row)) for row in await conn.execute(logs)]
        if not originals:
            raise EmptyDataset(project, dataset_id)
        await conn.execute(
            _runs.insert().values(
                project=project,
                dataset_id=dataset_id,
                run_id=key.run_id,
                model=model,
                mode=mode,
                state="pending",
                create_time=created,
                end_time=None,
                concurrency=concurrency,
                system_instruction_json=system_instruction_json,
                generation_config_json=generation_config_json,
                batch="",
                error_code=0,
                error_message="",
                request_count=len(originals),
                lease_until=created + timedelta(seconds=lease_s),
            )
        )
        rows = [
            {
                "project": project,
                "dataset_id": dataset_id,
                "run_id": key.run_id,
                "log_id": log_id,
                "position": position,
                "original": original.as_json(),
                "rerun": None,
                "response_json": "",
                "same_text": False,
                "text_similarity": 0.0,
            }
            for position, (log_id, original) in enumerate(originals)
        ]
        for start in range(0, len(rows), _INSERT_CHUNK):
            await conn.execute(_results.insert(), rows[start : start + _INSERT_CHUNK])
    run = await get_run(store, key, prices)
    assert run is not None  # just written
    return run


# --- running ----------------------------------------------------------------------------------


async def run_requests(
    store: Store, key: RunKey, *, after_position: int = -1, limit: int = 100
) -> list[RunRequest]:
    """The run's requests after `after_position`, in order, with each log's request JSON."""
    query = (
        sa.select(
            _results.c.log_id,
            _results.c.position,
            _logs.c.api_version,
            _logs.c.request_pb,
            _logs.c.request_json,
        )
        .select_from(
            _results.outerjoin(
                _logs, sa.and_(_logs.c.id == _results.c.log_id, _logs.c.project == key.project)
            )
        )
        .where(key.where(_results), _results.c.position > after_position)
        .order_by(_results.c.position)
        .limit(limit)
    )
    async with store.connect() as conn:
        rows = (await conn.execute(query)).all()
    # A log deleted since the run was created has no row here: its request is None.
    return [
        RunRequest(
            row.log_id,
            row.position,
            None
            if row.api_version is None
            else stored_message_json(row.api_version, row.request_pb, row.request_json),
        )
        for row in rows
    ]


async def set_run_state(
    store: Store,
    key: RunKey,
    state: RunState,
    *,
    batch: str | None = None,
    error_code: int = 0,
    error_message: str = "",
    now: datetime | None = None,
) -> bool:
    """Move an unfinished run to `state` (ending it when SUCCEEDED or FAILED).

    Returns False when the run is gone (its dataset was deleted) or already ended: an ended
    run is never changed again.
    """
    values: dict[str, Any] = {"state": state}
    if batch is not None:
        values["batch"] = batch
    if state not in UNFINISHED:
        values["end_time"] = _now(now)
        values["error_code"] = error_code
        values["error_message"] = error_message
    statement = (
        _runs.update().where(key.where(_runs), _runs.c.state.in_(UNFINISHED)).values(**values)
    )
    async with store.begin() as conn:
        result = await conn.execute(statement)
    return bool(result.rowcount)


async def renew_run_leases(
    store: Store,
    keys: Iterable[RunKey],
    *,
    lease_s: float = RUN_LEASE_S,
    now: datetime | None = None,
) -> list[RunKey]:
    """Extend the leases of the unfinished runs among `keys` (those this process executes)
    to `lease_s` from now; returns the keys that are no longer unfinished (ended by another
    replica, or deleted with their dataset)."""
    until = _now(now) + timedelta(seconds=lease_s)
    gone = []
    async with store.begin() as conn:
        for key in keys:
            statement = (
                _runs.update()
                .where(key.where(_runs), _runs.c.state.in_(UNFINISHED))
                .values(lease_until=until)
            )
            if not (await conn.execute(statement)).rowcount:
                gone.append(key)
    return gone


@dataclass(frozen=True)
class AdoptedRun:
    """A BATCH run whose gateway stopped or died after submitting its batch, now leased to
    the process that adopted it, which reads the batch's answers."""

    key: RunKey
    model: str
    batch: str  # the `batches/*` operation


def _lapsed(at: datetime) -> sa.ColumnElement[bool]:
    """Unfinished, with its lease run out (or none: written before leases were kept)."""
    return sa.and_(
        _runs.c.state.in_(UNFINISHED),
        sa.or_(_runs.c.lease_until.is_(None), _runs.c.lease_until < at),
    )


async def adopt_batch_runs(
    store: Store, *, lease_s: float = RUN_LEASE_S, now: datetime | None = None
) -> list[AdoptedRun]:
    """Lease to this process, for `lease_s`, every unfinished BATCH run whose batch was
    submitted and whose lease has run out; returns them. One UPDATE: of replicas sweeping at
    once, each run goes to one."""
    at = _now(now)
    statement = (
        _runs.update()
        .where(_lapsed(at), _runs.c.mode == "batch", _runs.c.batch != "")
        .values(lease_until=at + timedelta(seconds=lease_s))
        .returning(
            _runs.c.project, _runs.c.dataset_id, _runs.c.run_id, _runs.c.model, _runs.c.batch
        )
    )
    async with store.begin() as conn:
        rows = (await conn.execute(statement)).all()
    return [AdoptedRun(RunKey(*row[:3]), row.model, row.batch) for row in rows]


async def hand_over_batch_runs(
    store: Store, keys: Iterable[RunKey], *, now: datetime | None = None
) -> list[RunKey]:
    """End this process's lease on those of `keys` that are BATCH runs with a submitted
    batch, so that the next sweep of any gateway adopts them; returns their keys."""
    at = _now(now)
    handed = []
    async with store.begin() as conn:
        for key in keys:
            statement = (
                _runs.update()
                .where(
                    key.where(_runs),
                    _runs.c.state.in_(UNFINISHED),
                    _runs.c.mode == "batch",
                    _runs.c.batch != "",
                )
                .values(lease_until=at)
            )
            if (await conn.execute(statement)).rowcount:
                handed.append(key)
    return handed


async def unanswered_log_ids(store: Store, key: RunKey) -> list[str]:
    """The log ids of the run's requests that have no answer yet, in the run's order."""
    # An unanswered row holds JSON null, which SQL's IS NULL does not match on every backend.
    query = (
        sa.select(_results.c.log_id, _results.c.rerun)
        .where(key.where(_results))
        .order_by(_results.c.position)
    )
    async with store.connect() as conn:
        return [row.log_id for row in await conn.execute(query) if row.rerun is None]


async def fail_abandoned_runs(store: Store, *, now: datetime | None = None) -> list[RunKey]:
    """End as FAILED (UNAVAILABLE) every unfinished run whose lease has run out, or that has
    none (written before leases were kept); returns their keys."""
    ended = _now(now)
    statement = (
        _runs.update()
        .where(_lapsed(ended))
        .values(
            state="failed",
            end_time=ended,
            error_code=grpc.StatusCode.UNAVAILABLE.value[0],
            error_message=ABANDONED_MESSAGE,
        )
        .returning(_runs.c.project, _runs.c.dataset_id, _runs.c.run_id)
    )
    async with store.begin() as conn:
        rows = (await conn.execute(statement)).all()
    return [RunKey(*row) for row in rows]


async def record_answers(store: Store, key: RunKey, answers: Sequence[RerunAnswer]) -> None:
    """Store re-run answers beside their originals, comparing the texts.

    Answers to logs that are not in the run (or of a run that is gone) are ignored.
    """
    if not answers:
        return
    async with store.begin() as conn:
        originals: dict[str, Any] = {}
        for start in range(0, len(answers), _INSERT_CHUNK):
            ids = [answer.log_id for answer in answers[start : start + _INSERT_CHUNK]]
            wanted = sa.select(_results.c.log_id, _results.c.original).where(
                key.where(_results), _results.c.log_id.in_(ids)
            )
            originals.update({row.log_id: row.original for row in await conn.execute(wanted)})
        for answer in answers:
            original = originals.get(answer.log_id)
            if original is None:
                continue
            original_text = CallOutput.from_json(original).text
            answered = not answer.output.failed
            same = answered and answer.output.text == original_text
            similarity = text_similarity(original_text, answer.output.text) if answered else 0.0
            await conn.execute(
                _results.update()
                .where(key.where(_results), _results.c.log_id == answer.log_id)
                .values(
                    rerun=answer.output.as_json(),
                    response_json=answer.response_json,
                    same_text=same,
                    text_similarity=similarity,
                )
            )


# --- reading ----------------------------------------------------------------------------------


def _median(values: Iterable[float | None]) -> float | None:
    present = [value for value in values if value is not None]
    return statistics.median(present) if present else None


def summarize(request_count: int, results: Sequence[ResultRecord]) -> RunSummary:
    """The totals of a run from its results (costs already priced on each result)."""
    answered = [r for r in results if r.rerun is not None]
    succeeded = [r for r in answered if r.rerun is not None and not r.rerun.failed]
    similarities = [r.text_similarity for r in succeeded]
    return RunSummary(
        request_count=request_count,
        completed_count=len(answered),
        failed_count=len(answered) - len(succeeded),
        same_text_count=sum(1 for r in succeeded if r.same_text),
        mean_text_similarity=statistics.fmean(similarities) if similarities else 0.0,
        original_tokens=sum((r.original.tokens for r in results), Tokens()),
        rerun_tokens=sum((r.rerun.tokens for r in answered if r.rerun is not None), Tokens()),
        original_cost=sum(r.original_cost for r in results),
        rerun_cost=sum(r.rerun_cost for r in answered),
        original_latency_p50_ms=_median(r.original.latency_ms for r in results),
        rerun_latency_p50_ms=_median(r.rerun.latency_ms for r in answered if r.rerun is not None),
    )


def _result(row: sa.Row[Any], prices: PriceTable) -> ResultRecord:
    original = CallOutput.from_json(row.original)
    rerun = CallOutput.from_json(row.rerun) if row.rerun is not None else None
    return ResultRecord(
        log_id=row.log_id,
        position=row.position,
        original=original,
        rerun=rerun,
        response_json=getattr(row, "response_json", ""),
        same_text=bool(row.same_text),
        text_similarity=float(row.text_similarity),
        original_cost=original.cost(prices),
        rerun_cost=rerun.cost(prices) if rerun is not None else 0.0,
    )


_SUMMARY_COLUMNS = (
    _results.c.project,
    _results.c.dataset_id,
    _results.c.run_id,
    _results.c.log_id,
    _results.c.position,
    _results.c.original,
    _results.c.rerun,
    _results.c.same_text,
    _results.c.text_similarity,
)


async def _read_results(
    conn: AsyncConnection, runs: Sequence[sa.Row[Any]], prices: PriceTable, full: bool
) -> dict[tuple[str, str, str], list[ResultRecord]]:
    """Results of the given run rows, by (project, dataset, run), in order."""
    by_run: dict[tuple[str, str, str], list[ResultRecord]] = {
        (row.project, row.dataset_id, row.run_id): [] for row in runs
    }
    if not runs:
        return by_run
    columns = [*_SUMMARY_COLUMNS, _results.c.response_json] if full else list(_SUMMARY_COLUMNS)
    first = runs[0]
    query = (
        sa.select(*columns)
        .where(
            _results.c.project == first.project,
            _results.c.dataset_id == first.dataset_id,
            _results.c.run_id.in_([row.run_id for row in runs]),
        )
        .order_by(_results.c.run_id, _results.c.position)
    )
    for row in await conn.execute(query):
        by_run[(row.project, row.dataset_id, row.run_id)].append(_result(row, prices))
    return by_run


def _record(row: sa.Row[Any], results: list[ResultRecord], full: bool) -> RunRecord:
    return RunRecord(
        key=RunKey(row.project, row.dataset_id, row.run_id),
        model=row.model,
        mode=row.mode,
        state=row.state,
        create_time=row.create_time,
        end_time=row.end_time,
        concurrency=row.concurrency,
        system_instruction_json=row.system_instruction_json,
        generation_config_json=row.generation_config_json,
        batch=row.batch,
        error_code=row.error_code,
        error_message=row.error_message,
        request_count=row.request_count,
        summary=summarize(row.request_count, results),
        results=results if full else None,
    )


async def get_run(
    store: Store, key: RunKey, prices: PriceTable, *, full: bool = False
) -> RunRecord | None:
    """The run with its summary, and every result in order when `full`; None if not found."""
    async with store.connect() as conn:
        row = (await conn.execute(sa.select(_runs).where(key.where(_runs)))).first()
        if row is None:
            return None
        results = await _read_results(conn, [row], prices, full)
    return _record(row, results[(key.project, key.dataset_id, key.run_id)], full)


def _encode_token(dataset_id: str, run_id: str) -> str:
    return encode_page_token({"dataset": dataset_id, "after": run_id})


def _decode_token(dataset_id: str, token: str) -> str:
    """The last run id of the previous page; ValueError for a token not issued for this list."""
    data = decode_page_token(token)
    if data is None or data.get("dataset") != dataset_id or not isinstance(data.get("after"), str):
        raise ValueError("page_token is not a token of this list")
    return str(data["after"])


async def list_runs(
    store: Store,
    project: str,
    dataset_id: str,
    prices: PriceTable,
    *,
    page_size: int = DEFAULT_PAGE_SIZE,
    page_token: str = "",
) -> tuple[list[RunRecord], str]:
    """A dataset's runs, newest first, with their summaries; and the next page's token.

    Raises ValueError for a bad page token.
    """
    size = min(page_size or DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE)
    query = (
        sa.select(_runs)
        .where(_runs.c.project == project, _runs.c.dataset_id == dataset_id)
        .order_by(_runs.c.run_id.desc())
        .limit(size + 1)
    )
    if page_token:
        query = query.where(_runs.c.run_id < _decode_token(dataset_id, page_token))
    async with store.connect() as conn:
        rows = (await conn.execute(query)).all()
        more = len(rows) > size
        rows = rows[:size]
        results = await _read_results(conn, rows, prices, full=False)
    records = [
        _record(row, results[(row.project, row.dataset_id, row.run_id)], full=False) for row in rows
    ]
    token = _encode_token(dataset_id, records[-1].key.run_id) if more else ""
    return records, token
