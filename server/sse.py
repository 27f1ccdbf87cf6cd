"""Incremental reader for the Server-Sent Events stream of `?alt=sse`.

Google writes `data: <json>\\r\\n\\r\\n` per event; other servers and proxies use `\\n\\n`
or `\\r\\r`. Events may be split across network reads, and a mid-stream error object may
arrive as raw multi-line JSON without a `data:` prefix: such a block is returned whole.

Linear time: each read is appended once, and event ends are looked for only in the new
bytes plus the last three bytes before them (an end marker is at most four bytes), so a
long event fed in many small reads costs its length, not its length squared. The bytes
looked at are counted in `scanned_bytes`. One event may hold at most `max_event_bytes`
(the `max_sse_event_mb` setting); a longer one ends the call with RESOURCE_EXHAUSTED
naming the limit, before more of it is buffered.

Faults, by the rule in errors.py: an event that is not valid UTF-8 is INTERNAL (the
upstream sent it); a stream that ends inside an event (no closing blank line, and what is
left is not complete JSON) is UNAVAILABLE (the transport broke).
"""

from __future__ import annotations

import json
import re

import grpc

from gemini_gateway.server import errors

# An event ends at a blank line, whatever the line ending.
_EVENT_END = re.compile(rb"\r\n\r\n|\n\n|\r\r|\r\n\n|\n\r\n")
_LONGEST_END = 4
_LINE_END = re.compile(r"\r\n|\n|\r")
_FIELDS = ("data:", "event:", "id:", "retry:")

MIB = 1024 * 1024
DEFAULT_MAX_EVENT_BYTES = 16 * MIB
EVENT_SIZE_SETTING = "max_sse_event_mb"


def event_too_large(max_event_bytes: int) -> errors.UpstreamError:
    return errors.UpstreamError(
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        f"upstream sent a stream event larger than the {errors.size_text(max_event_bytes)} "
        f"limit (setting {EVENT_SIZE_SETTING})",
    )


def stream_cut(pending: int) -> errors.UpstreamError:
    return errors.UpstreamError(
        grpc.StatusCode.UNAVAILABLE,
        f"upstream stream ended inside an event ({pending} bytes without their closing "
        "blank line): the connection broke",
    )


class SseReader:
    """Feed raw bytes; get back the data payload of each complete event."""

    def __init__(self, max_event_bytes: int = DEFAULT_MAX_EVENT_BYTES) -> None:
        self._buffer = bytearray()
        self._scan_from = 0  # no event end lies wholly before this offset of the buffer
        self._max_event_bytes = max_event_bytes
        self._error: errors.UpstreamError | None = None
        self.scanned_bytes = 0

    def feed(self, chunk: bytes) -> list[str]:
        """The events `chunk` completes. A bad event raises, once the events before it
        (in the same read) have been returned."""
        self._raise_pending()
        payloads: list[str] = []
        try:
            self._feed(chunk, payloads)
        except errors.UpstreamError as exc:
            self._buffer = bytearray()
            self._scan_from = 0
            if not payloads:
                raise
            self._error = exc  # raised by the next feed or close
        return payloads

    def _feed(self, chunk: bytes, payloads: list[str]) -> None:
        buffer = self._buffer
        buffer += chunk
        start = 0  # where the current event begins
        position = self._scan_from
        while True:
            match = _EVENT_END.search(buffer, position)
            if match is None:
                self.scanned_bytes += len(buffer) - position
                break
            self.scanned_bytes += match.end() - position
            if match.start() - start > self._max_event_bytes:
                raise event_too_large(self._max_event_bytes)
            payload = _payload(buffer[start : match.start()])
            if payload is not None:
                payloads.append(payload)
            start = position = match.end()
        if start:
            del buffer[:start]  # what is left arrived in this read (or the 3 bytes before it)
        if len(buffer) > self._max_event_bytes:
            raise event_too_large(self._max_event_bytes)
        self._scan_from = max(0, len(buffer) - (_LONGEST_END - 1))

    def close(self) -> list[str]:
        """End of body: whatever is left is the last event (the blank line may be missing).

        What is left must be whole: complete JSON (or only fields without data). Anything
        else is an event the stream broke off in, UNAVAILABLE.
        """
        self._raise_pending()
        block = bytes(self._buffer)
        self._buffer = bytearray()
        self._scan_from = 0
        if _ends_inside_a_character(block):
            raise stream_cut(len(block))
        payload = _payload(block)
        if payload is None:
            return []
        if not _is_complete_json(payload):
            raise stream_cut(len(block))
        return [payload]

    def _raise_pending(self) -> None:
        if self._error is not None:
            error, self._error = self._error, None
            raise error


def _ends_inside_a_character(block: bytes) -> bool:
    """Whether the last UTF-8 sequence of `block` lacks bytes (the stream broke inside it)."""
    for back in range(1, min(4, len(block)) + 1):
        byte = block[-back]
        if byte & 0xC0 == 0x80:
            continue  # a continuation byte: its lead byte is further back
        if byte < 0xC0:
            return False  # ASCII
        needed = 2 if byte < 0xE0 else 3 if byte < 0xF0 else 4
        return needed > back
    return False


def _is_complete_json(text: str) -> bool:
    try:
        json.loads(text)
    except RecursionError:
        return True  # whole, only too deep: the parser of the event says so
    except ValueError:
        return False
    return True


def _payload(block: bytes | bytearray) -> str | None:
    try:
        text = block.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise errors.UpstreamError(
            grpc.StatusCode.INTERNAL,
            f"upstream sent a stream event that is not valid UTF-8 "
            f"(invalid byte at offset {exc.start} of the event)",
        ) from None
    if not text.strip():
        return None
    lines = _LINE_END.split(text)
    data = []
    has_field = False
    for line in lines:
        if line.startswith(":"):
            has_field = True  # a comment line
            continue
        if line.startswith("data:"):
            has_field = True
            value = line[5:]
            data.append(value[1:] if value.startswith(" ") else value)
        elif line.startswith(_FIELDS):
            has_field = True
    if data:
        return "\n".join(data)
    if has_field:
        return None
    return text  # raw JSON without a field name, as some mid-stream errors arrive
