"""Request logs: the recorder's writer and the queries behind the log service.

Writing (`LogWriter`): each batch of `LogEvent`s becomes rows of `request_logs`, with the
request and the (merged) response as protobuf bytes (made into proto3 JSON, in the REST API's
camelCase names, when a log is read: `stored_message_json`), the previews, the finish reason
and the text that free-text filters search. Each project's limit is enforced in the same
transaction, under a lock on the project's `logging_settings` row, so replicas writing at
once never overshoot it: under `stop_logging` what does not fit is skipped and counted,
under `evict_oldest` the oldest logs in no dataset make room.

Reading: ListLogs' AIP-160 filter (the shared parser of server/filters.py) compiles to one
condition over `request_logs`; listing is newest first (id descending, ids sort by arrival)
with keyset paging on the id, served by the (project, id) index.

Free text: a bare word or quoted string standing alone matches the logs whose prompt or
response text holds every word of it (SQLite: the FTS5 table `request_logs_fts`, each
whitespace-separated piece of the term a quoted FTS5 string, so no FTS syntax in the term is
ever interpreted; PostgreSQL: `plainto_tsquery('simple', term)` against the GIN index over
`to_tsvector('simple', search_text)`). Words are matched whole and case-insensitively. A
term without a single letter or digit (`"?!"`) matches no log, so `NOT "?!"` matches all.
The search covers the first `MAX_SEARCH_CHARS` characters of a log's text.

The FTS5 table follows `request_logs` by rowid; if the SQLite database is ever VACUUMed,
rebuild it afterwards: `INSERT INTO request_logs_fts (request_logs_fts) VALUES ('rebuild')`.
"""

from __future__ import annotations

import functools
import hashlib
import itertools
import json
import logging
import math
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import Any, cast

import sqlalchemy as sa
from google.protobuf.descriptor import Descriptor
from google.protobuf.message import DecodeError, Message
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncConnection
from sqlalchemy.sql.elements import ColumnElement

from gemini_gateway.generated.google.ai.generativelanguage.v1 import (
    generative_service_pb2 as v1_generative,
)
from gemini_gateway.generated.google.ai.generativelanguage.v1beta import (
    generative_service_pb2 as v1beta_generative,
)
from gemini_gateway.server import proto_json
from gemini_gateway.server.filters import (
    And,
    Comparison,
    Expr,
    FilterError,
    FilterField,
    Not,
    Or,
    Resolver,
    Text,
    compile_filter,
    field_resolver,
    parse_filter,
)
from gemini_gateway.server.labels import label_violations
from gemini_gateway.server.log_event import (
    AtLimit,
    LogEvent,
    LoggingPolicy,
    LogNotifier,
    LogSkip,
    is_log_id,
)
from gemini_gateway.server.recorder import DROPPED
from gemini_gateway.server.store.engine import Store
from gemini_gateway.server.store.log_tables import DatasetLog, LoggingSettingsRow, RequestLog
from gemini_gateway.server.store.page_tokens import decode_page_token, encode_page_token
from gemini_gateway.server.store.usage import STATUS_NAMES

log = logging.getLogger(__name__)

PREVIEW_CHARS = 200
MAX_SEARCH_CHARS = 100_000
"""Characters of prompt and response text a log is searchable by. PostgreSQL refuses a
tsvector over 1 MB; this many characters stay well below that whatever the text."""
DEFAULT_PAGE_SIZE = 50
MAX_PAGE_SIZE = 1000
PURGE_CHUNK = 2000
"""Expired logs deleted per transaction: a purge never holds the write lock for long."""

_logs = cast(sa.Table, RequestLog.__table__)
_settings = cast(sa.Table, LoggingSettingsRow.__table__)
_members = cast(sa.Table, DatasetLog.__table__)

_COUNTERS = ("skipped_at_limit", "skipped_media", "evicted", "expired")
# What `_add_counters` adds to: the counters, then the change in the logs the project holds.
_TALLIES = (*_COUNTERS, "log_count")
_OVERRIDES = ("enabled", "max_logs", "retention_s", "at_limit")
_AT_LIMIT_VALUES = ("stop_logging", "evict_oldest")
_INT32_MAX = 2**31 - 1


class LogQueryError(ValueError):
    """A log query or settings change that cannot be done as asked (bad token, value)."""


# ---------------------------------------------------------------------------------------------
# From messages to what is stored


# The helpers below read messages by field name, so they take v1's messages as well as v1beta's
# (v1 has no system instruction and no thought parts).


def _thought(part: Any) -> bool:
    return bool(getattr(part, "thought", False))


def _part_texts(content: Any) -> tuple[list[str], list[str]]:
    """The texts of a Content's text parts: (all of them, those that are not thoughts)."""
    every: list[str] = []
    answer: list[str] = []
    for part in content.parts:
        text = part.text
        if text:
            every.append(text)
            if not _thought(part):
                answer.append(text)
    return every, answer


def _clean(text: str) -> str:
    # PostgreSQL text cannot hold NUL; strings from protos are otherwise valid UTF-8.
    return text.replace("\x00", "") if "\x00" in text else text


def _safe_text(text: str) -> str:
    """Text from outside the protos (an error message): NUL removed, lone surrogates
    replaced."""
    text = _clean(text)
    if not text.isascii():
        text = text.encode("utf-8", "replace").decode("utf-8")
    return text


def _to_json(message: Message) -> str:
    """proto3 JSON in the REST API's camelCase names, compact, UTF-8 kept as is."""
    return json.dumps(proto_json.to_dict(message), separators=(",", ":"), ensure_ascii=False)


# The request and response classes of each API version, for the bytes a log keeps.
_MESSAGE_CLASSES: dict[str, tuple[type[Message], type[Message]]] = {
    "v1": (v1_generative.GenerateContentRequest, v1_generative.GenerateContentResponse),
    "v1beta": (
        v1beta_generative.GenerateContentRequest,
        v1beta_generative.GenerateContentResponse,
    ),
}


