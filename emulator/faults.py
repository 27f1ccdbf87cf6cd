"""Fault injection: the vocabulary, and the three ways to select a fault.

A fault list is comma-separated, e.g. "headers_delay:500,503". It can come from the
`x-emulator-fault` request header, from magic tokens in the prompt (`[[fault:429]]`,
`[[chunks:5]]`, `[[chunk_delay_ms:100]]`) or from EmulatorSettings.fault. When several sources
set the same thing, the header wins over the prompt, and the prompt over the settings.

`first:<n>[:<tag>]` in a list makes its faults transient: they hit the first n requests
that carry that exact list, and later ones get only its non-fault words (`chunks`,
`chunk_delay_ms`): "503 twice, then an answer" is `[[fault:503,first:2]]`. The count is
kept per list text in the emulator process; the free `tag` makes a list new (one per test).
It counts each reading of the list: a generate request reads its prompt's list once (in
the `fault` setting, the check at start-up is a reading too).
"""

from __future__ import annotations

import dataclasses
import re
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

from gemini_gateway.emulator.errors import FAULT_HTTP_CODES

FAULT_HEADER = "x-emulator-fault"

# `[[fault:429]]`, `[[fault:headers_delay:2000]]`, `[[chunks:5]]`, `[[chunk_delay_ms:100]]`.
# Leading blanks go with the token so "hi [[fault:500]] there" echoes as "hi there".
MAGIC_TOKEN = re.compile(r"[ \t]*\[\[(fault|chunks|chunk_delay_ms):([^\[\]]*)\]\]")


@dataclass(frozen=True)
class FaultPlan:
    """What to do to one request. None/False means "not selected"."""

    error_code: int | None = None
    headers_delay_ms: float | None = None
    disconnect: bool = False
    malformed: bool = False
    stream_error: str | None = None  # "data" (inside a data: event) or "raw" (no data: prefix)
    stream_error_code: int = 500
    html: bool = False
    chunks: int | None = None
    chunk_delay_ms: float | None = None
    tuning_failed: bool = False
    # A malicious or leaky upstream: every error body of the request carries its URL and
    # headers (echo); a plain-text error; an error object in an HTTP 200 body; a stream cut
    # off inside its last event.
    echo: bool = False
    plain_error_code: int | None = None
    error_200_code: int | None = None
    truncated: bool = False

    def then(self, fallback: FaultPlan) -> FaultPlan:
        """This plan, with anything it leaves unset taken from `fallback`."""
        merged = {}
        for f in dataclasses.fields(self):
            mine = getattr(self, f.name)
            # Identity checks: an explicit 0 (e.g. chunk_delay_ms:0) is a choice, not "unset".
            unset = mine is None or mine is False
            merged[f.name] = getattr(fallback, f.name) if unset else mine
        if self.stream_error is None and fallback.stream_error is not None:
            merged["stream_error_code"] = fallback.stream_error_code
        return FaultPlan(**merged)

    @property
    def is_empty(self) -> bool:
        return self == NO_FAULT


NO_FAULT = FaultPlan()


class FaultSyntaxError(ValueError):
    """A fault list that uses words outside the vocabulary."""


def _number(kind: str, raw: str) -> float:
    try:
        value = float(raw)
    except ValueError:
        raise FaultSyntaxError(f"{kind} needs a number, got {raw!r}") from None
    if value < 0:
        raise FaultSyntaxError(f"{kind} must not be negative, got {raw!r}")
    return value


def _error_code(raw: str) -> int:
    if not raw.isdigit() or int(raw) not in FAULT_HTTP_CODES:
        known = ", ".join(str(code) for code in sorted(FAULT_HTTP_CODES))
        raise FaultSyntaxError(f"unknown error code {raw!r} (known: {known})")
    return int(raw)


