"""The request-log store on SQLite and PostgreSQL: the writer (JSON, merged streams, previews,
limits under both policies, skip counters), paging, reads, deletes, expiry and settings.

The builders at the top (events of real v1beta messages, datasets) serve test_logs_filter.py
too.
"""

from __future__ import annotations

import asyncio
import base64
import json
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any, cast

import pytest
import sqlalchemy as sa
from alembic import command
from google.protobuf import json_format
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import AsyncConnection

from gemini_gateway.generated.google.ai.generativelanguage.v1 import (
    generative_service_pb2 as v1_service,
)
from gemini_gateway.generated.google.ai.generativelanguage.v1beta import (
    content_pb2,
    generative_service_pb2,
)
from gemini_gateway.server.filters import FilterError
from gemini_gateway.server.log_event import LogEvent, LoggingPolicy, LogNotifier, LogSkip
from gemini_gateway.server.recorder import DROPPED
from gemini_gateway.server.store import Store, open_store
from gemini_gateway.server.store import logs as logs_module
from gemini_gateway.server.store.engine import alembic_config, check_schema, upgrade
from gemini_gateway.server.store.log_tables import (
    DatasetLog,
    DatasetRow,
    LoggingSettingsRow,
    RequestLog,
)
from gemini_gateway.server.store.logs import (
    LogRecord,
    LogWriter,
    SettingsRecord,
    count_logs,
    delete_logs,
    get_logs,
    list_logs,
    log_ids_select,
    merge_stream_chunks,
    purge_expired,
    read_all_overrides,
    read_settings,
    update_settings,
)
from tests.store.support import T0, FreshUrl

Request = generative_service_pb2.GenerateContentRequest
Response = generative_service_pb2.GenerateContentResponse
Candidate = generative_service_pb2.Candidate
Content = content_pb2.Content
Part = content_pb2.Part

POLICY = LoggingPolicy(
    enabled=True, max_logs=1000, retention_s=55 * 86_400.0, at_limit="stop_logging"
)
T0_MS = int(T0.timestamp() * 1000)


def log_id(n: int) -> str:
    """The id of the n-th log: ids sort as n does, as arrival time orders real ones."""
    return f"{T0_MS + n:012x}{n:012x}"


def request(
    prompt: str = "Hello there",
    *,
    system: str | None = None,
    history: Sequence[tuple[str, str]] = (),
    model: str = "models/gemini-2.5-flash",
) -> Any:
    message = Request(model=model)
    if system is not None:
        message.system_instruction.parts.add(text=system)
    for role, text in history:
        message.contents.add(role=role).parts.add(text=text)
    message.contents.add(role="user").parts.add(text=prompt)
    return message


def response(
    text: str = "General Kenobi",
    *,
    finish: int = Candidate.STOP,
    response_id: str = "resp-1",
    prompt_tokens: int = 10,
    candidates_tokens: int = 5,
) -> Any:
    message = Response(response_id=response_id, model_version="gemini-2.5-flash-001")
    candidate = message.candidates.add(finish_reason=finish)
    candidate.content.role = "model"
    candidate.content.parts.add(text=text)
    usage = message.usage_metadata
    usage.prompt_token_count = prompt_tokens
    usage.candidates_token_count = candidates_tokens
    usage.total_token_count = prompt_tokens + candidates_tokens
    return message


def event(n: int, **fields: Any) -> LogEvent:
    """The n-th log's event (created n minutes after T0), with plausible defaults."""
    values: dict[str, Any] = {
        "id": log_id(n),
        "project": "p1",
        "caller": "alice",
        "create_time": T0 + timedelta(minutes=n),
        "model": "models/gemini-2.5-flash",
        "method": "GenerateContent",
        "api_version": "v1beta",
        "labels": {},
        "status": "OK",
        "error_message": "",
        "latency_ms": 800.0,
        "first_chunk_ms": None,
        "prompt_tokens": 10,
        "candidates_tokens": 5,
        "cached_tokens": 0,
        "thoughts_tokens": 0,
        "tool_use_tokens": 0,
        "total_tokens": 15,
        "incomplete": False,
        "request": request(),
        "responses": [response()],
        "chunk_offsets_ms": [],
    }
    values.update(fields)
    return LogEvent(**values)


async def write(
    store: Store,
    events: Sequence[LogEvent],
    policy: LoggingPolicy | Mapping[str, LoggingPolicy] = POLICY,
) -> None:
    """Write `events` as the recorder does: one transaction, then the after-commit hook."""

    def policy_for(project: str) -> LoggingPolicy:
        return policy[project] if isinstance(policy, Mapping) else policy

    writer = LogWriter(policy_for)
    async with store.begin() as conn:
        after = await writer(conn, events)
    if after is not None:
        after()


async def add_to_dataset(store: Store, project: str, dataset: str, ids: Sequence[str]) -> None:
    """Create `dataset` if needed and put the logs `ids` in it."""
    async with store.begin() as conn:
        exists = await conn.execute(
            sa.select(DatasetRow.dataset_id).where(
                DatasetRow.project == project, DatasetRow.dataset_id == dataset
            )
        )
        if exists.first() is None:
            await conn.execute(
                sa.insert(DatasetRow).values(
                    project=project,
                    dataset_id=dataset,
                    display_name=dataset,
                    description="",
                    create_time=T0,
                    update_time=T0,
                )
            )
        if ids:
            await conn.execute(
                sa.insert(DatasetLog),
                [
                    {"project": project, "dataset_id": dataset, "log_id": i, "add_time": T0}
                    for i in ids
                ],
            )


