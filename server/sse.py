"""Incremental reader for the Server-Sent Events stream of `?alt=sse`.

Google writes `data: <json>\\r\\n\\r\\n` per event; other servers and proxies use `\\n\\n`
or `\\r\\r`. Events may be split across network reads, and a mid-stream error object may
arrive as raw multi-line JSON without a `data:` prefix: such a block is returned whole.
"""

from __future__ import annotations

import re

# An event ends at a blank line, whatever the line ending.
_EVENT_END = re.compile(rb"\r\n\r\n|\n\n|\r\r|\r\n\n|\n\r\n")
_LINE_END = re.compile(r"\r\n|\n|\r")
_FIELDS = ("data:", "event:", "id:", "retry:")


class SseReader:
    """Feed raw bytes; get back the data payload of each complete event."""

    def __init__(self) -> None:
        self._buffer = b""

    def feed(self, chunk: bytes) -> list[str]:
        self._buffer += chunk
        payloads = []
        while True:
            match = _EVENT_END.search(self._buffer)
            if match is None:
                break
            block = self._buffer[: match.start()]
            self._buffer = self._buffer[match.end() :]
            payload = _payload(block)
            if payload is not None:
                payloads.append(payload)
        return payloads

    def close(self) -> list[str]:
        """End of body: whatever is left is the last event (the blank line may be missing)."""
        block, self._buffer = self._buffer, b""
        payload = _payload(block)
        return [payload] if payload is not None else []


def _payload(block: bytes) -> str | None:
    text = block.decode("utf-8")
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