def stored_message_json(
    api_version: str, data: bytes | None, text: str | None, *, response: bool = False
) -> str:
    """A logged request (`response=True`: response) as proto3 JSON text, "" for none.

    Made from the message's protobuf bytes (`data`, rows written since revision 0005) with
    its API version's class, the same JSON as the writer made before; else the JSON `text`
    an older row kept. Bytes that do not parse read as none, with a warning.
    """
    if data is None:
        return text or ""
    classes = _MESSAGE_CLASSES.get(api_version, _MESSAGE_CLASSES["v1beta"])
    message = classes[response]()
    try:
        message.ParseFromString(data)
    except DecodeError:
        log.warning("a stored %s does not parse", "response" if response else "request")
        return ""
    return _to_json(message)


def _is_text(part: Any) -> bool:
    return bool(part.HasField("text"))


def _signature(part: Any) -> bytes:
    return bytes(getattr(part, "thought_signature", b""))


def _join_runs(parts: Sequence[Any]) -> list[Any]:
    """Copies of `parts` with each run of consecutive text parts of one kind (thought or
    answer) joined into one part; a thought signature is kept on the part it joins."""
    out: list[Any] = []
    run: list[str] = []  # texts of the text part at the end of `out`
    for part in parts:
        text = _is_text(part)
        if run and text:
            last = out[-1]
            if _thought(part) == _thought(last) and not (_signature(part) and _signature(last)):
                run.append(part.text)
                if _signature(part):
                    last.thought_signature = part.thought_signature
                continue
        if len(run) > 1:
            out[-1].text = "".join(run)
        copy = type(part)()
        copy.CopyFrom(part)
        out.append(copy)
        run = [part.text] if text else []
    if len(run) > 1:
        out[-1].text = "".join(run)
    return out


def merge_stream_chunks(chunks: Sequence[Message]) -> Message | None:
    """A stream's chunks merged into one GenerateContentResponse (None for no chunk).

    Candidates are matched by `index` (by position when a chunk leaves it out); the text of
    consecutive text parts is concatenated and other parts are kept in order. Every other
    field, of a candidate or of the response, is the last non-empty value the stream sent
    (finish reason, safety ratings, citations, usage, model version, response id, ...).
    """
    if not chunks:
        return None
    if len(chunks) == 1:
        return chunks[0]
    merged = type(chunks[0])()
    candidates: dict[int, Any] = {}
    parts: dict[int, list[Any]] = {}
    for chunk in chunks:
        for position, candidate in enumerate(chunk.candidates):  # type: ignore[attr-defined]
            index = candidate.index if candidate.HasField("index") else position
            target = candidates.get(index)
            if target is None:
                target = candidates[index] = type(candidate)()
                parts[index] = []
            for descriptor, value in candidate.ListFields():
                if descriptor.name == "content":
                    if value.role:
                        target.content.role = value.role
                    parts[index].extend(value.parts)
                else:
                    _set_last(target, descriptor, value)
        for descriptor, value in chunk.ListFields():
            if descriptor.name != "candidates":
                _set_last(merged, descriptor, value)
    for index in sorted(candidates):
        candidate = candidates[index]
        joined = _join_runs(parts[index])
        if joined or candidate.HasField("content"):
            candidate.content.parts.extend(joined)
        merged.candidates.append(candidate)  # type: ignore[attr-defined]
    return merged


def _set_last(target: Message, descriptor: Any, value: Any) -> None:
    """Set `target`'s field to `value` (a field ListFields returned, hence not empty)."""
    name = descriptor.name
    if descriptor.is_repeated:
        container = getattr(target, name)
        del container[:]
        container.extend(value)
    elif descriptor.message_type is not None:
        getattr(target, name).CopyFrom(value)
    else:
        setattr(target, name, value)


@functools.cache
def _finish_reason_names(candidate_type: Descriptor) -> dict[int, str]:
    enum_type = candidate_type.fields_by_name["finish_reason"].enum_type
    assert enum_type is not None
    return {v.number: v.name for v in enum_type.values if v.number != 0}


def _finish_reason(candidate: Any) -> str:
    value = candidate.finish_reason
    if not value:
        return ""
    return _finish_reason_names(candidate.DESCRIPTOR).get(value, str(value))


@functools.cache
def _has_system_instruction(request_type: Descriptor) -> bool:
    # v1's request has none.
    return "system_instruction" in request_type.fields_by_name


def _preview(texts: list[str], separator: str) -> str:
    return _clean(separator.join(texts).strip())[:PREVIEW_CHARS]


def _derive(request: Any, response: Any) -> tuple[str, str, str, str, str]:
    """What the writer stores of a call's messages beside their bytes: (prompt preview,
    response preview, finish reason, response id, search text), in one walk of each.

    The prompt preview is the last user turn's text (a turn without a role is the user's),
    a line per part; the response preview the first candidate's answer text, whose parts are
    pieces of one text (a stream's, around a call); the search text every text, thoughts
    included.
    """
    search: list[str] = []
    if _has_system_instruction(request.DESCRIPTOR) and request.HasField("system_instruction"):
        search += _part_texts(request.system_instruction)[0]
    prompt: list[str] = []
    for content in request.contents:
        every, answer = _part_texts(content)
        search += every
        if content.role in ("user", ""):
            prompt = answer
    response_preview = finish_reason = response_id = ""
    if response is not None:
        response_id = _clean(response.response_id)
        for position, candidate in enumerate(response.candidates):
            every, answer = _part_texts(candidate.content)
            search += every
            if position == 0:
                response_preview = _preview(answer, "")
                finish_reason = _finish_reason(candidate)
    text = "\n".join(search)
    return (
        _preview(prompt, "\n"),
        response_preview,
        finish_reason,
        response_id,
        _clean(text[:MAX_SEARCH_CHARS]),
    )


