"""Serving the emulator: in-process for tests, or blocking for the command line."""

from __future__ import annotations

import asyncio
import contextlib
import signal
from dataclasses import dataclass

from aiohttp import web

from gemini_gateway.emulator.app import create_app
from gemini_gateway.emulator.settings import EmulatorSettings

# A gateway opens a connection per live stream (HTTP/1.1), thousands at once in a burst;
# past aiohttp's default backlog (128) the kernel drops their SYNs, each then retried 1 s
# later. The kernel caps it at net.core.somaxconn.
LISTEN_BACKLOG = 4096


@dataclass
class EmulatorHandle:
    """A running emulator; `url` has no trailing slash."""

    url: str
    port: int
    app: web.Application
    runner: web.AppRunner

    async def close(self) -> None:
        await self.runner.cleanup()


async def start_emulator(
    settings: EmulatorSettings | None = None, host: str = "127.0.0.1", port: int = 0
) -> EmulatorHandle:
    """Start serving on `host:port` (port 0 picks a free one) and return at once."""
    app = create_app(settings)
    # handler_cancellation: a client that disconnects cancels its handler, which is what
    # the stats' `cancelled` counter observes.
    runner = web.AppRunner(app, handler_cancellation=True, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, host, port, backlog=LISTEN_BACKLOG)
    try:
        await site.start()
    except BaseException:
        await runner.cleanup()
        raise
    bound_port = runner.addresses[0][1]
    url_host = f"[{host}]" if ":" in host else host
    return EmulatorHandle(f"http://{url_host}:{bound_port}", bound_port, app, runner)


async def _serve(host: str, port: int, settings: EmulatorSettings | None) -> None:
    handle = await start_emulator(settings, host, port)
    print(f"Gemini emulator listening on {handle.url}", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        await handle.close()


def run_emulator(host: str, port: int, settings: EmulatorSettings | None = None) -> None:
    """Serve until SIGINT or SIGTERM."""
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_serve(host, port, settings))
