"""SseReader: framing variants, split reads, multi-line data, raw error blocks."""

import json

import pytest

from gemini_gateway.server.sse import SseReader

EVENTS = [{"n": 1}, {"n": 2, "text": "ünïcode"}, {"n": 3}]


@pytest.mark.parametrize("separator", ["\r\n\r\n", "\n\n", "\r\r"])
def test_each_separator(separator: str) -> None:
    body = "".join(f"data: {json.dumps(e)}{separator}" for e in EVENTS).encode()
    reader = SseReader()
    payloads = reader.feed(body) + reader.close()
    assert [json.loads(p) for p in payloads] == EVENTS


@pytest.mark.parametrize("separator", ["\r\n\r\n", "\n\n", "\r\r"])
def test_byte_by_byte_reads_give_each_event_once_complete(separator: str) -> None:
    body = "".join(f"data: {json.dumps(e)}{separator}" for e in EVENTS).encode()
    reader = SseReader()
    seen = []
    for i in range(len(body)):
        seen.extend(reader.feed(body[i : i + 1]))
    seen.extend(reader.close())
    assert [json.loads(p) for p in seen] == EVENTS


def test_event_is_released_only_when_its_blank_line_arrives() -> None:
    reader = SseReader()
    assert reader.feed(b'data: {"a": 1}\r\n') == []
    assert reader.feed(b"\r") == []
    assert reader.feed(b"\n") == ['{"a": 1}']


def test_multi_line_data_is_joined_and_comments_ignored() -> None:
    reader = SseReader()
    payloads = reader.feed(b': keep-alive\n\ndata: {"a":\ndata:  1}\n\n')
    assert payloads == ['{"a":\n 1}']
    assert json.loads(payloads[0]) == {"a": 1}


def test_raw_json_error_block_without_data_prefix() -> None:
    raw = '{\n  "error": {\n    "code": 503,\n    "status": "UNAVAILABLE"\n  }\n}'
    reader = SseReader()
    payloads = reader.feed(f'data: {{"n": 1}}\r\n\r\n{raw}'.encode()) + reader.close()
    assert json.loads(payloads[0]) == {"n": 1}
    assert json.loads(payloads[1])["error"]["status"] == "UNAVAILABLE"


def test_last_event_without_trailing_blank_line() -> None:
    reader = SseReader()
    assert reader.feed(b'data: {"n": 1}') == []
    assert reader.close() == ['{"n": 1}']


def test_utf8_character_split_across_reads() -> None:
    body = 'data: {"t": "é"}\n\n'.encode()
    cut = body.index("é".encode()) + 1
    reader = SseReader()
    assert reader.feed(body[:cut]) == []
    assert [json.loads(p) for p in reader.feed(body[cut:])] == [{"t": "é"}]
