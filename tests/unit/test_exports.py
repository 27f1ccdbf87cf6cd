"""The export writers without a server: each format read back by what would consume it."""

from __future__ import annotations

import csv
import io
import json
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import pytest
from google.protobuf import json_format

from gemini_gateway.client.tuning import load_examples
from gemini_gateway.generated.google.ai.generativelanguage.v1beta import (
    content_pb2,
    generative_service_pb2,
    model_service_pb2,
    tuned_model_pb2,
)
from gemini_gateway.server import validation
from gemini_gateway.server.exports import (
    CSV_COLUMNS,
    ExportFormat,
    ExportWriter,
    chunked,
    content_type,
    export_pieces,
    file_name,
    prompt_text,
    response_text,
    stored_json,
)

T0 = datetime(2026, 3, 1, 12, 30, 15, 250000, tzinfo=UTC)
MODEL = "models/gemini-2.5-flash"
AWKWARD = 'a "quoted", comma-laden\nmulti-line text\r\nwith ünïcödé and a trailing quote"'


def request_json(
    turns: Sequence[tuple[str, str]],
    system: str | None = None,
    labels: Mapping[str, str] | None = None,
) -> str:
    request = generative_service_pb2.GenerateContentRequest(
        model=MODEL,
        contents=[
            content_pb2.Content(role=role, parts=[content_pb2.Part(text=text)])
            for role, text in turns
        ],
        labels=dict(labels or {}),
    )
    if system is not None:
        request.system_instruction.parts.add(text=system)
    return json_format.MessageToJson(request)


def response_json(*parts: content_pb2.Part) -> str:
    response = generative_service_pb2.GenerateContentResponse(
        candidates=[
            generative_service_pb2.Candidate(
                content=content_pb2.Content(role="model", parts=list(parts))
            ),
            generative_service_pb2.Candidate(
                content=content_pb2.Content(role="model", parts=[content_pb2.Part(text="2nd")])
            ),
        ]
    )
    return json_format.MessageToJson(response)


@dataclass
class Log:
    """A log as the store reads it in full (the fields an export uses)."""

    id: str
    request_json: str
    response_json: str
    status: str = "OK"
    incomplete: bool = False
    project: str = "p1"
    create_time: datetime = T0
    model: str = MODEL
    method: str = "GenerateContent"
    labels: dict[str, str] = field(default_factory=dict)
    prompt_tokens: int = 12
    candidates_tokens: int = 7
    total_tokens: int = 19
    latency_ms: float = 123.4567


def conversation() -> Log:
    return Log(
        id="0000000000010000000000a1",
        request_json=request_json(
            [("user", "first question"), ("model", "first answer"), ("user", AWKWARD)],
            system="be brief",
            labels={"team": "search", "run": "r1"},
        ),
        response_json=response_json(
            content_pb2.Part(text="thinking...", thought=True),
            content_pb2.Part(text="the "),
            content_pb2.Part(text='answer, "quoted"\nover lines'),
        ),
        labels={"team": "search", "run": "r1"},
    )


def failed() -> Log:
    return Log(
        id="0000000000020000000000b2",
        request_json=request_json([("user", "too much")]),
        response_json="",
        status="RESOURCE_EXHAUSTED",
        candidates_tokens=0,
    )


def cut_short() -> Log:
    return Log(
        id="0000000000030000000000c3",
        request_json=request_json([("", "a turn without a role")]),
        response_json=response_json(content_pb2.Part(text="partial")),
        method="StreamGenerateContent",
        incomplete=True,
    )


def plain(index: int) -> Log:
    return Log(
        id=f"{index:012x}{index:012x}",
        request_json=request_json([("user", f"q{index}")]),
        response_json=response_json(content_pb2.Part(text=f"a{index}")),
    )


async def aiter(logs: Sequence[Log]) -> AsyncIterator[Log]:
    for log in logs:
        yield log


async def export(export_format: ExportFormat, logs: Sequence[Log]) -> tuple[bytes, ExportWriter]:
    writer = ExportWriter(export_format)
    pieces = [piece async for piece in export_pieces(writer, aiter(logs))]
    assert all(pieces)  # no empty pieces
    return b"".join(pieces), writer


