"""SseReader: framing variants, split reads, multi-line data, raw error blocks; linear
scanning, the event size limit and upstream faults by the rule of errors.py."""

import json

import grpc
import pytest

from gemini_gateway.server.errors import UpstreamError
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


# Hardening: linear time, bounded events, upstream faults by the written rule.

MIB = 1024 * 1024
PIECE = 64 * 1024


def test_a_50_mb_event_fed_in_64_kib_pieces_is_scanned_once() -> None:
    # Counted, not timed: a reader that rescanned its buffer on each read would look at
    # about size**2 / (2 * piece) bytes (some 20 GB here), not size.
    size = 50 * MIB
    reader = SseReader(max_event_bytes=64 * MIB)
    piece = b"x" * PIECE
    assert reader.feed(b"data: ") == []
    pieces = size // PIECE
    for _ in range(pieces):
        assert reader.feed(piece) == []
    assert reader.scanned_bytes <= 6 + size + 3 * pieces
    assert reader.feed(b"\n\n") == ["x" * size]
    assert reader.scanned_bytes <= 6 + size + 3 * (pieces + 1) + 2


def test_many_events_in_one_read_are_scanned_once() -> None:
    body = b"".join(b'data: {"n": %d}\r\n\r\n' % i for i in range(10_000))
    reader = SseReader()
    assert len(reader.feed(body)) == 10_000
    assert reader.scanned_bytes == len(body)


def _status(error: UpstreamError) -> tuple[grpc.StatusCode, str]:
    return error.code, error.message


def test_an_event_over_the_limit_is_resource_exhausted_naming_limit_and_setting() -> None:
    reader = SseReader(max_event_bytes=MIB)
    reader.feed(b"data: " + b"x" * (MIB - 6))  # exactly at the limit: still waiting
    with pytest.raises(UpstreamError) as info:
        reader.feed(b"x")
    assert _status(info.value) == (
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        "upstream sent a stream event larger than the 1 MiB limit (setting max_sse_event_mb)",
    )


def test_a_complete_event_over_the_limit_in_one_read_is_refused() -> None:
    reader = SseReader(max_event_bytes=100)
    assert reader.feed(b"data: " + b"y" * 94 + b"\n\n") == ["y" * 94]
    with pytest.raises(UpstreamError) as info:
        reader.feed(b"data: " + b"y" * 95 + b"\n\n")
    assert info.value.code is grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "the 100 bytes limit (setting max_sse_event_mb)" in info.value.message


def test_invalid_utf8_is_internal_after_the_events_before_it() -> None:
    reader = SseReader()
    body = b'data: {"n": 1}\n\ndata: {"t": "\xff\xfe"}\n\ndata: {"n": 3}\n\n'
    assert reader.feed(body) == ['{"n": 1}']
    with pytest.raises(UpstreamError) as info:
        reader.feed(b"")
    assert _status(info.value) == (
        grpc.StatusCode.INTERNAL,
        "upstream sent a stream event that is not valid UTF-8 (invalid byte at offset 13 of "
        "the event)",
    )


def test_invalid_utf8_alone_raises_at_once() -> None:
    with pytest.raises(UpstreamError) as info:
        SseReader().feed(b"data: \xc3\x28\n\n")
    assert info.value.code is grpc.StatusCode.INTERNAL


@pytest.mark.parametrize(
    "tail",
    [
        b'data: {"candidates": [{"content": ',  # JSON cut off
        b'data: {"t": "' + "é".encode()[:1],  # inside a UTF-8 character
        b'data: {"n": 1}\ndata: {"more":',  # a multi-line event cut off
    ],
)
def test_a_stream_ending_inside_an_event_is_unavailable(tail: bytes) -> None:
    reader = SseReader()
    assert reader.feed(b'data: {"n": 0}\r\n\r\n' + tail) == ['{"n": 0}']
    with pytest.raises(UpstreamError) as info:
        reader.close()
    assert info.value.code is grpc.StatusCode.UNAVAILABLE
    assert info.value.message == (
        f"upstream stream ended inside an event ({len(tail)} bytes without their closing "
        "blank line): the connection broke"
    )


def test_a_whole_last_event_without_blank_line_or_only_fields_is_fine() -> None:
    reader = SseReader()
    reader.feed(b": comment\nevent: x")
    assert reader.close() == []
    deep = "[" * 5000 + "]" * 5000  # whole, if too deep for the parser: not a cut
    reader = SseReader()
    reader.feed(f"data: {deep}".encode())
    assert reader.close() == [deep]
