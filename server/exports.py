"""Dataset export formats, written incrementally: one log in, the bytes of its line out.

- CSV: one row per log with its figures, the last user turn's text and the response text;
- JSONL: one `{"name", "createTime", "model", "method", "status", "labels", "request",
  "response"}` object per log, request and response as the proto3 JSON the gateway exchanged;
- BATCH: the Batch API's input file, one `{"key": <log id>, "request": GenerateContentRequest}`
  per log (without `model`: a batch names its model once);
- TUNING: tuning examples, one `{"text_input", "output"}` per log that succeeded with text on
  both sides; the others are left out and counted.

A writer holds nothing but counters, so an export's memory is one log whatever its size.
"""

from __future__ import annotations

import csv
import enum
import io
import json
from collections.abc import AsyncIterable, AsyncIterator, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol

from google.protobuf import json_format, timestamp_pb2

from gemini_gateway.generated.google.ai.generativelanguage.v1beta import (
    generative_service_pb2,
    tuned_model_pb2,
)
from gemini_gateway.server.log_event import log_name

CHUNK_BYTES = 64 * 1024
"""Size of the pieces an export is sent in."""

CSV_COLUMNS = (
    "name", "create_time", "model", "method", "status", "labels", "prompt_tokens",
    "candidates_tokens", "total_tokens", "latency_ms", "prompt", "response",
)  # fmt: skip


class ExportFormat(enum.StrEnum):
    CSV = "csv"
    JSONL = "jsonl"
    BATCH = "batch"
    TUNING = "tuning"


_FILE_SUFFIX = {
    ExportFormat.CSV: ".csv",
    ExportFormat.JSONL: ".jsonl",
    ExportFormat.BATCH: "-batch.jsonl",
    ExportFormat.TUNING: "-tuning.jsonl",
}
_CONTENT_TYPE = {
    ExportFormat.CSV: "text/csv",
    ExportFormat.JSONL: "application/jsonl",
    ExportFormat.BATCH: "application/jsonl",
    ExportFormat.TUNING: "application/jsonl",
}


def file_name(dataset_id: str, export_format: ExportFormat) -> str:
    """`my-dataset.csv`, `my-dataset.jsonl`, `my-dataset-batch.jsonl`, `my-dataset-tuning.jsonl`."""
    return dataset_id + _FILE_SUFFIX[export_format]


def content_type(export_format: ExportFormat) -> str:
    return _CONTENT_TYPE[export_format]


class ExportableLog(Protocol):
    """What an export reads of a log (store.logs.LogRecord read in full)."""

    @property
    def id(self) -> str: ...
    @property
    def project(self) -> str: ...
    @property
    def create_time(self) -> datetime: ...
    @property
    def model(self) -> str: ...
    @property
    def method(self) -> str: ...
    @property
    def status(self) -> str: ...
    @property
    def labels(self) -> Mapping[str, str]: ...
    @property
    def prompt_tokens(self) -> int: ...
    @property
    def candidates_tokens(self) -> int: ...
    @property
    def total_tokens(self) -> int: ...
    @property
    def latency_ms(self) -> float: ...
    @property
    def incomplete(self) -> bool: ...
    @property
    def request_json(self) -> str: ...
    @property
    def response_json(self) -> str: ...


# --- reading a log's texts --------------------------------------------------------------------
#
# Texts are read from the stored JSON as plain data rather than parsed into messages: the
# field names involved (contents, role, parts, text, thought, candidates, content) are spelt
# the same in proto3 JSON and in proto field names, and a message parse costs several times
# more, which a 100,000-log export feels.


def stored_json(text: str) -> Any:
    """A stored request or response as JSON data; None when there is none or it is not JSON."""
    if not text:
        return None
    try:
        return json.loads(text)
    except ValueError:
        return None


def _turn_text(content: Any) -> str:
    parts = content.get("parts") if isinstance(content, dict) else None
    if not isinstance(parts, list):
        return ""
    # Thinking is not part of what was said.
    return "".join(
        part["text"]
        for part in parts
        if isinstance(part, dict) and isinstance(part.get("text"), str) and not part.get("thought")
    )


def prompt_text(request: Any) -> str:
    """The text of a request's last user turn (a turn without a role is the user's)."""
    contents = request.get("contents") if isinstance(request, dict) else None
    if not isinstance(contents, list):
        return ""
    for content in reversed(contents):
        if isinstance(content, dict) and content.get("role", "") in ("user", ""):
            return _turn_text(content)
    return ""


def response_text(response: Any) -> str:
    """The text of a response's first candidate."""
    candidates = response.get("candidates") if isinstance(response, dict) else None
    if not isinstance(candidates, list) or not candidates:
        return ""
    first = candidates[0]
    return _turn_text(first.get("content")) if isinstance(first, dict) else ""