async def member_ids(store: Store) -> set[tuple[str, str]]:
    async with store.connect() as conn:
        rows = await conn.execute(sa.select(DatasetLog.dataset_id, DatasetLog.log_id))
        return {(dataset, log) for dataset, log in rows}


def names(records: Sequence[LogRecord]) -> list[int]:
    """The n of each record (see log_id), in the order given."""
    return [int(record.id[12:], 16) for record in records]


async def all_pages(store: Store, project: str = "p1", **kwargs: Any) -> list[int]:
    seen: list[int] = []
    token = ""
    while True:
        records, token = await list_logs(store, project, page_token=token, **kwargs)
        seen.extend(names(records))
        if not token:
            return seen


class Notes:
    """A LogNotifier that remembers what it was told, inside and after the transaction."""

    def __init__(self) -> None:
        self.inside: list[dict[str, list[str]]] = []
        self.after: list[dict[str, list[str]]] = []

    async def notify_in_transaction(
        self, conn: AsyncConnection, written: Mapping[str, Sequence[str]]
    ) -> None:
        self.inside.append({k: list(v) for k, v in written.items()})

    def published(self, written: Mapping[str, Sequence[str]]) -> None:
        self.after.append({k: list(v) for k, v in written.items()})


# --- the writer ------------------------------------------------------------------------------


async def test_a_unary_call_round_trips(store: Store) -> None:
    sent = request(
        "What is the capital of France?",
        system="Answer briefly.",
        history=[("user", "Hi"), ("model", "Hello! How can I help?")],
    )
    sent.generation_config.temperature = 0.5
    sent.generation_config.response_mime_type = "text/plain"
    sent.labels["team"] = "search"
    answer = response("Paris.", response_id="r-42")
    await write(
        store,
        [
            event(
                1,
                request=sent,
                responses=[answer],
                labels={"team": "search", "env": "prod"},
                prompt_tokens=12,
                candidates_tokens=2,
                cached_tokens=4,
                thoughts_tokens=3,
                tool_use_tokens=1,
                total_tokens=18,
                latency_ms=432.5,
            )
        ],
    )

    [record] = await get_logs(store, "p1", [log_id(1)], full=True)
    assert record.full
    assert (record.project, record.caller, record.model, record.method, record.api_version) == (
        "p1",
        "alice",
        "models/gemini-2.5-flash",
        "GenerateContent",
        "v1beta",
    )
    assert record.create_time == T0 + timedelta(minutes=1)
    assert record.create_time.tzinfo is not None
    assert record.labels == {"env": "prod", "team": "search"}
    assert (record.status, record.error_message, record.latency_ms) == ("OK", "", 432.5)
    assert record.first_chunk_ms is None
    tokens = (
        record.prompt_tokens,
        record.candidates_tokens,
        record.cached_tokens,
        record.thoughts_tokens,
        record.tool_use_tokens,
        record.total_tokens,
    )
    assert tokens == (12, 2, 4, 3, 1, 18)
    assert (record.finish_reason, record.response_id) == ("STOP", "r-42")
    assert record.prompt_preview == "What is the capital of France?"
    assert record.response_preview == "Paris."
    assert record.datasets == []
    assert record.chunk_offsets_ms == []
    # proto3 JSON in the REST API's camelCase names, compact.
    stored = json.loads(record.request_json)
    assert "systemInstruction" in stored and "generationConfig" in stored
    assert stored["generationConfig"]["responseMimeType"] == "text/plain"
    assert stored["labels"] == {"team": "search"}
    assert ": " not in record.request_json
    assert json_format.Parse(record.request_json, Request()) == sent
    assert json_format.Parse(record.response_json, Response()) == answer
    assert json.loads(record.response_json)["usageMetadata"]["totalTokenCount"] == 15

    # The basic view leaves the messages out; the list shows the same figures.
    [basic] = (await list_logs(store, "p1"))[0]
    assert not basic.full and basic.request_json == basic.response_json == ""
    assert basic.prompt_preview == record.prompt_preview
    assert basic.labels == record.labels


