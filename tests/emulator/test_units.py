"""Pure helpers: token rule, chunk splitting, fault parsing, schema values."""

from __future__ import annotations

import pytest

from gemini_gateway.emulator.faults import (
    FaultPlan,
    FaultSyntaxError,
    parse_fault_list,
    strip_magic,
)
from gemini_gateway.emulator.schema_values import value_for_schema
from gemini_gateway.emulator.textgen import answer_text, split_chunks
from gemini_gateway.emulator.tokens import count_text, truncate


def test_token_rule() -> None:
    assert count_text("Hello, world!") == 4
    assert count_text("") == 0
    assert count_text("don't stop") == 4
    assert truncate("one two three", 2) == ("one two", True)
    assert truncate("one two", 5) == ("one two", False)


@pytest.mark.parametrize("count", [1, 2, 3, 7, 30, 200])
def test_split_chunks_joins_back(count: int) -> None:
    text = answer_text("split me please", "", seed=0)
    pieces = split_chunks(text, count)
    assert "".join(pieces) == text
    assert all(pieces)
    assert len(pieces) == min(count, len(text))


def test_split_short_text() -> None:
    assert split_chunks("abc", 10) == ["a", "b", "c"]
    assert split_chunks("", 3) == [""]
    assert split_chunks("one two three four", 2) == ["one two ", "three four"]


def test_answer_text_is_deterministic() -> None:
    assert answer_text("q", "s", 1) == answer_text("q", "s", 1)
    assert answer_text("q", "s", 1) != answer_text("q", "s", 2)
    assert answer_text("q", "s", 1, variant=1) != answer_text("q", "s", 1)


def test_parse_faults() -> None:
    plan = parse_fault_list("headers_delay:250, 429, chunks:4, chunk_delay_ms:10")
    assert plan == FaultPlan(error_code=429, headers_delay_ms=250, chunks=4, chunk_delay_ms=10)
    assert parse_fault_list("stream_error_raw:503") == FaultPlan(
        stream_error="raw", stream_error_code=503
    )
    assert parse_fault_list("500,503").error_code == 500  # the first one wins
    assert parse_fault_list(None).is_empty
    for bad in ("boom", "chunks:x", "headers_delay:-1", "302", "disconnect:1"):
        with pytest.raises(FaultSyntaxError):
            parse_fault_list(bad)


def test_plan_precedence() -> None:
    header = FaultPlan(chunks=2, chunk_delay_ms=0)
    prompt = FaultPlan(chunks=5, error_code=503, chunk_delay_ms=100)
    merged = header.then(prompt)
    assert (merged.chunks, merged.error_code, merged.chunk_delay_ms) == (2, 503, 0)


def test_strip_magic() -> None:
    text, found = strip_magic("hi [[fault:429]] there [[chunks:3]]")
    assert text == "hi there"
    assert found == ["429", "chunks:3"]
    assert strip_magic("no tokens  here ") == ("no tokens  here ", [])


def test_schema_values() -> None:
    schema = {
        "type": "OBJECT",
        "properties": {
            "when": {"type": "STRING", "format": "date-time"},
            "count": {"type": "INTEGER", "minimum": "3", "maximum": "3"},
            "ratio": {"type": "NUMBER", "maximum": 1},
            "list": {"type": "ARRAY", "items": {"type": "BOOLEAN"}, "maxItems": "1"},
            "any": {"anyOf": [{"type": "null"}, {"type": "string", "maxLength": 3}]},
            "fixed": {"const": 42},
            "nested": {"allOf": [{"properties": {"a": {"type": "integer"}}}]},
        },
    }
    value = value_for_schema(schema, "seed")
    assert value["when"] == "2025-01-15T09:30:00Z"
    assert value["count"] == 3
    assert value["ratio"] <= 1
    assert len(value["list"]) == 1 and isinstance(value["list"][0], bool)
    assert isinstance(value["any"], str) and len(value["any"]) <= 3
    assert value["fixed"] == 42
    assert isinstance(value["nested"]["a"], int)
    assert value_for_schema(schema, "seed") == value


def test_recursive_schema_terminates() -> None:
    schema = {
        "$ref": "#/$defs/node",
        "$defs": {
            "node": {
                "type": "object",
                "properties": {"child": {"$ref": "#/$defs/node"}, "v": {"type": "integer"}},
            }
        },
    }
    value = value_for_schema(schema, "x")
    assert isinstance(value["v"], int)
