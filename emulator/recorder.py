"""Request log and handler statistics, exposed under /_emulator/ for tests.

The stats let a test prove that a client going away really ended the request here:
`cancelled` counts handlers cancelled (or failing to write) because the peer disconnected.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections import deque
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from gemini_gateway.emulator.wire import json_response

TEST_PREFIX = "/_emulator/"

# Set while handling a request whose connection the emulator itself drops (the `disconnect`
# fault), so the resulting cancellation is not mistaken for the client going away. Handler and
# middleware run in one task, so they share this context.
_aborted_by_emulator: ContextVar[bool] = ContextVar("aborted_by_emulator", default=False)


def mark_aborted() -> None:
    """Record that the emulator is about to drop the current request's connection."""
    _aborted_by_emulator.set(True)


@dataclass
class Recorder:
    size: int = 200
    requests: deque[dict[str, Any]] = field(init=False)
    started: int = 0
    completed: int = 0
    cancelled: int = 0
    aborted: int = 0

    def __post_init__(self) -> None:
        self.requests = deque(maxlen=self.size)

    def stats(self) -> dict[str, int]:
        return {
            "started": self.started,
            "completed": self.completed,
            "cancelled": self.cancelled,
            "aborted": self.aborted,
            "open": self.started - self.completed - self.cancelled - self.aborted,
        }

    async def record(self, request: web.Request) -> None:
        raw = await request.read() if request.can_read_body else b""
        try:
            body = json.loads(raw) if raw else None
        except ValueError:
            body = None
        self.requests.append(
            {
                "method": request.method,
                "path": request.path,
                "query": dict(request.query),
                "headers": {k.lower(): v for k, v in request.headers.items()},
                "body": body,
                # The labels as received (JSON value of the body's `labels`), checked or not.
                "labels": body.get("labels") if isinstance(body, dict) else None,
                "started_at": time.time(),
            }
        )


RECORDER_KEY = web.AppKey("emulator_recorder", Recorder)


@web.middleware
async def recording_middleware(request: web.Request, handler: Any) -> web.StreamResponse:
    """Log the request and count how its handler ends."""
    if request.path.startswith(TEST_PREFIX):
        return await handler(request)
    recorder = request.app[RECORDER_KEY]
    recorder.started += 1
    _aborted_by_emulator.set(False)
    try:
        await recorder.record(request)
        response = await handler(request)
    except asyncio.CancelledError:
        if _aborted_by_emulator.get():
            recorder.aborted += 1
        else:
            recorder.cancelled += 1
        raise
    except ConnectionResetError:
        # A write to a connection that is already gone. Answering with a throwaway
        # response lets aiohttp drop the exchange quietly instead of logging a traceback.
        if _aborted_by_emulator.get():
            recorder.aborted += 1
        else:
            recorder.cancelled += 1
        return web.Response(status=499)
    except BaseException:
        recorder.completed += 1
        raise
    recorder.completed += 1
    return response


async def list_requests(request: web.Request) -> web.Response:
    return json_response(list(request.app[RECORDER_KEY].requests))


async def clear_requests(request: web.Request) -> web.Response:
    request.app[RECORDER_KEY].requests.clear()
    return json_response({})


async def get_stats(request: web.Request) -> web.Response:
    return json_response(request.app[RECORDER_KEY].stats())


async def reset_stats(request: web.Request) -> web.Response:
    """Zero the counters; handlers still running stay counted as open."""
    recorder = request.app[RECORDER_KEY]
    recorder.started = recorder.stats()["open"]
    recorder.completed = recorder.cancelled = recorder.aborted = 0
    return json_response(recorder.stats())


def add_routes(app: web.Application) -> None:
    app.router.add_get(TEST_PREFIX + "requests", list_requests)
    app.router.add_delete(TEST_PREFIX + "requests", clear_requests)
    app.router.add_get(TEST_PREFIX + "stats", get_stats)
    app.router.add_delete(TEST_PREFIX + "stats", reset_stats)