async def test_a_stream_is_stored_as_one_merged_response(store: Store) -> None:
    def chunk(*parts: Any, index: int | None = None, **fields: Any) -> Any:
        message = Response(response_id="stream-1")
        candidate = message.candidates.add()
        if index is not None:
            candidate.index = index
        candidate.content.role = "model"
        candidate.content.parts.extend(parts)
        for name, value in fields.items():
            if name == "usage":
                message.usage_metadata.CopyFrom(value)
            else:
                setattr(candidate, name, value)
        return message

    call = Part()
    call.function_call.name = "lookup"
    call.function_call.args.update({"q": "weather"})
    chunks = [
        chunk(Part(text="Let me think", thought=True)),
        chunk(Part(text=" about it.", thought=True)),
        chunk(Part(text="Hel")),
        chunk(Part(text="lo, ")),
        chunk(call),
        chunk(Part(text="wor")),
        chunk(Part(text="ld!"), finish_reason=Candidate.STOP),
        chunk(
            usage=Response.UsageMetadata(
                prompt_token_count=7, candidates_token_count=9, total_token_count=16
            )
        ),
    ]
    # A second candidate (index 1) interleaved, named by index only.
    second = Response()
    other = second.candidates.add(index=1)
    other.content.parts.add(text="Alt ")
    third = Response()
    other = third.candidates.add(index=1, finish_reason=Candidate.MAX_TOKENS)
    other.content.parts.add(text="answer")
    chunks[3].candidates.append(second.candidates[0])
    chunks[5].candidates.append(third.candidates[0])
    offsets = [120.0, 180.5, 240.0, 300.0, 360.0, 420.0, 480.0, 481.25]
    await write(
        store,
        [
            event(
                1,
                method="StreamGenerateContent",
                responses=chunks,
                chunk_offsets_ms=offsets,
                first_chunk_ms=120.0,
            )
        ],
    )

    [record] = await get_logs(store, "p1", [log_id(1)], full=True)
    merged = json_format.Parse(record.response_json, Response())
    assert merged.response_id == "stream-1"
    assert merged.usage_metadata.total_token_count == 16
    first, second_candidate = merged.candidates
    parts = list(first.content.parts)
    assert [(p.text, p.thought) for p in parts if p.text] == [
        ("Let me think about it.", True),
        ("Hello, ", False),
        ("world!", False),
    ]
    assert [p.WhichOneof("data") for p in parts] == ["text", "text", "function_call", "text"]
    assert parts[2].function_call.name == "lookup"
    assert first.content.role == "model"
    assert first.finish_reason == Candidate.STOP
    assert second_candidate.index == 1
    assert [p.text for p in second_candidate.content.parts] == ["Alt answer"]
    assert second_candidate.finish_reason == Candidate.MAX_TOKENS
    assert record.finish_reason == "STOP"
    assert record.response_preview == "Hello, world!"  # thoughts are not the answer
    assert record.chunk_offsets_ms == offsets
    assert record.first_chunk_ms == 120.0


async def test_v1_calls_are_logged_too(store: Store) -> None:
    sent = v1_service.GenerateContentRequest(model="models/gemini-2.5-flash")
    sent.contents.add(role="user").parts.add(text="Bonjour")
    chunks = []
    for text in ("Sa", "lut"):
        chunk = v1_service.GenerateContentResponse(response_id="v1-r")
        chunk.candidates.add().content.parts.add(text=text)
        chunks.append(chunk)
    chunks[-1].candidates[0].finish_reason = v1_service.Candidate.STOP
    await write(store, [event(1, api_version="v1", request=sent, responses=chunks)])
    [record] = await get_logs(store, "p1", [log_id(1)], full=True)
    assert (record.api_version, record.prompt_preview, record.response_preview) == (
        "v1",
        "Bonjour",
        "Salut",
    )
    assert record.finish_reason == "STOP"
    expected = v1_service.GenerateContentResponse(response_id="v1-r")
    only = expected.candidates.add(finish_reason=v1_service.Candidate.STOP)
    only.content.parts.add(text="Salut")
    assert json_format.Parse(record.response_json, v1_service.GenerateContentResponse()) == expected
    assert names((await list_logs(store, "p1", filter_text="bonjour salut"))[0]) == [1]


async def _stored_messages(store: Store, n: int) -> tuple[Any, ...]:
    columns = (RequestLog.request_pb, RequestLog.response_pb, RequestLog.request_json)
    async with store.connect() as conn:
        row = (await conn.execute(sa.select(*columns).where(RequestLog.id == log_id(n)))).one()
    return tuple(row)


async def test_messages_are_kept_as_protobuf_bytes_and_read_as_json(store: Store) -> None:
    sent = request("Ping")
    sent.labels["team"] = "search"
    answer = response("Pong")
    await write(
        store,
        [event(1, request=sent, responses=[answer]), event(2, status="INTERNAL", responses=[])],
    )
    request_pb, response_pb, request_json = await _stored_messages(store, 1)
    assert Request.FromString(request_pb) == sent
    assert Response.FromString(response_pb) == answer
    assert request_json == ""  # no JSON is made per call
    # A call without an answer keeps no response bytes, and reads as no response.
    assert (await _stored_messages(store, 2))[1] is None
    [second, first] = await get_logs(store, "p1", [log_id(1), log_id(2)], full=True)
    # The compact proto3 JSON the writer made before it kept bytes.
    as_before = json.dumps(json_format.MessageToDict(sent), separators=(",", ":"))
    assert first.request_json == as_before
    assert json_format.Parse(first.response_json, Response()) == answer
    assert second.response_json == ""


async def test_bytes_that_do_not_parse_read_as_no_message(store: Store) -> None:
    await write(store, [event(1)])
    async with store.begin() as conn:
        await conn.execute(
            sa.update(RequestLog).where(RequestLog.id == log_id(1)).values(request_pb=b"\xff\xff")
        )
    [record] = await get_logs(store, "p1", [log_id(1)], full=True)
    assert record.request_json == ""
    assert json_format.Parse(record.response_json, Response()) == response()


def test_merging_keeps_the_last_non_empty_value_of_every_other_field() -> None:
    first = Response(response_id="a", model_version="m-1")
    candidate = first.candidates.add(finish_reason=Candidate.STOP)
    candidate.safety_ratings.add(probability=1)
    candidate.content.parts.add(text="x")
    later = Response(model_version="m-2")
    later.candidates.add().content.parts.add(text="y")
    merged = merge_stream_chunks([first, later])
    assert merged is not None
    assert isinstance(merged, Response)
    assert (merged.response_id, merged.model_version) == ("a", "m-2")
    [only] = merged.candidates
    assert only.finish_reason == Candidate.STOP
    assert len(only.safety_ratings) == 1
    assert [p.text for p in only.content.parts] == ["xy"]
    assert not only.HasField("index")
    # The chunks themselves are not changed.
    assert [p.text for p in first.candidates[0].content.parts] == ["x"]
    assert merge_stream_chunks([]) is None
    assert merge_stream_chunks([first]) is first