def tuning_example(log: ExportableLog) -> tuned_model_pb2.TuningExample | None:
    """The log as a tuning example; None unless the call succeeded with text on both sides."""
    if log.status != "OK" or log.incomplete:
        return None
    text_input = prompt_text(stored_json(log.request_json))
    output = response_text(stored_json(log.response_json))
    if not text_input.strip() or not output.strip():
        return None
    return tuned_model_pb2.TuningExample(text_input=text_input, output=output)


def batch_request(log: ExportableLog) -> generative_service_pb2.GenerateContentRequest | None:
    """The logged request as a Batch API request (no `model`); None if it does not parse."""
    request = generative_service_pb2.GenerateContentRequest()
    text = log.request_json
    if not text:
        return None
    try:
        json_format.Parse(text, request, ignore_unknown_fields=True)
    except (json_format.ParseError, ValueError):
        return None
    request.ClearField("model")
    return request


# --- writers ---------------------------------------------------------------------------------


def _time(value: datetime) -> str:
    stamp = timestamp_pb2.Timestamp()
    stamp.FromDatetime(value)
    return stamp.ToJsonString()  # RFC 3339 in UTC, as proto3 JSON writes a Timestamp


def _json_line(value: Mapping[str, Any]) -> bytes:
    return (json.dumps(value, ensure_ascii=False, separators=(",", ":")) + "\n").encode()


def _labels_json(labels: Mapping[str, str]) -> str:
    return json.dumps(dict(sorted(labels.items())), ensure_ascii=False, separators=(",", ":"))


@dataclass
class ExportWriter:
    """Turns logs into the bytes of one file format; `rows` written, `skipped` left out."""

    export_format: ExportFormat
    rows: int = 0
    skipped: int = 0

    def header(self) -> bytes:
        """Bytes before the first log (the CSV header row)."""
        if self.export_format is ExportFormat.CSV:
            return self._csv_row(CSV_COLUMNS)
        return b""

    def write(self, log: ExportableLog) -> bytes:
        """The log's row or line; empty when the format leaves the log out."""
        match self.export_format:
            case ExportFormat.CSV:
                piece = self._csv(log)
            case ExportFormat.JSONL:
                piece = self._jsonl(log)
            case ExportFormat.BATCH:
                piece = self._batch(log)
            case ExportFormat.TUNING:
                piece = self._tuning(log)
        if piece:
            self.rows += 1
        else:
            self.skipped += 1
        return piece

    @staticmethod
    def _csv_row(values: tuple[object, ...]) -> bytes:
        # The csv module quotes fields holding commas, quotes or line breaks; rows end in
        # CRLF as RFC 4180 has them.
        buffer = io.StringIO()
        csv.writer(buffer).writerow(values)
        return buffer.getvalue().encode()

    def _csv(self, log: ExportableLog) -> bytes:
        return self._csv_row(
            (
                log_name(log.project, log.id),
                _time(log.create_time),
                log.model,
                log.method,
                log.status,
                _labels_json(log.labels),
                log.prompt_tokens,
                log.candidates_tokens,
                log.total_tokens,
                round(log.latency_ms, 3),
                prompt_text(stored_json(log.request_json)),
                response_text(stored_json(log.response_json)),
            )
        )

    @staticmethod
    def _jsonl(log: ExportableLog) -> bytes:
        return _json_line(
            {
                "name": log_name(log.project, log.id),
                "createTime": _time(log.create_time),
                "model": log.model,
                "method": log.method,
                "status": log.status,
                "labels": dict(log.labels),
                # As stored: exactly what the gateway exchanged, whatever the API version.
                "request": stored_json(log.request_json),
                "response": stored_json(log.response_json),
            }
        )

    @staticmethod
    def _batch(log: ExportableLog) -> bytes:
        request = batch_request(log)
        if request is None:
            return b""
        return _json_line({"key": log.id, "request": json_format.MessageToDict(request)})

    @staticmethod
    def _tuning(log: ExportableLog) -> bytes:
        example = tuning_example(log)
        if example is None:
            return b""
        return _json_line({"text_input": example.text_input, "output": example.output})


async def export_pieces(
    writer: ExportWriter, logs: AsyncIterable[ExportableLog]
) -> AsyncIterator[bytes]:
    """The file's bytes, one piece per log (left-out logs yield nothing)."""
    header = writer.header()
    if header:
        yield header
    async for log in logs:
        piece = writer.write(log)
        if piece:
            yield piece


async def chunked(pieces: AsyncIterable[bytes], size: int = CHUNK_BYTES) -> AsyncIterator[bytes]:
    """Pieces regrouped into chunks of `size` bytes (the last one shorter)."""
    buffer = bytearray()
    async for piece in pieces:
        buffer += piece
        while len(buffer) >= size:
            yield bytes(buffer[:size])
            del buffer[:size]
    if buffer:
        yield bytes(buffer)
