"""No credential leaves the gateway, whatever the upstream echoes.

The emulator's `echo` fault quotes the request's URL and headers (the API key, the caller's
key in pass-through mode, the Vertex AI bearer token) in every kind of error body: Google's
JSON error with each google.rpc detail kind, a proxy's HTML page, plain text, an error
object in an HTTP 200 body, and on a stream a mid-stream error, a malformed or a cut-off
event. Every error kind goes through a real gateway, once per way of holding a credential;
then everything the gateway said or kept is searched for each secret: status messages,
trailing metadata (grpc-status-details-bin decoded, unknown detail types too), the Python
log at DEBUG, the Prometheus metrics and every row of every table of its SQLite store.
"""

from __future__ import annotations

import logging
import secrets
import sqlite3
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote, quote_plus

import grpc
import pytest
from google.oauth2 import credentials as oauth2
from google.protobuf import symbol_database, text_format
from google.rpc import status_pb2
from prometheus_client import generate_latest

from gemini_gateway.client.gateway_client import text_request
from gemini_gateway.emulator.runner import EmulatorHandle, start_emulator
from gemini_gateway.generated.google.ai.generativelanguage.v1beta import (
    generative_service_pb2_grpc,
)
from gemini_gateway.server.app import start_gateway
from gemini_gateway.server.config import Settings
from gemini_gateway.server.redaction import REDACTED
from gemini_gateway.server.upstream import Flavour, VertexFlavour

pytestmark = pytest.mark.asyncio(loop_scope="session")

S = grpc.StatusCode
# Every kind of error body, unary: fault list -> the status the caller must see.
UNARY_FAULTS = [
    ("echo,400", S.INVALID_ARGUMENT),
    ("echo,429", S.RESOURCE_EXHAUSTED),
    ("echo,500", S.INTERNAL),
    ("echo,503", S.UNAVAILABLE),
    ("echo,html", S.UNAVAILABLE),
    ("echo,plain", S.UNAVAILABLE),
    ("echo,plain:403", S.PERMISSION_DENIED),
    ("echo,error_200:400", S.INVALID_ARGUMENT),
    ("echo,malformed", S.INTERNAL),
]
# ... and streamed: before the first chunk, mid-stream, and cut off.
STREAM_FAULTS = [
    ("echo,503", S.UNAVAILABLE),
    ("echo,html", S.UNAVAILABLE),
    ("echo,plain:429", S.RESOURCE_EXHAUSTED),
    ("echo,stream_error", S.INTERNAL),
    ("echo,stream_error_raw:429", S.RESOURCE_EXHAUSTED),
    ("echo,error_200:400", S.INVALID_ARGUMENT),
    ("echo,malformed", S.INTERNAL),
    ("echo,truncated", S.UNAVAILABLE),
]
# Faults whose status message itself quotes the echo (so it must show the redaction).
QUOTED_IN_MESSAGE = {"echo,400", "echo,503", "echo,html", "echo,plain", "echo,malformed"}


@dataclass
class Credential:
    """One way the gateway holds a secret: its settings, flavour and the caller's metadata."""

    name: str
    secret: str
    settings: dict[str, object]
    flavour: Callable[[str], Flavour] | None = None
    metadata: tuple[tuple[str, str], ...] = ()


def _credentials() -> list[Credential]:
    # `+` and `/` so that the percent-encoded spellings differ from the plain one.
    api_key = f"gw+key/{secrets.token_hex(12)}"
    caller_key = f"caller+key/{secrets.token_hex(12)}"
    token = f"vertex-token.{secrets.token_hex(16)}"
    creds = oauth2.Credentials(token=token)
    return [
        Credential("api_key", api_key, {"api_key": api_key}),
        Credential(
            "pass_through",
            caller_key,
            {"pass_through_api_key": True, "http_client": "httpx"},
            metadata=(("x-goog-api-key", caller_key),),
        ),
        Credential(
            "vertex",
            token,
            {"upstream": "vertex"},
            flavour=lambda url: VertexFlavour("leak-proj", "us-central1", url, creds),
        ),
    ]