async def test_previews_are_cut_and_come_from_the_last_user_turn(store: Store) -> None:
    long_prompt = "é" * 150 + "z" * 150
    sent = request(long_prompt, history=[("user", "an earlier question"), ("model", "an answer")])
    await write(store, [event(1, request=sent, responses=[response("ü" * 500)])])
    [record] = await get_logs(store, "p1", [log_id(1)])
    assert record.prompt_preview == "é" * 150 + "z" * 50
    assert record.response_preview == "ü" * 200


async def test_search_covers_every_text_and_previews_leave_thoughts_out(store: Store) -> None:
    sent = request("", system="alpha", history=[("user", "bravo"), ("model", "charlie")])
    last_turn = sent.contents[-1]
    del last_turn.parts[:]
    last_turn.parts.extend(
        [Part(text="delta"), Part(text="echo", thought=True), Part(text="foxtrot")]
    )
    answer = response("golf")
    answer.candidates[0].content.parts.insert(0, Part(text="hotel", thought=True))
    second = answer.candidates.add(finish_reason=Candidate.MAX_TOKENS)
    second.content.parts.add(text="india")
    await write(store, [event(1, request=sent, responses=[answer]), event(2)])
    [record] = await get_logs(store, "p1", [log_id(1)])
    # The last user turn, a line per part; the first candidate's answer: no thoughts.
    assert (record.prompt_preview, record.response_preview) == ("delta\nfoxtrot", "golf")
    assert record.finish_reason == "STOP"  # the first candidate's
    for word in ("alpha", "bravo", "charlie", "delta", "echo", "foxtrot", "golf", "hotel", "india"):
        assert names((await list_logs(store, "p1", filter_text=word))[0]) == [1], word


async def test_a_failed_call_has_no_response_and_keeps_its_error(store: Store) -> None:
    await write(
        store,
        [
            event(
                1,
                status="UNAVAILABLE",
                error_message="upstream\x00 down \udc80",
                responses=[],
                prompt_tokens=0,
                candidates_tokens=0,
                total_tokens=0,
            )
        ],
    )
    [record] = await get_logs(store, "p1", [log_id(1)], full=True)
    assert record.status == "UNAVAILABLE"
    assert record.error_message == "upstream down ?"
    assert record.response_json == ""
    assert (record.response_preview, record.finish_reason, record.response_id) == ("", "", "")
    assert record.prompt_preview == "Hello there"


async def test_an_event_that_cannot_be_converted_is_dropped_alone(store: Store) -> None:
    dropped = DROPPED.labels("unconvertible")
    before = dropped._value.get()
    # A response of the wrong type: the merge cannot read it.
    bad = event(2, responses=[content_pb2.Content(role="model")], method="StreamGenerateContent")
    await write(store, [event(1), bad, event(3)])
    assert await all_pages(store) == [3, 1]
    assert dropped._value.get() == before + 1


async def test_text_with_nul_and_any_script_is_stored(store: Store) -> None:
    sent = request("naïve \x00 日本語 русский हिन्दी")
    await write(store, [event(1, request=sent, responses=[response("ok\x00")])])
    [record] = await get_logs(store, "p1", [log_id(1)], full=True)
    assert record.prompt_preview == "naïve  日本語 русский हिन्दी"
    assert json_format.Parse(record.request_json, Request()) == sent
    assert record.response_preview == "ok"


async def test_the_notifier_hears_of_each_write_inside_and_after_the_transaction(
    store: Store,
) -> None:
    notes = Notes()
    writer = LogWriter(lambda project: POLICY, cast(LogNotifier, notes))
    async with store.begin() as conn:
        after = await writer(conn, [event(3, project="p2"), event(1), event(2)])
        assert notes.after == []
    assert notes.inside == [{"p1": [log_id(1), log_id(2)], "p2": [log_id(3)]}]  # oldest first
    assert after is not None
    after()
    assert notes.after == notes.inside
    # Nothing written (all skipped): nobody is told.
    tight = LoggingPolicy(enabled=True, max_logs=2, retention_s=1e6, at_limit="stop_logging")
    writer = LogWriter(lambda project: tight, cast(LogNotifier, notes))
    async with store.begin() as conn:
        assert await writer(conn, [event(4)]) is None
    assert len(notes.inside) == len(notes.after) == 1


async def test_logs_are_written_even_if_logging_was_switched_off_since(store: Store) -> None:
    off = LoggingPolicy(enabled=False, max_logs=10, retention_s=1e6, at_limit="stop_logging")
    await write(store, [event(1)], off)
    assert await count_logs(store, "p1") == 1


# --- limits ----------------------------------------------------------------------------------


def limited(max_logs: int, at_limit: str) -> LoggingPolicy:
    return LoggingPolicy(enabled=True, max_logs=max_logs, retention_s=1e9, at_limit=at_limit)  # type: ignore[arg-type]


async def test_stop_logging_stores_what_fits_and_counts_the_rest(store: Store) -> None:
    policy = limited(3, "stop_logging")
    await write(store, [event(1), event(2)], policy)
    await write(store, [event(5), event(3), event(4)], policy)  # in no particular order
    assert await all_pages(store) == [3, 2, 1]  # the oldest of the batch fit
    assert (await read_settings(store, "p1")).skipped_at_limit == 2
    await write(store, [event(6)], policy)
    settings = await read_settings(store, "p1")
    assert settings.skipped_at_limit == 3  # cumulative
    assert (settings.evicted, settings.expired, settings.skipped_media) == (0, 0, 0)
    # Other projects have their own limit.
    await write(store, [event(7, project="p2")], policy)
    assert await count_logs(store, "p2") == 1
    assert (await read_settings(store, "p2")).skipped_at_limit == 0


