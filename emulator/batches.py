"""Batch operations. The emulator runs no batches, so every batch name is unknown."""

from __future__ import annotations

from aiohttp import web

from gemini_gateway.emulator.errors import not_found
from gemini_gateway.emulator.wire import json_response


def _unknown(request: web.Request) -> Exception:
    return not_found(f"Batch batches/{request.match_info['batch']} not found.")


async def get_batch(request: web.Request) -> web.Response:
    raise _unknown(request)


async def cancel_batch(request: web.Request) -> web.Response:
    raise _unknown(request)


async def delete_batch(request: web.Request) -> web.Response:
    raise _unknown(request)


async def list_batches(request: web.Request) -> web.Response:
    # proto3 JSON of an empty ListOperationsResponse.
    return json_response({})


def add_routes(app: web.Application) -> None:
    batch = "/v1beta/batches/{batch:[^/:]+}"
    app.router.add_get("/v1beta/batches", list_batches)
    app.router.add_get(batch, get_batch)
    app.router.add_delete(batch, delete_batch)
    app.router.add_post(batch + ":cancel", cancel_batch)
