"""The web console's place in the gateway: where its files are and what the page is told.

The console is static files (console/ in the repository, `gemini_gateway.console` when
installed) served by the HTTP face on the console port; everything it shows it reads through
the face's JSON routes, with the caller's own token. `/console/info` tells the page how the
gateway runs, so it can say so: in development mode (no identities configured) every call
belongs to project `default` and the console listens on a loopback address only.
"""

from __future__ import annotations

import logging
from pathlib import Path

from aiohttp import web

from gemini_gateway.server.config import Settings
from gemini_gateway.server.identity import DEFAULT_PROJECT, CallerDirectory
from gemini_gateway.server.startup import StartupError, check_port, is_loopback

log = logging.getLogger(__name__)

# server/ and console/ sit side by side, in the repository and in the installed package.
CONSOLE_DIR = Path(__file__).resolve().parent.parent / "console"


def info_route(settings: Settings, callers: CallerDirectory) -> web.RouteDef:
    """`GET /console/info`: development mode or not, and the address (no secrets)."""
    body = {
        "development": callers.development_mode,
        "host": settings.host,
        "project": DEFAULT_PROJECT if callers.development_mode else "",
    }

    async def info(_: web.Request) -> web.Response:
        return web.json_response(body)

    return web.get("/console/info", info)


DEFAULT_CONSOLE_PORT = 8080


def with_console_default(settings: Settings) -> Settings:
    """`serve`'s console: on DEFAULT_CONSOLE_PORT in development mode on a loopback address
    unless a console port is set; nowhere otherwise. A taken default port is skipped with a
    warning rather than stopping the gateway (a port asked for explicitly does stop it)."""
    if settings.console_port is not None:
        return settings
    if not is_loopback(settings.host) or not CallerDirectory(settings).development_mode:
        return settings
    try:
        check_port(settings.host, DEFAULT_CONSOLE_PORT, "the console", "--console-port")
    except StartupError as exc:
        log.warning("no web console: %s", exc.message)
        return settings
    return settings.model_copy(update={"console_port": DEFAULT_CONSOLE_PORT})