async def test_evict_oldest_keeps_the_newest_and_never_evicts_dataset_logs(store: Store) -> None:
    policy = limited(3, "evict_oldest")
    await write(store, [event(1), event(2), event(3)], policy)
    await add_to_dataset(store, "p1", "keep", [log_id(1)])
    await write(store, [event(4), event(5)], policy)
    assert await all_pages(store) == [5, 4, 1]  # 2 and 3 made room; 1 is in a dataset
    assert (await read_settings(store, "p1")).evicted == 2

    # A batch larger than the limit: its own oldest never get in.
    await write(store, [event(n) for n in range(6, 11)], policy)
    assert await all_pages(store) == [10, 9, 1]
    settings = await read_settings(store, "p1")
    assert (settings.evicted, settings.skipped_at_limit) == (2 + 2 + 3, 0)

    # Every log in a dataset and no room: new logs are skipped and counted.
    await add_to_dataset(store, "p1", "keep", [log_id(9), log_id(10)])
    await write(store, [event(11), event(12)], policy)
    assert await all_pages(store) == [10, 9, 1]
    settings = await read_settings(store, "p1")
    assert (settings.evicted, settings.skipped_at_limit) == (7, 2)
    assert await member_ids(store) == {("keep", log_id(n)) for n in (1, 9, 10)}


async def test_a_lowered_limit_is_restored_under_evict_oldest(store: Store) -> None:
    await write(store, [event(n) for n in range(1, 7)], limited(10, "evict_oldest"))
    await write(store, [event(7)], limited(3, "evict_oldest"))
    assert await all_pages(store) == [7, 6, 5]
    assert (await read_settings(store, "p1")).evicted == 4


async def test_each_project_follows_its_own_policy_in_one_batch(store: Store) -> None:
    await write(store, [event(1), event(2, project="p2")], POLICY)
    policies = {"p1": limited(1, "stop_logging"), "p2": limited(1, "evict_oldest")}
    await write(store, [event(3), event(4, project="p2")], policies)
    assert await all_pages(store, "p1") == [1]
    assert await all_pages(store, "p2") == [4]
    assert (await read_settings(store, "p1")).skipped_at_limit == 1
    assert (await read_settings(store, "p2")).evicted == 1


async def test_skips_are_counted_per_project_and_reason(store: Store) -> None:
    writer = LogWriter(lambda project: POLICY)
    async with store.begin() as conn:
        await writer.write_skips(
            conn,
            [
                LogSkip("p1", "media"),
                LogSkip("p1", "media", 2),
                LogSkip("p2", "at_limit"),
                LogSkip("p1", "at_limit", 4),
            ],
        )
    async with store.begin() as conn:
        await writer.write_skips(conn, [LogSkip("p1", "media")])
        await writer.write_skips(conn, [])
    p1, p2 = await read_settings(store, "p1"), await read_settings(store, "p2")
    assert (p1.skipped_media, p1.skipped_at_limit) == (4, 4)
    assert (p2.skipped_media, p2.skipped_at_limit) == (0, 1)
    # Counters are not overrides.
    assert (p1.enabled, p1.max_logs, p1.retention_s, p1.at_limit, p1.update_time) == (
        None,
        None,
        None,
        None,
        None,
    )


async def test_writers_at_once_never_overshoot_the_limit(store: Store) -> None:
    policy = limited(5, "stop_logging")
    writer = LogWriter(lambda project: policy)
    await write(store, [event(100)], policy)  # the project's settings row exists already
    started = asyncio.Event()

    async def one(start: int) -> None:
        async with store.begin() as conn:
            await writer(conn, [event(start + i) for i in range(4)])
            started.set()
            await asyncio.sleep(0.05)  # still uncommitted while the others write

    async def later(start: int) -> None:
        await started.wait()
        await one(start)

    await asyncio.gather(one(0), later(10), later(20))
    assert await count_logs(store, "p1") == 5
    assert (await read_settings(store, "p1")).skipped_at_limit == 8


async def rows_per_project(store: Store) -> dict[str, int]:
    """count(*) of request_logs per project: what the kept counts must equal."""
    query = sa.select(RequestLog.project, sa.func.count()).group_by(RequestLog.project)
    async with store.connect() as conn:
        return {project: int(n) for project, n in (await conn.execute(query)).all()}


async def assert_counts_kept(store: Store, projects: Sequence[str] = ("p1", "p2")) -> None:
    actual = await rows_per_project(store)
    kept = {project: await count_logs(store, project) for project in projects}
    assert kept == {project: actual.get(project, 0) for project in projects}


async def test_the_kept_log_count_follows_every_write_and_delete(store: Store) -> None:
    """The writer reads each project's count from logging_settings, not from the table."""
    await write(store, [event(n) for n in range(1, 6)], limited(4, "stop_logging"))
    await assert_counts_kept(store)  # 4 stored, 1 skipped
    await add_to_dataset(store, "p1", "keep", [log_id(1)])
    await write(store, [event(n) for n in range(6, 9)], limited(4, "evict_oldest"))
    await assert_counts_kept(store)  # 3 evicted, never the dataset's log
    assert await all_pages(store) == [8, 7, 6, 1]
    await write(store, [event(n, project="p2") for n in range(20, 23)])
    await delete_logs(store, "p1", ids=[log_id(6), log_id(99)])
    await assert_counts_kept(store)
    await delete_logs(store, "p2", filter_text='model = "models/gemini-2.5-flash"')
    await assert_counts_kept(store)
    await write(store, [event(30, create_time=T0 - timedelta(days=400))])
    assert await purge_expired(store, lambda project: POLICY, now=T0) == 1
    await assert_counts_kept(store)
    await delete_logs(store, "p1", everything=True)
    await assert_counts_kept(store)
    assert await count_logs(store, "p1") == 0
    assert await count_logs(store, "never-logged") == 0