def test_file_names_and_content_types() -> None:
    assert file_name("hard-cases", ExportFormat.CSV) == "hard-cases.csv"
    assert file_name("hard-cases", ExportFormat.JSONL) == "hard-cases.jsonl"
    assert file_name("hard-cases", ExportFormat.BATCH) == "hard-cases-batch.jsonl"
    assert file_name("hard-cases", ExportFormat.TUNING) == "hard-cases-tuning.jsonl"
    assert content_type(ExportFormat.CSV) == "text/csv"
    for jsonl in (ExportFormat.JSONL, ExportFormat.BATCH, ExportFormat.TUNING):
        assert content_type(jsonl) == "application/jsonl"


def test_texts_are_the_last_user_turn_and_the_first_candidate() -> None:
    log = conversation()
    assert prompt_text(stored_json(log.request_json)) == AWKWARD
    # No thought part; the first candidate only.
    assert response_text(stored_json(log.response_json)) == 'the answer, "quoted"\nover lines'
    for nothing in (None, {}, [], "text", {"contents": "x"}, {"contents": [{"role": "model"}]}):
        assert prompt_text(nothing) == ""
    for nothing in (None, {"candidates": []}, {"candidates": ["x"]}, {"candidates": [{}]}):
        assert response_text(nothing) == ""
    assert prompt_text({"contents": [{"parts": [{"text": 1}, {"text": "ok"}, "x"]}]}) == "ok"
    assert stored_json("") is None and stored_json("{broken") is None


async def test_csv_reads_back_field_for_field() -> None:
    data, writer = await export(ExportFormat.CSV, [conversation(), failed(), cut_short()])
    rows = list(csv.reader(io.StringIO(data.decode(), newline="")))
    assert tuple(rows[0]) == CSV_COLUMNS
    records = [dict(zip(CSV_COLUMNS, row, strict=True)) for row in rows[1:]]
    assert len(records) == 3 and (writer.rows, writer.skipped) == (3, 0)

    first = records[0]
    assert first["name"] == "projects/p1/logs/0000000000010000000000a1"
    assert first["create_time"] == "2026-03-01T12:30:15.250Z"
    assert first["model"] == MODEL
    assert first["method"] == "GenerateContent"
    assert first["status"] == "OK"
    assert json.loads(first["labels"]) == {"run": "r1", "team": "search"}
    assert (first["prompt_tokens"], first["candidates_tokens"], first["total_tokens"]) == (
        "12", "7", "19",
    )  # fmt: skip
    assert float(first["latency_ms"]) == pytest.approx(123.457)
    assert first["prompt"] == AWKWARD
    assert first["response"] == 'the answer, "quoted"\nover lines'

    assert records[1]["status"] == "RESOURCE_EXHAUSTED"
    assert records[1]["response"] == ""
    assert records[2]["prompt"] == "a turn without a role"
    assert records[2]["method"] == "StreamGenerateContent"


async def test_jsonl_holds_the_stored_request_and_response() -> None:
    logs = [conversation(), failed()]
    data, writer = await export(ExportFormat.JSONL, logs)
    lines = data.decode().splitlines()
    assert len(lines) == 2 and data.endswith(b"\n") and writer.rows == 2
    first, second = (json.loads(line) for line in lines)
    assert set(first) == {
        "name", "createTime", "model", "method", "status", "labels", "request", "response",
    }  # fmt: skip
    assert first["name"] == "projects/p1/logs/0000000000010000000000a1"
    assert first["createTime"] == "2026-03-01T12:30:15.250Z"
    assert first["labels"] == {"team": "search", "run": "r1"}
    assert first["request"] == json.loads(logs[0].request_json)
    assert first["response"] == json.loads(logs[0].response_json)
    # The request is proto3 JSON a client can parse back, every turn included.
    request = json_format.ParseDict(
        first["request"], generative_service_pb2.GenerateContentRequest()
    )
    assert [c.parts[0].text for c in request.contents] == [
        "first question", "first answer", AWKWARD,
    ]  # fmt: skip
    assert request.system_instruction.parts[0].text == "be brief"
    assert second["status"] == "RESOURCE_EXHAUSTED"
    assert second["response"] is None