def _traces(secret: str) -> list[str]:
    """The secret, its encoded spellings, and its first and last ten characters."""
    forms = {secret, quote(secret, safe=""), quote(secret), quote_plus(secret)}
    forms |= {form.lower() for form in forms if "%" in form}
    return sorted(forms | {secret[:10], secret[-10:]})


def _status_text(exc: grpc.aio.AioRpcError) -> str:
    """All the caller got: code, message, every trailer, details unpacked where known."""
    parts = [exc.code().name, exc.details() or "", exc.debug_error_string() or ""]
    for key, value in exc.trailing_metadata() or ():
        raw = value if isinstance(value, bytes) else value.encode()
        parts.append(f"{key}={raw.decode('latin-1')}")
        if key == "grpc-status-details-bin":
            status = status_pb2.Status.FromString(raw)
            parts.append(text_format.MessageToString(status, as_utf8=True))
            for detail in status.details:
                parts.append(detail.type_url)
                type_name = detail.type_url.rpartition("/")[2]
                message = symbol_database.Default().GetSymbol(type_name)()
                detail.Unpack(message)
                parts.append(text_format.MessageToString(message, as_utf8=True))
    for key, value in exc.initial_metadata() or ():
        parts.append(f"{key}={value!r}")
    return "\n".join(parts)


def _store_dump(path: Path) -> str:
    """Every row of every table, bytes as latin-1 text."""
    lines = []
    with sqlite3.connect(path) as db:
        tables = [row[0] for row in db.execute("SELECT name FROM sqlite_master WHERE type='table'")]
        for table in tables:
            for row in db.execute(f'SELECT * FROM "{table}"'):
                cells = [c.decode("latin-1") if isinstance(c, bytes) else str(c) for c in row]
                lines.append(f"{table}: {' | '.join(cells)}")
    assert tables, "the store has no tables"
    return "\n".join(lines)


@pytest.fixture(scope="module")
async def echo_emulator() -> AsyncIterator[EmulatorHandle]:
    handle = await start_emulator()
    yield handle
    await handle.close()


@pytest.mark.parametrize("credential", _credentials(), ids=lambda c: c.name)
async def test_no_secret_in_any_error_log_metric_or_record(
    credential: Credential,
    echo_emulator: EmulatorHandle,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    store = tmp_path / "gateway.db"
    values: dict[str, object] = {"upstream": "emulator", "upstream_url": echo_emulator.url}
    values.update(credential.settings)
    settings = Settings(
        port=0,
        store_url=f"sqlite+aiosqlite:///{store}",
        logging_enabled=True,
        **values,  # type: ignore[arg-type]
    )
    flavour = credential.flavour(echo_emulator.url) if credential.flavour else None
    gateway = await start_gateway(settings, flavour=flavour)
    said: list[str] = []
    try:
        async with grpc.aio.insecure_channel(gateway.target) as channel:
            stub = generative_service_pb2_grpc.GenerativeServiceStub(channel)
            for fault, code in UNARY_FAULTS:
                request = text_request("gemini-2.5-flash", f"hi [[fault:{fault}]]")
                with pytest.raises(grpc.aio.AioRpcError) as info:
                    await stub.GenerateContent(request, metadata=credential.metadata)
                assert info.value.code() is code, (fault, info.value.details())
                said.append(_status_text(info.value))
                if fault in QUOTED_IN_MESSAGE:  # the echo did reach the gateway
                    assert REDACTED in (info.value.details() or ""), (fault, said[-1])
            for fault, code in STREAM_FAULTS:
                request = text_request("gemini-2.5-flash", f"hi [[fault:{fault}]]")
                call = stub.StreamGenerateContent(request, metadata=credential.metadata)
                with pytest.raises(grpc.aio.AioRpcError) as info:
                    async for chunk in call:
                        said.append(str(chunk))
                assert info.value.code() is code, (fault, info.value.details())
                said.append(_status_text(info.value))
    finally:
        await gateway.stop(0)  # flushes the recorder into the store

    places = {
        "responses": "\n".join(said),
        "log": caplog.text,
        "metrics": generate_latest().decode(),
        "store": _store_dump(store),
    }
    assert REDACTED in places["responses"]
    leaks = [
        (place, trace)
        for place, text in places.items()
        for trace in _traces(credential.secret)
        if trace in text
    ]
    assert leaks == []