async def test_writes_and_deletes_at_once_keep_the_count_exact(store: Store) -> None:
    """On PostgreSQL a delete takes the project's row before any log, as the writer does:
    the two wait for each other, never deadlock, and the count stays exact."""
    policy = limited(6, "evict_oldest")
    writer = LogWriter(lambda project: policy)
    await write(store, [event(n) for n in range(1, 7)], policy)

    async def write_batch(start: int) -> None:
        async with store.begin() as conn:
            await writer(conn, [event(start + i) for i in range(4)])
            await asyncio.sleep(0.02)  # evicted rows stay locked while the others run

    async def delete_some(ids: Sequence[int]) -> None:
        await delete_logs(store, "p1", ids=[log_id(n) for n in ids])

    await asyncio.gather(
        write_batch(10), delete_some([1, 2, 11]), write_batch(20), delete_some([3, 21, 22])
    )
    await assert_counts_kept(store, ["p1"])
    assert await count_logs(store, "p1") <= 6


# --- paging, reading, deleting ----------------------------------------------------------------


async def test_pages_are_newest_first_and_stable_while_logs_arrive(store: Store) -> None:
    await write(store, [event(n) for n in range(1, 8)])
    page, token = await list_logs(store, "p1", page_size=3)
    assert names(page) == [7, 6, 5]
    await write(store, [event(n) for n in range(8, 12)])  # newer logs arrive meanwhile
    page, token = await list_logs(store, "p1", page_size=3, page_token=token)
    assert names(page) == [4, 3, 2]
    page, token = await list_logs(store, "p1", page_size=3, page_token=token)
    assert (names(page), token) == ([1], "")
    assert await all_pages(store, page_size=4) == list(range(11, 0, -1))
    # A page size that divides the count exactly ends without an empty page.
    await write(store, [event(12)])
    page, token = await list_logs(store, "p1", page_size=6)
    page, token = await list_logs(store, "p1", page_size=6, page_token=token)
    assert (len(page), token) == (6, "")
    # Page sizes: 0 is the default, over the maximum is the maximum.
    assert len((await list_logs(store, "p1", page_size=0))[0]) == 12
    with pytest.raises(ValueError, match="page_size"):
        await list_logs(store, "p1", page_size=-1)


async def test_bad_page_tokens_are_refused(store: Store) -> None:
    await write(store, [event(n) for n in range(1, 5)])
    _, token = await list_logs(store, "p1", page_size=2, filter_text='model = "m"')
    assert token == ""
    _, token = await list_logs(store, "p1", page_size=2)
    with pytest.raises(ValueError, match="another filter"):
        await list_logs(store, "p1", page_token=token, filter_text="status = OK")
    with pytest.raises(ValueError, match="another filter or project"):
        await list_logs(store, "p2", page_token=token)
    bad_id = base64.urlsafe_b64encode(b'{"after":"x; DROP","listing":"0"}').decode()
    for garbage in ("not a token", "e30", bad_id, "%%%", token[:-3]):
        with pytest.raises(ValueError, match="page_token"):
            await list_logs(store, "p1", page_token=garbage)


async def test_get_logs_returns_those_that_exist_newest_first(store: Store) -> None:
    await write(store, [event(1), event(2), event(3), event(4, project="p2")])
    await add_to_dataset(store, "p1", "b-set", [log_id(2)])
    await add_to_dataset(store, "p1", "a-set", [log_id(2), log_id(3)])
    found = await get_logs(
        store, "p1", [log_id(1), log_id(2), log_id(3), log_id(4), log_id(9), "not-an-id", log_id(2)]
    )
    assert names(found) == [3, 2, 1]
    assert [r.datasets for r in found] == [["a-set"], ["a-set", "b-set"], []]
    assert await get_logs(store, "p1", []) == []
    filtered = await get_logs(store, "p1", [log_id(1), log_id(2)], filter_text="dataset:*")
    assert names(filtered) == [2]
    many = [log_id(n) for n in range(2000)]  # more ids than one IN list takes
    assert names(await get_logs(store, "p1", many)) == [3, 2, 1]


async def test_deleting_by_ids_filter_or_everything(store: Store) -> None:
    await write(store, [event(n, model="models/a" if n % 2 else "models/b") for n in range(1, 9)])
    await write(store, [event(20, project="p2")])
    await add_to_dataset(store, "p1", "d", [log_id(1), log_id(2)])
    await add_to_dataset(store, "p2", "d", [log_id(20)])

    deleted = await delete_logs(store, "p1", ids=[log_id(1), log_id(20), log_id(99), "bad"])
    assert deleted == 1  # another project's log is not this project's to delete
    assert await member_ids(store) == {("d", log_id(2)), ("d", log_id(20))}  # cascaded
    assert await delete_logs(store, "p1", filter_text='model = "models/b"') == 4
    assert await all_pages(store) == [7, 5, 3]
    assert await member_ids(store) == {("d", log_id(20))}
    assert await delete_logs(store, "p1", ids=[log_id(3), log_id(5)], filter_text="-NOPE") == 2
    assert await delete_logs(store, "p1", everything=True) == 1
    assert await count_logs(store, "p1") == 0
    assert await count_logs(store, "p2") == 1
    with pytest.raises(ValueError, match="say which"):
        await delete_logs(store, "p1")
    with pytest.raises(ValueError, match="no ids and no filter"):
        await delete_logs(store, "p1", everything=True, filter_text="x")
    with pytest.raises(FilterError):
        await delete_logs(store, "p1", filter_text="nope = 1")