# ---------------------------------------------------------------------------------------------
# Writing
#
# The writer runs on the gateway's event loop, so it does as little Python per event as it can:
# the statements are SQL text built once per dialect and row count, values are bound as the
# driver takes them (on SQLite straight to aiosqlite, one hand-off per statement), and the rows
# of a batch go in multi-row INSERTs.

_LOG_COLUMNS = (
    "id", "project", "create_time", "caller", "model", "method", "api_version", "labels",
    "status", "error_message", "latency_ms", "first_chunk_ms", "prompt_tokens",
    "candidates_tokens", "cached_tokens", "thoughts_tokens", "tool_use_tokens", "total_tokens",
    "incomplete", "finish_reason", "response_id", "prompt_preview", "response_preview",
    "search_text", "request_pb", "response_pb", "request_json", "response_json",
    "chunk_offsets_ms",
)  # fmt: skip
# Rows per INSERT: a batch is cut into 64s, then the rest into powers of two, so at most seven
# statement texts per dialect exist and the drivers' statement caches keep them all.
_MAX_ROWS = 64


def _row_counts(total: int) -> Iterator[int]:
    full, rest = divmod(total, _MAX_ROWS)
    yield from itertools.repeat(_MAX_ROWS, full)
    size = _MAX_ROWS // 2
    while rest:
        if rest >= size:
            yield size
            rest -= size
        size //= 2


def _placeholders(dialect: str, count: int, start: int = 1) -> list[str]:
    if dialect == "postgresql":
        return [f"${n}" for n in range(start, start + count)]
    return ["?"] * count


@functools.cache
def _insert_logs_sql(dialect: str, rows: int) -> str:
    width = len(_LOG_COLUMNS)
    marks = _placeholders(dialect, rows * width)
    values = ", ".join(
        "(" + ", ".join(marks[r * width : (r + 1) * width]) + ")" for r in range(rows)
    )
    return f"INSERT INTO request_logs ({', '.join(_LOG_COLUMNS)}) VALUES {values}"


@functools.lru_cache(maxsize=64)
def _lock_projects_sql(dialect: str, rows: int) -> str:
    marks = _placeholders(dialect, rows)
    values = ", ".join(f"({mark}, 0, 0, 0, 0)" for mark in marks)  # log_count: its default
    # PostgreSQL: DO UPDATE locks each row (DO NOTHING would not), in the order given.
    conflict = "DO NOTHING"
    if dialect == "postgresql":
        conflict = "DO UPDATE SET project = excluded.project"
    return (
        f"INSERT INTO logging_settings (project, {', '.join(_COUNTERS)}) VALUES {values} "
        f"ON CONFLICT (project) {conflict}"
    )


@functools.lru_cache(maxsize=64)
def _count_sql(dialect: str, rows: int) -> str:
    marks = ", ".join(_placeholders(dialect, rows))
    return f"SELECT project, log_count FROM logging_settings WHERE project IN ({marks})"


@functools.cache
def _add_counters_sql(dialect: str, rows: int) -> str:
    width = 1 + len(_TALLIES)
    marks = _placeholders(dialect, rows * width)
    values = ", ".join(
        "(" + ", ".join(marks[r * width : (r + 1) * width]) + ")" for r in range(rows)
    )
    sums = ", ".join(f"{c} = logging_settings.{c} + excluded.{c}" for c in _TALLIES)
    return (
        f"INSERT INTO logging_settings (project, {', '.join(_TALLIES)}) VALUES {values} "
        f"ON CONFLICT (project) DO UPDATE SET {sums}"
    )


@functools.cache
def _evict_sql(dialect: str) -> str:
    project, limit = _placeholders(dialect, 2)
    return (
        "DELETE FROM request_logs WHERE id IN (SELECT r.id FROM request_logs r "
        f"WHERE r.project = {project} AND NOT EXISTS "
        "(SELECT 1 FROM dataset_logs d WHERE d.log_id = r.id) "
        f"ORDER BY r.id LIMIT {limit})"
    )


class _Statements:
    """Runs the writer's SQL text in the transaction of `conn`, straight to the driver where
    that saves work: on SQLite to aiosqlite (one hand-off to its thread per statement, where
    SQLAlchemy's adapter takes three; sqlite3 opens the transaction at the first INSERT and
    SQLAlchemy commits the same connection); asyncpg runs on the loop itself."""

    def __init__(self, conn: AsyncConnection, raw: Any) -> None:
        self.conn = conn
        self.raw = raw
        self.dialect = conn.dialect.name

    @classmethod
    async def open(cls, conn: AsyncConnection) -> _Statements:
        raw = None
        if conn.dialect.name == "sqlite":
            raw = (await conn.get_raw_connection()).driver_connection
        return cls(conn, raw)

    async def run(self, sql: str, params: tuple[Any, ...]) -> int:
        """Execute; the number of rows changed."""
        if self.raw is not None:
            cursor = await self.raw.execute(sql, params)
            return int(cursor.rowcount)
        result = await self.conn.exec_driver_sql(sql, params)
        return int(result.rowcount)

    async def rows(self, sql: str, params: tuple[Any, ...]) -> list[tuple[Any, ...]]:
        if self.raw is not None:
            cursor = await self.raw.execute(sql, params)
            return list(await cursor.fetchall())
        result = await self.conn.exec_driver_sql(sql, params)
        return [tuple(row) for row in result.all()]

    def time(self, value: datetime) -> Any:
        """A UTC time as the driver binds it: SQLite keeps the naive UTC text SQLAlchemy
        writes for a DATETIME; asyncpg takes the aware datetime."""
        if value.tzinfo is not UTC:
            value = value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)
        if self.raw is not None:
            return value.isoformat(" ", "microseconds")[:26]
        return value


async def _insert_rows(
    db: _Statements, sql_for: Callable[[str, int], str], rows: Sequence[tuple[Any, ...]]
) -> None:
    start = 0
    for count in _row_counts(len(rows)):
        chunk = rows[start : start + count]
        start += count
        await db.run(sql_for(db.dialect, count), tuple(itertools.chain.from_iterable(chunk)))


