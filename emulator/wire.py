"""JSON encoding the way Google's front end writes it."""

from __future__ import annotations

import json
from typing import Any

from aiohttp import web

JSON_CONTENT_TYPE = "application/json"
CHARSET = "UTF-8"


def pretty(payload: Any) -> str:
    """Unary bodies and errors: two-space indentation, non-ASCII kept as is."""
    return json.dumps(payload, indent=2, ensure_ascii=False)


def compact(payload: Any) -> str:
    """One line, as used inside `data:` events of an SSE stream."""
    return json.dumps(payload, separators=(",", ":"), ensure_ascii=False)


def json_response(payload: Any, status: int = 200) -> web.Response:
    return web.Response(
        text=pretty(payload) + "\n",
        status=status,
        content_type=JSON_CONTENT_TYPE,
        charset=CHARSET,
    )