async def test_deleting_by_dataset_and_text_filters(store: Store) -> None:
    await write(
        store,
        [
            event(n, request=request(f"prompt {'refund' if n < 3 else 'other'}"))
            for n in range(1, 6)
        ],
    )
    await add_to_dataset(store, "p1", "d", [log_id(2), log_id(3)])
    assert await delete_logs(store, "p1", filter_text='dataset = "d" AND refund') == 1
    assert await all_pages(store) == [5, 4, 3, 1]
    assert await delete_logs(store, "p1", filter_text="-dataset:*") == 3
    assert await all_pages(store) == [3]


async def test_log_ids_select_feeds_statements_over_the_memberships(store: Store) -> None:
    await write(store, [event(n) for n in range(1, 5)])
    await add_to_dataset(store, "p1", "d", [log_id(1), log_id(2)])
    await add_to_dataset(store, "p1", "e", [])
    dialect = store.dialect
    members = cast(sa.Table, DatasetLog.__table__)
    async with store.begin() as conn:
        # INSERT ... SELECT: logs not in d (all saying hello) join e.
        chosen = log_ids_select("p1", 'dataset != "d" AND hello', dialect).subquery()
        await conn.execute(
            sa.insert(members).from_select(
                ["project", "dataset_id", "log_id", "add_time"],
                sa.select(
                    sa.literal("p1"),
                    sa.literal("e"),
                    chosen.c.id,
                    sa.literal(T0, DatasetLog.add_time.type),
                ),
            )
        )
        # DELETE FROM dataset_logs WHERE log_id IN (the logs of d): the filter's own
        # membership test must not be confused with the statement's table.
        in_d = log_ids_select("p1", 'dataset = "d"', dialect).scalar_subquery()
        await conn.execute(
            members.delete().where(members.c.dataset_id == "d", members.c.log_id.in_(in_d))
        )
    assert await member_ids(store) == {("e", log_id(3)), ("e", log_id(4))}


# --- expiry and settings ----------------------------------------------------------------------


async def test_purge_deletes_expired_logs_but_keeps_dataset_logs(store: Store) -> None:
    day = 86_400.0
    old = [event(n, create_time=T0 - timedelta(days=60 - n)) for n in range(1, 4)]
    await write(
        store, [*old, event(10), event(11, project="p2", create_time=T0 - timedelta(days=40))]
    )
    await add_to_dataset(store, "p1", "keep", [log_id(2)])
    policies = {
        "p1": LoggingPolicy(True, 1000, 55 * day, "stop_logging"),
        "p2": LoggingPolicy(True, 1000, 30 * day, "stop_logging"),
    }
    purged = await purge_expired(store, policies.__getitem__, now=T0)
    assert purged == 3
    assert await all_pages(store, "p1") == [10, 2]
    assert await all_pages(store, "p2") == []
    assert (await read_settings(store, "p1")).expired == 2
    assert (await read_settings(store, "p2")).expired == 1
    assert await purge_expired(store, policies.__getitem__, now=T0) == 0
    # A retention beyond the calendar keeps everything.
    forever = LoggingPolicy(True, 1000, 1e300, "stop_logging")
    assert await purge_expired(store, lambda project: forever, now=T0) == 0


