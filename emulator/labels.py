"""Vertex AI's label rules, enforced on the emulator's Vertex AI paths.

Vertex AI checks the `labels` of a generate call and refuses a bad set with 400
INVALID_ARGUMENT and a google.rpc.BadRequest on the field `labels`. The Gemini API takes
`labels` without checking them, so the emulator's Gemini paths do not use this module.

The rules, over Unicode code points:
- at most 64 labels;
- keys 1-63 characters, values 0-63;
- only lowercase letters (category Ll), letters without case such as CJK (Lo), numbers
  (Nd, Nl, No), `_` and `-`; so no uppercase (Lu, Lt), modifier letters (Lm) or combining
  marks (Mn, Mc);
- keys start with a lowercase letter or a letter without case.
"""

from __future__ import annotations

import functools
import unicodedata
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from aiohttp import web

from gemini_gateway.emulator.errors import bad_request
from gemini_gateway.emulator.fields import field
from gemini_gateway.emulator.known_fields import read_request

MAX_LABELS = 64
MAX_KEY_CHARS = 63
MAX_VALUE_CHARS = 63
# How much of an offending key or value a description quotes.
_SHOWN_CHARS = 30

_LETTERS = frozenset({"Ll", "Lo"})
_NUMBERS = frozenset({"Nd", "Nl", "No"})
_PUNCTUATION = frozenset("_-")
_ALLOWED = "lowercase letters, numeric characters, underscores, dashes and international characters"

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _allowed(char: str) -> bool:
    category = unicodedata.category(char)
    return category in _LETTERS or category in _NUMBERS or char in _PUNCTUATION


def _shown(text: str) -> str:
    """A key or value as a description quotes it: one line, bounded."""
    if len(text) > _SHOWN_CHARS:
        text = text[:_SHOWN_CHARS] + "..."
    return repr(text)


def _text_problems(kind: str, text: str, limit: int) -> list[str]:
    problems = []
    if len(text) > limit:
        problems.append(
            f"label {kind} {_shown(text)} is {len(text)} characters long; at most {limit} allowed"
        )
    bad = list(dict.fromkeys(char for char in text if not _allowed(char)))  # in order
    if bad:
        listed = ", ".join(repr(char) for char in bad[:5]) + (", ..." if len(bad) > 5 else "")
        problems.append(
            f"label {kind} {_shown(text)} contains {listed}; only {_ALLOWED} are allowed"
        )
    return problems


def label_problems(labels: Any) -> list[str]:
    """Everything wrong with a request's `labels` (its JSON value), as descriptions."""
    if labels is None:
        return []  # JSON null is an empty map in proto3 JSON
    if not isinstance(labels, Mapping):
        return ["labels must be an object mapping keys to string values"]
    problems = []
    if len(labels) > MAX_LABELS:
        problems.append(f"at most {MAX_LABELS} labels are allowed; got {len(labels)}")
    for key, value in labels.items():
        if not key:
            problems.append("label keys must not be empty")
        elif _allowed(key[0]) and unicodedata.category(key[0]) not in _LETTERS:
            # A first character refused everywhere is reported with the others below.
            problems.append(
                f"label key {_shown(key)} must start with a lowercase letter or an "
                "international character"
            )
        problems.extend(_text_problems("key", key, MAX_KEY_CHARS))
        if not isinstance(value, str):
            problems.append(f"the value of label {_shown(key)} must be a string")
        else:
            problems.extend(_text_problems("value", value, MAX_VALUE_CHARS))
    return problems


def check_labels(body: Mapping[str, Any]) -> None:
    """Raise 400 INVALID_ARGUMENT with a BadRequest when the body's labels break a rule."""
    problems = label_problems(field(body, "labels"))
    if problems:
        message = "".join(f"* GenerateContentRequest.labels: {text}\n" for text in problems)
        raise bad_request(message, [("labels", text) for text in problems])


def enforcing_labels(handler: Handler) -> Handler:
    """The handler behind a label check, as Vertex AI's generate endpoints are."""

    @functools.wraps(handler)  # also keeps the handler's marks (handles_own_faults)
    async def checked(request: web.Request) -> web.StreamResponse:
        # Unknown fields are a parse error, found before the labels are looked at.
        check_labels(await read_request(request, "GenerateContentRequest"))
        return await handler(request)

    return checked