def parse_fault(spec: str) -> FaultPlan:
    """One fault word, e.g. "429", "headers_delay:2000", "chunks:5"."""
    spec = spec.strip().lower()
    name, _, arg = spec.partition(":")
    if name.isdigit() and not arg:
        return FaultPlan(error_code=_error_code(name))
    if name == "headers_delay" and arg:
        return FaultPlan(headers_delay_ms=_number(name, arg))
    if name == "chunk_delay_ms" and arg:
        return FaultPlan(chunk_delay_ms=_number(name, arg))
    if name == "chunks" and arg:
        count = _number(name, arg)
        if not count.is_integer():
            raise FaultSyntaxError(f"chunks needs a whole number, got {arg!r}")
        return FaultPlan(chunks=max(1, int(count)))
    if name in ("stream_error", "stream_error_raw"):
        code = _error_code(arg) if arg else 500
        kind = "raw" if name == "stream_error_raw" else "data"
        return FaultPlan(stream_error=kind, stream_error_code=code)
    if name == "plain":
        return FaultPlan(plain_error_code=_error_code(arg) if arg else 500)
    if name == "error_200":
        return FaultPlan(error_200_code=_error_code(arg) if arg else 500)
    if not arg and name in (
        "disconnect",
        "malformed",
        "html",
        "tuning_failed",
        "echo",
        "truncated",
    ):
        switch: dict[str, Any] = {name: True}
        return FaultPlan(**switch)
    raise FaultSyntaxError(f"unknown emulator fault {spec!r}")


# Words that shape an answer rather than break it: kept after a `first:<n>` list is spent.
_NOT_FAULTS = ("chunks:", "chunk_delay_ms:")
# How often each `first:<n>` list was read (oldest forgotten past MAX_COUNTED_LISTS).
MAX_COUNTED_LISTS = 4096
_READS: OrderedDict[str, int] = OrderedDict()


def _first_limit(words: list[str]) -> tuple[int | None, list[str]]:
    """The n of a `first:<n>[:<tag>]` word, and the other words."""
    limit = None
    rest = []
    for word in words:
        name, _, arg = word.strip().lower().partition(":")
        if name != "first":
            rest.append(word)
            continue
        count = arg.partition(":")[0]
        if not count.isdigit() or int(count) < 1:
            raise FaultSyntaxError(f"first needs a whole number of requests, got {arg!r}")
        if limit is None:
            limit = int(count)
    return limit, rest


def _reads(text: str) -> int:
    """Count one more reading of a `first:<n>` list; returns how many there were."""
    key = " ".join(text.lower().split())
    reads = _READS.pop(key, 0) + 1
    _READS[key] = reads
    while len(_READS) > MAX_COUNTED_LISTS:
        _READS.popitem(last=False)
    return reads


def parse_fault_list(text: str | None) -> FaultPlan:
    """A comma-separated fault list; earlier entries win over later ones."""
    plan = NO_FAULT
    if not text:
        return plan
    limit, words = _first_limit([spec for spec in text.split(",") if spec.strip()])
    plans = [(word, parse_fault(word)) for word in words]  # every word checked, spent or not
    if limit is not None and _reads(text) > limit:
        plans = [(word, p) for word, p in plans if word.strip().lower().startswith(_NOT_FAULTS)]
    for _word, word_plan in plans:
        plan = plan.then(word_plan)
    return plan


def strip_magic(text: str) -> tuple[str, list[str]]:
    """Remove magic tokens from `text`; return the cleaned text and the fault words found."""
    found: list[str] = []

    def collect(match: re.Match[str]) -> str:
        kind, arg = match.group(1), match.group(2)
        found.append(arg if kind == "fault" else f"{kind}:{arg}")
        return ""

    cleaned = MAGIC_TOKEN.sub(collect, text)
    return (cleaned.strip() if found else cleaned), found


def magic_plan(texts: list[str]) -> FaultPlan:
    """The plan selected by magic tokens in the given prompt texts."""
    words: list[str] = []
    for text in texts:
        words.extend(strip_magic(text)[1])
    return parse_fault_list(",".join(words))