async def test_purge_works_in_chunks(store: Store, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(logs_module, "PURGE_CHUNK", 3)
    await write(store, [event(n, create_time=T0 - timedelta(days=100)) for n in range(1, 9)])
    assert await purge_expired(store, lambda project: POLICY, now=T0) == 8
    assert (await read_settings(store, "p1")).expired == 8


async def test_settings_round_trip(store: Store) -> None:
    assert await read_settings(store, "p1") == SettingsRecord()
    assert await read_all_overrides(store) == {}
    when = datetime(2026, 3, 2, 12, 30, tzinfo=UTC)
    record = await update_settings(
        store,
        "p1",
        {"enabled": True, "max_logs": 50, "retention_s": 3600, "at_limit": "evict_oldest"},
        now=when,
    )
    assert record == SettingsRecord(
        enabled=True, max_logs=50, retention_s=3600.0, at_limit="evict_oldest", update_time=when
    )
    assert await read_settings(store, "p1") == record
    # Counters survive a change; a None returns a setting to its default.
    async with store.begin() as conn:
        await LogWriter(lambda project: POLICY).write_skips(conn, [LogSkip("p1", "media")])
    later = when + timedelta(hours=1)
    record = await update_settings(store, "p1", {"max_logs": None, "enabled": False}, now=later)
    assert record == SettingsRecord(
        enabled=False,
        max_logs=None,
        retention_s=3600.0,
        at_limit="evict_oldest",
        update_time=later,
        skipped_media=1,
    )
    await update_settings(store, "p2", {"at_limit": "stop_logging"}, now=when)
    overrides = await read_all_overrides(store)
    assert overrides == {
        "p1": record,
        "p2": SettingsRecord(at_limit="stop_logging", update_time=when),
    }
    assert await update_settings(store, "p1", {}) == record


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"enabled": "yes"}, "enabled"),
        ({"max_logs": 0}, "max_logs"),
        ({"max_logs": True}, "max_logs"),
        ({"max_logs": 2**31}, "max_logs"),
        ({"retention_s": -1}, "retention_s"),
        ({"retention_s": float("inf")}, "retention_s"),
        ({"at_limit": "drop_everything"}, "at_limit"),
        ({"colour": "blue"}, "unknown logging setting"),
    ],
)
async def test_bad_settings_are_refused(
    store: Store, changes: dict[str, object], message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        await update_settings(store, "p1", changes)
    assert await read_all_overrides(store) == {}


# --- the free-text search set-up of the migration ---------------------------------------------


def _downgrade(connection: Connection, revision: str) -> None:
    cfg = alembic_config()
    cfg.attributes["connection"] = connection
    command.downgrade(cfg, revision)


async def _search_objects(store: Store) -> set[str]:
    if store.dialect == "sqlite":
        query = "SELECT name FROM sqlite_master WHERE name LIKE 'request_logs_fts%'"
    else:
        query = "SELECT indexname FROM pg_indexes WHERE indexname = 'ix_request_logs_search_text'"
    async with store.connect() as conn:
        return set((await conn.exec_driver_sql(query)).scalars())


async def test_logs_written_before_the_bytes_revision_read_as_they_were(
    fresh_url: FreshUrl,
) -> None:
    """Rows of revision 0004 kept JSON text; after the upgrade they read the same, next to
    rows written with bytes."""
    store = await open_store(await fresh_url())
    try:
        async with store.engine.begin() as conn:
            await conn.run_sync(_downgrade, "0004_tuned_model_owners")
        old_request = '{"contents":[{"parts":[{"text":"from before"}],"role":"user"}]}'
        old_response = '{"candidates":[{"content":{"parts":[{"text":"old answer"}]}}]}'
        columns = {
            "id": log_id(1), "project": "p1", "create_time": T0, "caller": "alice",
            "model": "models/gemini-2.5-flash", "method": "GenerateContent",
            "api_version": "v1beta", "labels": {}, "status": "OK", "error_message": "",
            "latency_ms": 1.0, "first_chunk_ms": None, "prompt_tokens": 1,
            "candidates_tokens": 1, "cached_tokens": 0, "thoughts_tokens": 0,
            "tool_use_tokens": 0, "total_tokens": 2, "incomplete": False,
            "finish_reason": "", "response_id": "", "prompt_preview": "from before",
            "response_preview": "old answer", "search_text": "from before old answer",
            "request_json": old_request, "response_json": old_response,
            "chunk_offsets_ms": [],
        }  # fmt: skip
        old_table = sa.table(
            "request_logs",
            *(
                sa.column(c.name, c.type)
                for c in RequestLog.__table__.columns
                if not c.name.endswith("_pb")
            ),
        )
        async with store.begin() as conn:
            await conn.execute(old_table.insert().values(**columns))
        await upgrade(store.engine)
        await write(store, [event(2, request=request("from after"))])

        [new, old] = await get_logs(store, "p1", [log_id(1), log_id(2)], full=True)
        assert (old.request_json, old.response_json) == (old_request, old_response)
        assert json_format.Parse(new.request_json, Request()) == request("from after")
        assert names((await list_logs(store, "p1", filter_text="before"))[0]) == [1]
    finally:
        await store.close()


async def test_the_log_count_revision_counts_the_logs_already_there(
    fresh_url: FreshUrl,
) -> None:
    store = await open_store(await fresh_url())
    try:
        await write(store, [event(1), event(2), event(3, project="p2")])
        async with store.engine.begin() as conn:
            await conn.run_sync(_downgrade, "0005_log_messages_as_bytes")
            # A project with logs and no settings row (logs written by other means).
            await conn.execute(
                sa.delete(LoggingSettingsRow).where(LoggingSettingsRow.project == "p2")
            )
        await upgrade(store.engine)
        await assert_counts_kept(store)
        assert (await count_logs(store, "p1"), await count_logs(store, "p2")) == (2, 1)
    finally:
        await store.close()


async def test_the_migration_sets_up_and_removes_free_text_search(fresh_url: FreshUrl) -> None:
    store = await open_store(await fresh_url())
    try:
        expected = (
            {"request_logs_fts", "request_logs_fts_insert", "request_logs_fts_delete",
             "request_logs_fts_update"}
            if store.dialect == "sqlite"
            else {"ix_request_logs_search_text"}
        )  # fmt: skip
        assert expected <= await _search_objects(store)
        await check_schema(store.engine)  # the search objects are no drift

        # Kept in step with the rows: insert, update, delete.
        await write(store, [event(1, request=request("alpha beta"))])
        async with store.begin() as conn:
            await conn.execute(
                sa.update(RequestLog).where(RequestLog.id == log_id(1)).values(search_text="gamma")
            )
        assert await all_pages(store, filter_text="gamma") == [1]
        assert await all_pages(store, filter_text="alpha") == []
        await delete_logs(store, "p1", everything=True)
        assert await all_pages(store, filter_text="gamma") == []

        async with store.engine.begin() as conn:
            await conn.run_sync(_downgrade, "0002_usage_by_label")
        assert await _search_objects(store) == set()
        await upgrade(store.engine)
        assert expected <= await _search_objects(store)
        await write(store, [event(2, request=request("delta"))])
        assert await all_pages(store, filter_text="delta") == [2]
    finally:
        await store.close()
