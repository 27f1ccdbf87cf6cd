"""Helpers shared by the store tests."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

from gemini_gateway.server.recorder import UsageEvent

FreshUrl = Callable[[], Awaitable[str]]
"""Returns the URL of a new, empty database of the dialect under test."""

T0 = datetime(2026, 3, 1, tzinfo=UTC)


def event(**fields: Any) -> UsageEvent:
    """A usage event with plausible defaults; keyword arguments override them."""
    values: dict[str, Any] = {
        "time": T0,
        "project": "p1",
        "caller": "alice",
        "model": "models/gemini-2.5-flash",
        "method": "GenerateContent",
        "labels": {},
        "status": "OK",
        "prompt_tokens": 100,
        "candidates_tokens": 50,
        "cached_tokens": 0,
        "thoughts_tokens": 0,
        "tool_use_tokens": 0,
        "total_tokens": 150,
        "latency_ms": 120.0,
        "first_chunk_ms": None,
        "incomplete": False,
    }
    values.update(fields)
    return UsageEvent(**values)