async def test_batch_lines_are_generate_content_requests_without_a_model() -> None:
    unreadable = Log(id="0000000000040000000000d4", request_json="{not json", response_json="")
    data, writer = await export(ExportFormat.BATCH, [conversation(), failed(), unreadable])
    assert (writer.rows, writer.skipped) == (2, 1)
    lines = [json.loads(line) for line in data.decode().splitlines()]
    assert [line["key"] for line in lines] == [
        "0000000000010000000000a1", "0000000000020000000000b2",
    ]  # fmt: skip
    for line in lines:
        assert set(line) == {"key", "request"}
        assert "model" not in line["request"]
        request = generative_service_pb2.GenerateContentRequest()
        json_format.ParseDict(line["request"], request)  # strict: no unknown fields
        assert request.model == ""
    first = json_format.ParseDict(
        lines[0]["request"], generative_service_pb2.GenerateContentRequest()
    )
    assert len(first.contents) == 3
    assert first.contents[2].parts[0].text == AWKWARD
    assert first.system_instruction.parts[0].text == "be brief"
    assert dict(first.labels) == {"team": "search", "run": "r1"}


async def test_tuning_lines_make_valid_tuning_examples(tmp_path: Path) -> None:
    no_prompt = Log(
        id="0000000000050000000000e5",
        request_json=request_json([("user", "   ")]),
        response_json=response_json(content_pb2.Part(text="an answer to nothing")),
    )
    logs = [conversation(), failed(), cut_short(), no_prompt, plain(7)]
    data, writer = await export(ExportFormat.TUNING, logs)
    assert (writer.rows, writer.skipped) == (2, 3)  # failed, incomplete, no prompt text
    lines = [json.loads(line) for line in data.decode().splitlines()]
    assert lines == [
        {"text_input": AWKWARD, "output": 'the answer, "quoted"\nover lines'},
        {"text_input": "q7", "output": "a7"},
    ]
    examples = tuned_model_pb2.TuningExamples(
        examples=[json_format.ParseDict(line, tuned_model_pb2.TuningExample()) for line in lines]
    )
    request = model_service_pb2.CreateTunedModelRequest(
        tuned_model=tuned_model_pb2.TunedModel(
            base_model="models/gemini-1.5-flash-001-tuning",
            tuning_task=tuned_model_pb2.TuningTask(
                training_data=tuned_model_pb2.Dataset(examples=examples)
            ),
        )
    )
    assert validation.create_tuned_model(request) == []
    # The CLI's tuning file reader takes the file as it is.
    path = tmp_path / "examples.jsonl"
    path.write_bytes(data)
    assert [(e.text_input, e.output) for e in load_examples(path)] == [
        (AWKWARD, 'the answer, "quoted"\nover lines'),
        ("q7", "a7"),
    ]


async def test_empty_dataset_exports() -> None:
    data, _ = await export(ExportFormat.CSV, [])
    assert list(csv.reader(io.StringIO(data.decode()))) == [list(CSV_COLUMNS)]
    for export_format in (ExportFormat.JSONL, ExportFormat.BATCH, ExportFormat.TUNING):
        data, writer = await export(export_format, [])
        assert data == b"" and writer.rows == writer.skipped == 0


async def test_chunks_regroup_pieces_without_changing_the_bytes() -> None:
    logs = [plain(index) for index in range(1, 400)]
    whole, _ = await export(ExportFormat.JSONL, logs)
    writer = ExportWriter(ExportFormat.JSONL)
    chunks = [chunk async for chunk in chunked(export_pieces(writer, aiter(logs)), size=4096)]
    assert b"".join(chunks) == whole
    assert all(len(chunk) == 4096 for chunk in chunks[:-1])
    assert 0 < len(chunks[-1]) <= 4096

    async def one_big_piece() -> AsyncIterator[bytes]:
        yield b"x" * 10_000

    pieces = [chunk async for chunk in chunked(one_big_piece(), size=4096)]
    assert [len(piece) for piece in pieces] == [4096, 4096, 1808]