async def _add_counters(db: _Statements, counters: Mapping[str, Sequence[int]]) -> None:
    """Add (skipped_at_limit, skipped_media, evicted, expired, logs added less logs deleted)
    to each project's counters and log count."""
    rows = [(project, *counters[project]) for project in sorted(counters) if any(counters[project])]
    if rows:
        await _insert_rows(db, _add_counters_sql, rows)


@functools.lru_cache(maxsize=4096)
def _labels_json(items: tuple[tuple[str, str], ...]) -> str:
    # Keyed by the pairs in the event's order: calls repeat a few label sets.
    return json.dumps(dict(sorted(items)))


def _finite(value: float | None) -> float | None:
    return None if value is None or not math.isfinite(value) else float(value)


def _row(event: LogEvent, db: _Statements) -> tuple[Any, ...]:
    request: Any = event.request
    response: Any = merge_stream_chunks(event.responses)
    prompt_preview, response_preview, finish_reason, response_id, search_text = _derive(
        request, response
    )
    offsets = event.chunk_offsets_ms
    if offsets:
        offsets = [round(ms, 3) for ms in offsets if math.isfinite(ms)]
    return (
        event.id, event.project, db.time(event.create_time), event.caller, event.model,
        event.method, event.api_version, _labels_json(tuple(event.labels.items())),
        event.status, _safe_text(event.error_message) if event.error_message else "",
        _finite(event.latency_ms) or 0.0, _finite(event.first_chunk_ms),
        int(event.prompt_tokens), int(event.candidates_tokens), int(event.cached_tokens),
        int(event.thoughts_tokens), int(event.tool_use_tokens), int(event.total_tokens),
        bool(event.incomplete), finish_reason, response_id, prompt_preview, response_preview,
        search_text, request.SerializeToString(),
        None if response is None else response.SerializeToString(), "", "",
        json.dumps(offsets) if offsets else "[]",
    )  # fmt: skip


class LogWriter:
    """The recorder's writer of `LogEvent`s (and, through `write_skips`, of `LogSkip`s).

    `policy_for(project)` gives the limit and the policy at the limit in force when the
    batch is written; logging being off by then does not matter (the call was logged when it
    was made). `notifier` hears of every log written: inside the transaction and, through
    the callable returned, once it has committed.
    """

    def __init__(
        self, policy_for: Callable[[str], LoggingPolicy], notifier: LogNotifier | None = None
    ) -> None:
        self._policy_for = policy_for
        self._notifier = notifier

    async def __call__(
        self, conn: AsyncConnection, events: Sequence[LogEvent]
    ) -> Callable[[], None] | None:
        if not events:
            return None
        db = await _Statements.open(conn)
        # One event the conversion cannot handle (an unforeseen message shape) is dropped
        # and counted on its own; the rest of the batch is still written.
        rows: dict[str, tuple[Any, ...]] = {}
        by_project: dict[str, list[LogEvent]] = {}
        for event in events:
            try:
                rows[event.id] = _row(event, db)
            except Exception:
                DROPPED.labels("unconvertible").inc()
                log.exception(
                    "log %s of project %s could not be converted", event.id, event.project
                )
                continue
            by_project.setdefault(event.project, []).append(event)
        if not by_project:
            return None
        projects = sorted(by_project)
        await _lock_projects(db, projects)
        counts = dict(await db.rows(_count_sql(db.dialect, len(projects)), tuple(projects)))

        kept: list[LogEvent] = []
        counters: dict[str, list[int]] = {}
        for project in projects:
            batch = sorted(by_project[project], key=lambda event: event.id)
            fit = await _fit(
                db, project, batch, int(counts.get(project, 0)), self._policy_for(project)
            )
            kept.extend(fit.stored)
            counters[project] = [fit.skipped, 0, fit.evicted, 0, len(fit.stored) - fit.deleted]

        await _insert_rows(db, _insert_logs_sql, [rows[event.id] for event in kept])
        await _add_counters(db, counters)
        written: dict[str, list[str]] = {}
        for event in kept:
            written.setdefault(event.project, []).append(event.id)
        notifier = self._notifier
        if notifier is None or not written:
            return None
        await notifier.notify_in_transaction(conn, written)
        return functools.partial(notifier.published, written)

    async def write_skips(self, conn: AsyncConnection, skips: Sequence[LogSkip]) -> None:
        """Add calls that were not logged to their projects' counters."""
        counters: dict[str, list[int]] = {}
        for skip in skips:
            row = counters.setdefault(skip.project, [0, 0, 0, 0, 0])
            row[0 if skip.reason == "at_limit" else 1] += int(skip.count)
        if counters:
            await _add_counters(await _Statements.open(conn), counters)


async def _lock_projects(db: _Statements, projects: Sequence[str]) -> None:
    """Make sure each project has its settings row and hold it until the transaction ends.

    The row is the project's lock: two writers (replicas) never count and fill the same
    project at once. On SQLite the INSERT takes the database's write lock (sqlite3 opens the
    transaction there), so the count that follows is current; on PostgreSQL the rows are
    locked in project order (`projects` is sorted), the same in every writer, and the count,
    a later statement, sees what the writer before committed.
    """
    await db.run(_lock_projects_sql(db.dialect, len(projects)), tuple(projects))


@dataclass(frozen=True, slots=True)
class _Fit:
    """What a batch of one project comes to at its limit."""

    stored: list[LogEvent]
    """The events to store, oldest first."""
    skipped: int
    """Events not stored, counted as skipped at the limit."""
    evicted: int
    """Logs counted as evicted: stored ones deleted, and events that gave way to newer ones."""
    deleted: int
    """Stored logs deleted to make room."""


