"""Reading proto3-JSON request bodies, which Google accepts in camelCase and snake_case."""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from typing import Any, overload

from aiohttp import web

from gemini_gateway.emulator.errors import ApiError

_UPPER = re.compile(r"[A-Z]")


def snake_case(name: str) -> str:
    """`generationConfig` -> `generation_config`."""
    return _UPPER.sub(lambda m: "_" + m.group(0).lower(), name)


def camel_case(name: str) -> str:
    """`generation_config` -> `generationConfig`."""
    head, *rest = name.split("_")
    return head + "".join(word[:1].upper() + word[1:] for word in rest)


def field(obj: Any, name: str, default: Any = None) -> Any:
    """Value of the camelCase field `name` in `obj`, also found under its snake_case name.

    Anything that is not a mapping reads as empty, so callers can chain lookups on
    untrusted JSON without type checks at every level.
    """
    if not isinstance(obj, Mapping):
        return default
    if name in obj:
        return obj[name]
    snake = snake_case(name)
    if snake in obj:
        return obj[snake]
    return default


def mapping(obj: Any, name: str) -> Mapping[str, Any]:
    """Field `name` as a mapping; {} when missing or of another type."""
    value = field(obj, name)
    return value if isinstance(value, Mapping) else {}


def items(obj: Any, name: str) -> list[Any]:
    """Field `name` as a list; [] when missing or of another type."""
    value = field(obj, name)
    return value if isinstance(value, list) else []


@overload
def as_int(value: Any, default: int) -> int: ...
@overload
def as_int(value: Any, default: int | None = None) -> int | None: ...
def as_int(value: Any, default: int | None = None) -> int | None:
    """Integers arrive as JSON numbers or, for int64 fields, as strings."""
    if isinstance(value, bool):
        return default
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, str):
        try:
            return int(value.strip())
        except ValueError:
            return default
    return default


@overload
def as_float(value: Any, default: float) -> float: ...
@overload
def as_float(value: Any, default: float | None = None) -> float | None: ...
def as_float(value: Any, default: float | None = None) -> float | None:
    if isinstance(value, bool):
        return default
    if isinstance(value, int | float):
        return float(value)
    if isinstance(value, str):
        try:
            return float(value.strip())
        except ValueError:
            return default
    return default


async def read_body(request: web.Request) -> dict[str, Any]:
    """The JSON object in the request body; an empty body reads as {} like at Google."""
    raw = (await request.read()).decode("utf-8", errors="replace")
    if not raw.strip():
        return {}
    try:
        body = json.loads(raw)
    except ValueError as exc:
        lines = raw.splitlines()
        lineno = exc.lineno if isinstance(exc, json.JSONDecodeError) else 0
        line = lines[lineno - 1] if 0 < lineno <= len(lines) else ""
        raise ApiError(
            "INVALID_ARGUMENT", f"Invalid JSON payload received. Unexpected token.\n{line}"
        ) from None
    if not isinstance(body, dict):
        raise ApiError(
            "INVALID_ARGUMENT",
            "Invalid JSON payload received. Expected an object, got "
            f"{type(body).__name__} at the top level.",
        )
    return body
