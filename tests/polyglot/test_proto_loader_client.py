"""Node without generated code: @grpc/grpc-js with @grpc/proto-loader reads protos/ (and the
Google protos that `make generate` links into third_party/) at run time and calls the gateway.

The client is the snippet docs/polyglot.md shows, run as it is there: from the repository
root, `node tests/polyglot/proto_loader_client.mjs HOST:PORT`.
"""

from __future__ import annotations

import asyncio
import json
import shutil
from pathlib import Path

import aiohttp
import pytest

from gemini_gateway.emulator.runner import EmulatorHandle
from gemini_gateway.server.app import Gateway
from tests.polyglot.conftest import ROOT, missing

CLIENT = Path(__file__).resolve().with_name("proto_loader_client.mjs")
DOC = ROOT / "docs" / "polyglot.md"
NEEDED = {
    "node_modules/@grpc/grpc-js": "npm ci",
    "node_modules/@grpc/proto-loader": "npm ci",
    "third_party/google/api/annotations.proto": "make generate",
    "third_party/google/longrunning/operations.proto": "make generate",
}


def test_doc_shows_the_client_that_runs_here() -> None:
    shown = CLIENT.read_text() in DOC.read_text()
    assert shown, f"docs/polyglot.md must show {CLIENT.name} verbatim: it is the tested snippet"


@pytest.mark.asyncio(loop_scope="session")
async def test_proto_loader_client_generate_and_stream(
    gateway: Gateway, emulator: EmulatorHandle
) -> None:
    absent = missing(NEEDED)
    assert not absent, f"missing: {absent}"
    node = shutil.which("node")
    assert node, "node is not on PATH"
    # Asynchronous: the gateway serves from this same event loop while Node runs.
    process = await asyncio.create_subprocess_exec(
        node, CLIENT.relative_to(ROOT), gateway.target,
        cwd=ROOT, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    stdout, stderr = await asyncio.wait_for(process.communicate(), timeout=30)
    assert process.returncode == 0, stderr.decode()
    report = json.loads(stdout)

    generate = report["generate"]
    assert generate["text"].startswith("Echo: hello from proto-loader")
    assert generate["finishReason"] == "STOP"  # enums as names
    assert generate["totalTokens"] > 0  # usageMetadata.totalTokenCount: camelCase fields
    assert generate["partMember"] == "text"  # the oneof member, as proto-loader names it

    texts = report["stream"]["texts"]
    assert len(texts) == 3  # the prompt's [[chunks:3]] directive: one message per chunk
    assert all(texts)
    assert "".join(texts).startswith("Echo: proto-loader stream")

    assert "models/gemini-2.5-flash" in report["models"]

    # The labels map (field 1000, a gateway extension) reached the REST body.
    async with (
        aiohttp.ClientSession() as http,
        http.get(f"{emulator.url}/_emulator/requests") as response,
    ):
        seen = await response.json()
    generate_bodies = [r["body"] for r in seen if r["path"].endswith(":generateContent")]
    assert [body.get("labels") for body in generate_bodies] == [{"team": "proto-loader"}]