async def _fit(
    db: _Statements, project: str, batch: list[LogEvent], count: int, policy: LoggingPolicy
) -> _Fit:
    """What of `batch` (oldest first) fits `project`'s limit, holding `count` logs; evicts
    the logs that make room."""
    limit = max(policy.max_logs, 0)
    if count + len(batch) <= limit:
        return _Fit(batch, 0, 0, 0)
    if policy.at_limit != "evict_oldest":
        room = max(limit - count, 0)
        return _Fit(batch[:room], len(batch) - room, 0, 0)
    # The oldest stored logs in no dataset make room for the batch (for its newest, if it
    # alone exceeds the limit). What still does not fit gave way to newer logs: evicted too,
    # unless nothing fits at all (every log kept is in a dataset): then it is skipped.
    excess = count + min(len(batch), limit) - limit
    removed = await db.run(_evict_sql(db.dialect), (project, excess)) if excess > 0 else 0
    room = max(limit - (count - removed), 0)
    if room == 0:
        return _Fit([], len(batch), removed, removed)
    stored = batch[max(len(batch) - room, 0) :]
    return _Fit(stored, 0, removed + len(batch) - len(stored), removed)


# ---------------------------------------------------------------------------------------------
# Filtering


def _check_label_key(key: str) -> None:
    # The key becomes a JSON path: only keys the label rules accept get that far.
    violations = label_violations({key: ""})
    if violations:
        raise FilterError(f"labels.{key}: {violations[0][1]}")


def _label_field(key: str) -> FilterField:
    _check_label_key(key)
    return FilterField(_logs.c.labels[key].as_string(), "string")


_JSONB_LABELS = sa.type_coerce(_logs.c.labels, postgresql.JSONB())


def _postgresql_label_condition(node: Comparison) -> ColumnElement[bool] | None:
    """`labels.KEY = V`, `!= V` and `:*` as JSONB containment and key tests, or None for the
    other operators.

    Same meaning as `labels->>'KEY' = 'V'`, but PostgreSQL estimates `@>` and `?` from the
    statistics of the label sets (calls repeat a few), where it can only guess 0.5% for an
    expression: with that guess, `labels.team = "search" AND refund` read every log holding
    "refund" through the full-text index and sorted them (130 ms over 100,000 logs) instead
    of reading the newest logs until the page was full (6 ms).
    """
    key = node.field.removeprefix("labels.")
    _check_label_key(key)
    value = node.value
    if node.op == ":" and not value.quoted and value.text == "*":
        return _JSONB_LABELS.has_key(key)
    if node.op in ("=", ":"):
        return _JSONB_LABELS.contains({key: value.text})
    if node.op == "!=":
        return sa.not_(_JSONB_LABELS.contains({key: value.text}))
    return None


def _resolver() -> Resolver:
    c = _logs.c
    fields = {
        name: FilterField(c[name], "string")
        for name in ("model", "method", "api_version", "caller", "finish_reason")
    }
    fields["status"] = FilterField(c.status, "enum", STATUS_NAMES)
    fields["create_time"] = FilterField(c.create_time, "timestamp")
    # Seconds, as the API's durations: `latency > 2.5s`.
    fields["latency"] = FilterField(c.latency_ms / 1000.0, "number")
    fields["time_to_first_chunk"] = FilterField(c.first_chunk_ms / 1000.0, "number")
    for name in ("prompt", "candidates", "cached", "thoughts", "tool_use", "total"):
        fields[f"tokens.{name}"] = FilterField(c[f"{name}_tokens"], "number")
    fields["incomplete"] = FilterField(c.incomplete, "bool")
    # Compiled by _dataset_condition; listed here so unknown-field hints name it.
    fields["dataset"] = FilterField(sa.null(), "string")
    return field_resolver(fields, {"labels": _label_field})


_RESOLVE = _resolver()


def _without_nul(node: Comparison) -> Comparison:
    # PostgreSQL refuses NUL in text; stored strings never hold one, so any stand-in is as good.
    if "\x00" not in node.value.text:
        return node
    text = node.value.text.replace("\x00", "\ufffd")
    return replace(node, value=replace(node.value, text=text))


def _fts_query(term: str) -> str | None:
    """An FTS5 query matching rows that hold every whitespace-separated piece of `term` (each
    piece a quoted string, so its words form a phrase and no FTS5 syntax is interpreted);
    None when no piece has a letter or digit."""
    pieces = [piece for piece in term.split() if any(char.isalnum() for char in piece)]
    if not pieces:
        return None
    return " ".join('"' + piece.replace('"', '""') + '"' for piece in pieces)


_FTS_ROWIDS = sa.table("request_logs_fts", sa.column("rowid"))
_SIMPLE: ColumnElement[Any] = sa.literal_column("'simple'::regconfig")


def _text_condition(term: str, dialect: str) -> ColumnElement[bool]:
    if not any(char.isalnum() for char in term):
        return sa.false()
    if dialect == "sqlite":
        query = _fts_query(term)
        matches = (
            sa.select(_FTS_ROWIDS.c.rowid)
            .where(sa.literal_column("request_logs_fts").op("MATCH")(query))
            .correlate(None)
        )
        # `+rowid`: the rowid is not to be looked up per match. SQLite then reads the project's
        # (project, id) index newest first and checks each entry against the matches (held
        # once in a temporary index), stopping at the page's end: a few ms whether the term
        # is in every log or in none, where looking the matches up and sorting them costs
        # O(matches) (100 ms for a term in most of 100,000 logs).
        return sa.literal_column("+request_logs.rowid").in_(matches)
    if dialect == "postgresql":
        # The same expression as the GIN index of the 0003 migration, or it is not used.
        document = sa.func.to_tsvector(_SIMPLE, _logs.c.search_text)
        words = sa.func.plainto_tsquery(_SIMPLE, term.replace("\x00", " "))
        return document.bool_op("@@")(words)
    raise NotImplementedError(f"free-text search on {dialect}")


def _dataset_id(node: Comparison, project: str) -> str | None:
    """The dataset id a `dataset` comparison names; None when it names another project's."""
    text = node.value.text
    owner = project
    if not text.startswith("projects/"):
        dataset = text
    else:
        parts = text.split("/")
        if len(parts) != 4 or parts[2] != "datasets" or not parts[1]:
            dataset = ""
        else:
            owner, dataset = parts[1], parts[3]
    if not dataset or "/" in dataset:
        raise FilterError(
            f'field "dataset" expects a dataset id or name, got "{text[:60]}"',
            node.value.column,
            'for example dataset = "refunds" or dataset = "projects/p/datasets/refunds"',
        )
    return dataset if owner in (project, "-") else None


def _dataset_condition(node: Comparison, project: str, dialect: str) -> ColumnElement[bool]:
    """`dataset = D` / `dataset != D` / `dataset:*` (in any dataset) as a membership test."""
    value = node.value
    if node.op not in ("=", "!=", ":"):
        raise FilterError(
            f"operator '{node.op}' does not apply to field \"dataset\"",
            node.column,
            "use dataset = ID, dataset != ID or dataset:* (in any dataset)",
        )
    member = _members.alias("membership")
    conditions = [member.c.project == project]
    if not (node.op == ":" and not value.quoted and value.text == "*"):
        dataset = _dataset_id(node, project)
        if dataset is None:
            return sa.true() if node.op == "!=" else sa.false()
        conditions.append(member.c.dataset_id == dataset)
    if dialect == "postgresql":
        # EXISTS: a semi-join, and an anti-join under NOT (NOT IN would not be).
        inside: ColumnElement[bool] = (
            sa.exists().where(member.c.log_id == _logs.c.id, *conditions).correlate(_logs)
        )
    else:
        # IN: SQLite can then start from the dataset's memberships (its primary key).
        inside = _logs.c.id.in_(sa.select(member.c.log_id).where(*conditions).correlate(None))
    return sa.not_(inside) if node.op == "!=" else inside


def _compile(expr: Expr, project: str, dialect: str) -> ColumnElement[bool]:
    match expr:
        case And(operands):
            return sa.and_(*(_compile(operand, project, dialect) for operand in operands))
        case Or(operands):
            return sa.or_(*(_compile(operand, project, dialect) for operand in operands))
        case Not(operand):
            return sa.not_(_compile(operand, project, dialect))
        case Text(value):
            return _text_condition(value.text, dialect)
        case Comparison(field="dataset"):
            return _dataset_condition(expr, project, dialect)
        case Comparison():
            expr = _without_nul(expr)
            if dialect == "postgresql" and expr.field.startswith("labels."):
                condition = _postgresql_label_condition(expr)
                if condition is not None:
                    return condition
            return compile_filter(expr, _RESOLVE)
    raise TypeError(f"not a filter expression: {expr!r}")


def log_condition(project: str, filter_text: str, dialect: str) -> ColumnElement[bool]:
    """`project`'s logs that match the ListLogs filter `filter_text` (raises FilterError)."""
    mine = _logs.c.project == project
    expr = parse_filter(filter_text)
    if expr is None:
        return mine
    return sa.and_(mine, _compile(expr, project, dialect))


def log_ids_select(project: str, filter_text: str, dialect: str) -> sa.Select[str]:
    """The ids of `project`'s logs matching `filter_text` (for INSERT ... SELECT)."""
    return sa.select(_logs.c.id).where(log_condition(project, filter_text, dialect))


# ---------------------------------------------------------------------------------------------
# Reading and deleting


@dataclass(slots=True, kw_only=True)
class LogRecord:
    """One stored log. `full` says whether the request, response and chunk offsets were read
    (otherwise they are empty)."""

    id: str
    project: str
    create_time: datetime
    caller: str
    model: str
    method: str
    api_version: str
    labels: dict[str, str]
    status: str
    error_message: str
    latency_ms: float
    first_chunk_ms: float | None
    prompt_tokens: int
    candidates_tokens: int
    cached_tokens: int
    thoughts_tokens: int
    tool_use_tokens: int
    total_tokens: int
    incomplete: bool
    finish_reason: str
    response_id: str
    prompt_preview: str
    response_preview: str
    datasets: list[str] = field(default_factory=list)
    """Ids of the datasets (of the log's project) that hold the log, in id order."""
    full: bool = False
    request_pb: bytes | None = None
    """The request's protobuf bytes, of the log's API version (full view, since revision
    0005); `request_json` makes its JSON."""
    response_pb: bytes | None = None
    stored_request_json: str = ""
    """The JSON text a row written before revision 0005 kept instead of bytes."""
    stored_response_json: str = ""
    chunk_offsets_ms: list[float] = field(default_factory=list)

    @property
    def request_json(self) -> str:
        """The request as proto3 JSON text ("" in the basic view)."""
        return stored_message_json(self.api_version, self.request_pb, self.stored_request_json)

    @property
    def response_json(self) -> str:
        """The (merged) response as proto3 JSON text ("" in the basic view or for none)."""
        return stored_message_json(
            self.api_version, self.response_pb, self.stored_response_json, response=True
        )


_FULL_ONLY = (
    "request_pb", "response_pb", "stored_request_json", "stored_response_json",
    "chunk_offsets_ms",
)  # fmt: skip
_BASIC_COLUMNS = tuple(
    name for name in LogRecord.__dataclass_fields__ if name not in ("datasets", "full", *_FULL_ONLY)
)
_FULL_COLUMNS = (
    *_BASIC_COLUMNS, "request_pb", "response_pb", "request_json", "response_json",
    "chunk_offsets_ms",
)  # fmt: skip
# Bind parameters per `IN (...)` list: well below every driver's limit.
_IN_CHUNK = 500


def _select(full: bool) -> sa.Select[Any]:
    return sa.select(*(_logs.c[name] for name in (_FULL_COLUMNS if full else _BASIC_COLUMNS)))


def _record(row: sa.Row[Any], full: bool) -> LogRecord:
    values = row._asdict()
    values["labels"] = dict(values["labels"] or {})
    if full:
        values["chunk_offsets_ms"] = list(values["chunk_offsets_ms"] or [])
        # JSON is made only if asked for (request_json): the log service takes the bytes.
        values["stored_request_json"] = values.pop("request_json")
        values["stored_response_json"] = values.pop("response_json")
    return LogRecord(**values, full=full)


def _chunks(items: Sequence[str], size: int = _IN_CHUNK) -> Iterator[Sequence[str]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


async def _attach_datasets(conn: AsyncConnection, records: Sequence[LogRecord]) -> None:
    by_id = {record.id: record for record in records}
    for chunk in _chunks(list(by_id)):
        query = (
            sa.select(_members.c.log_id, _members.c.dataset_id)
            .where(_members.c.log_id.in_(chunk))
            .order_by(_members.c.log_id, _members.c.dataset_id)
        )
        for log_id, dataset_id in await conn.execute(query):
            by_id[log_id].datasets.append(dataset_id)


async def _plan_per_query(conn: AsyncConnection) -> None:
    """On PostgreSQL, plan this transaction's statements for their actual values.

    asyncpg prepares each statement, and after five runs PostgreSQL may keep one generic plan
    for every value; for a filter that plan cannot tell a word in most logs from a word in a
    few, or a day from a month, and was seen to scan every log for a rare word (250 ms over
    10,000 logs). Planning a listing takes well under a millisecond.
    """
    if conn.dialect.name == "postgresql":
        await conn.exec_driver_sql("SET LOCAL plan_cache_mode = force_custom_plan")


def _page_size(page_size: int) -> int:
    if page_size < 0:
        raise LogQueryError(f"page_size must not be negative, got {page_size}")
    return min(page_size or DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE)


def _listing_hash(project: str, filter_text: str) -> str:
    text = json.dumps([project, filter_text], separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _encode_token(last_id: str, listing: str) -> str:
    return encode_page_token({"after": last_id, "listing": listing})


def _decode_token(token: str, listing: str) -> str | None:
    """The id the page starts after; None for the first page."""
    if not token:
        return None
    data = decode_page_token(token)
    if data is None or "after" not in data or "listing" not in data:
        raise LogQueryError("page_token is not a token ListLogs issued")
    after, owner = data["after"], data["listing"]
    if not isinstance(after, str) or not is_log_id(after) or not isinstance(owner, str):
        raise LogQueryError("page_token is not a token ListLogs issued")
    if owner != listing:
        raise LogQueryError(
            "page_token belongs to a listing with another filter or project; "
            "start again from the first page"
        )
    return after


async def list_logs(
    store: Store,
    project: str,
    *,
    filter_text: str = "",
    page_size: int = DEFAULT_PAGE_SIZE,
    page_token: str = "",
    full: bool = False,
) -> tuple[list[LogRecord], str]:
    """A page of `project`'s logs matching `filter_text`, newest first, and the next page's
    token ("" on the last page).

    Pages are keyed on the last id shown, so logs written meanwhile (newer) never shift a
    later page. Raises FilterError for a bad filter and LogQueryError (a ValueError) for a
    bad page size or token, or a token of another listing.
    """
    size = _page_size(page_size)
    listing = _listing_hash(project, filter_text)
    after = _decode_token(page_token, listing)
    query = _select(full).where(log_condition(project, filter_text, store.dialect))
    if after is not None:
        query = query.where(_logs.c.id < after)
    query = query.order_by(_logs.c.id.desc()).limit(size + 1)
    async with store.connect() as conn:
        await _plan_per_query(conn)
        rows = (await conn.execute(query)).all()
        records = [_record(row, full) for row in rows[:size]]
        await _attach_datasets(conn, records)
    more = len(rows) > size
    return records, _encode_token(records[-1].id, listing) if more else ""


async def get_logs(
    store: Store,
    project: str,
    ids: Sequence[str],
    *,
    full: bool = False,
    filter_text: str = "",
) -> list[LogRecord]:
    """The logs of `project` among `ids` (that also match `filter_text`), newest first; ids
    that do not exist are left out."""
    wanted = sorted({log_id for log_id in ids if is_log_id(log_id)})
    if not wanted:
        return []
    condition = log_condition(project, filter_text, store.dialect)
    records: list[LogRecord] = []
    async with store.connect() as conn:
        await _plan_per_query(conn)
        for chunk in _chunks(wanted):
            query = _select(full).where(condition, _logs.c.id.in_(chunk))
            records.extend(_record(row, full) for row in await conn.execute(query))
        records.sort(key=lambda record: record.id, reverse=True)
        await _attach_datasets(conn, records)
    return records


async def delete_logs(
    store: Store,
    project: str,
    *,
    ids: Sequence[str] = (),
    filter_text: str = "",
    everything: bool = False,
) -> int:
    """Delete `project`'s logs: those among `ids` (that also match `filter_text` if given),
    or all that match `filter_text`, or with `everything` all of them. Their dataset
    memberships go with them. Returns how many were deleted."""
    if everything and (ids or filter_text.strip()):
        raise LogQueryError("everything deletes every log: give no ids and no filter with it")
    if not everything and not ids and not filter_text.strip():
        raise LogQueryError("say which logs to delete: ids, a filter, or everything")
    condition = log_condition(project, "" if everything else filter_text, store.dialect)
    deleted = 0
    async with store.begin() as conn:
        # The project's row first, as the writer takes it: the two wait for each other
        # instead of deadlocking, and the log count stays exact.
        db = await _Statements.open(conn)
        await _lock_projects(db, [project])
        await _plan_per_query(conn)
        if ids:
            wanted = sorted({log_id for log_id in ids if is_log_id(log_id)})
            for chunk in _chunks(wanted):
                result = await conn.execute(_logs.delete().where(condition, _logs.c.id.in_(chunk)))
                deleted += max(result.rowcount, 0)
        else:
            result = await conn.execute(_logs.delete().where(condition))
            deleted = max(result.rowcount, 0)
        if deleted:
            await _add_counters(db, {project: (0, 0, 0, 0, -deleted)})
    return deleted


async def count_logs(store: Store, project: str) -> int:
    """How many logs `project` holds (its kept count: no rows are counted)."""
    query = sa.select(_settings.c.log_count).where(_settings.c.project == project)
    async with store.connect() as conn:
        return int((await conn.execute(query)).scalar() or 0)


# ---------------------------------------------------------------------------------------------
# Settings and expiry


@dataclass(frozen=True, slots=True)
class SettingsRecord:
    """A project's settings as changed through the API (None: the configured default), when
    they were last changed, and its counters of calls not logged and logs removed."""

    enabled: bool | None = None
    max_logs: int | None = None
    retention_s: float | None = None
    at_limit: AtLimit | None = None
    update_time: datetime | None = None
    skipped_at_limit: int = 0
    skipped_media: int = 0
    evicted: int = 0
    expired: int = 0


def _settings_record(row: sa.Row[Any] | None) -> SettingsRecord:
    if row is None:
        return SettingsRecord()
    at_limit = row.at_limit if row.at_limit in _AT_LIMIT_VALUES else None
    return SettingsRecord(
        enabled=row.enabled,
        max_logs=row.max_logs,
        retention_s=row.retention_s,
        at_limit=cast("AtLimit | None", at_limit),
        update_time=row.update_time,
        **{name: int(getattr(row, name) or 0) for name in _COUNTERS},
    )


async def read_settings(store: Store, project: str) -> SettingsRecord:
    """`project`'s overrides and counters (defaults and zeros if it has none)."""
    async with store.connect() as conn:
        row = (await conn.execute(_settings.select().where(_settings.c.project == project))).first()
    return _settings_record(row)


async def read_all_overrides(store: Store) -> dict[str, SettingsRecord]:
    """Every project's stored settings and counters, by project."""
    async with store.connect() as conn:
        rows = (await conn.execute(_settings.select())).all()
    return {row.project: _settings_record(row) for row in rows}


def _checked_change(name: str, value: object) -> object:
    """`value` as stored for override `name` (None: back to the configured default)."""
    if value is None:
        return None
    if name == "enabled":
        if isinstance(value, bool):
            return value
        raise LogQueryError(f"enabled must be true or false, got {value!r}")
    if name == "max_logs":
        if isinstance(value, int) and not isinstance(value, bool) and 1 <= value <= _INT32_MAX:
            return value
        raise LogQueryError(f"max_logs must be a whole number from 1 to {_INT32_MAX}")
    if name == "retention_s":
        if isinstance(value, int | float) and not isinstance(value, bool):
            seconds = float(value)
            # Up to about 10,000 years: far beyond any use, and a cutoff that stays a date.
            if math.isfinite(seconds) and 0 < seconds <= 3e11:
                return seconds
        raise LogQueryError("retention_s must be a positive number of seconds")
    if name == "at_limit":
        if value in _AT_LIMIT_VALUES:
            return value
        raise LogQueryError(f"at_limit must be one of {', '.join(_AT_LIMIT_VALUES)}")
    raise LogQueryError(f"unknown logging setting {name!r}: use {', '.join(_OVERRIDES)}")


def _upsert(dialect: str) -> Any:
    insert = {"sqlite": sqlite.insert, "postgresql": postgresql.insert}.get(dialect)
    if insert is None:
        raise NotImplementedError(f"logging settings on {dialect}")
    return insert(_settings)


async def update_settings(
    store: Store, project: str, changes: Mapping[str, object], *, now: datetime | None = None
) -> SettingsRecord:
    """Change some of `project`'s overrides (keys among enabled, max_logs, retention_s,
    at_limit; a None value returns to the configured default). Raises LogQueryError."""
    values = {name: _checked_change(name, value) for name, value in changes.items()}
    if not values:
        return await read_settings(store, project)
    values["update_time"] = now or datetime.now(UTC)
    insert = _upsert(store.dialect)
    statement = insert.values(
        project=project, **dict.fromkeys(_COUNTERS, 0), **values
    ).on_conflict_do_update(index_elements=[_settings.c.project], set_=values)
    async with store.begin() as conn:
        await conn.execute(statement)
        row = (await conn.execute(_settings.select().where(_settings.c.project == project))).first()
    return _settings_record(row)


async def purge_expired(
    store: Store, policy_for: Callable[[str], LoggingPolicy], now: datetime | None = None
) -> int:
    """Delete the logs older than their project's retention that are in no dataset, count
    them in the project's `expired`; returns how many were deleted."""
    now = now or datetime.now(UTC)
    async with store.connect() as conn:
        projects = sorted((await conn.execute(sa.select(_logs.c.project).distinct())).scalars())
    total = 0
    for project in projects:
        try:
            cutoff = now - timedelta(seconds=policy_for(project).retention_s)
        except (OverflowError, ValueError):
            continue  # a retention beyond the calendar keeps everything
        total += await _purge_project(store, project, cutoff)
    return total


async def _purge_project(store: Store, project: str, cutoff: datetime) -> int:
    member = _members.alias("membership")
    in_dataset = sa.exists().where(member.c.log_id == _logs.c.id).correlate(_logs)
    victims = (
        sa.select(_logs.c.id)
        .where(_logs.c.project == project, _logs.c.create_time < cutoff, ~in_dataset)
        .order_by(_logs.c.create_time)
        .limit(PURGE_CHUNK)
        .correlate(None)
    )
    total = 0
    while True:
        async with store.begin() as conn:
            db = await _Statements.open(conn)
            await _lock_projects(db, [project])  # first, as the writer and delete_logs do
            result = await conn.execute(_logs.delete().where(_logs.c.id.in_(victims)))
            deleted = max(result.rowcount, 0)
            if deleted:
                await _add_counters(db, {project: (0, 0, 0, deleted, -deleted)})
        total += deleted
        if deleted < PURGE_CHUNK:
            return total
