"""Stubs generated from protos/ for another language (Node: protobuf-es + Connect) work
against the gateway, over the real gRPC protocol."""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
from pathlib import Path

import aiohttp
import pytest

from gemini_gateway.emulator.runner import EmulatorHandle
from gemini_gateway.server.app import Gateway
from tests.polyglot.conftest import ROOT, missing

pytestmark = pytest.mark.asyncio(loop_scope="session")

HERE = Path(__file__).resolve().parent
NEEDED = {
    "node_modules/.bin/buf": "npm install",
    "node_modules/.bin/protoc-gen-es": "npm install",
    "node_modules/@connectrpc/connect-node": "npm install",
    "third_party/google/api/annotations.proto": "make generate",
}


@pytest.fixture
def node_stubs(tmp_path: Path) -> Path:
    """Stubs generated into tmp_path (never committed), importable by Node."""
    absent = missing(NEEDED)
    assert not absent, f"missing: {absent}"
    generated = subprocess.run(
        [ROOT / "node_modules/.bin/buf", "generate",
         "--template", HERE / "buf.gen.yaml", "--output", tmp_path],
        cwd=ROOT, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert generated.returncode == 0, generated.stderr
    # Node resolves bare imports (@bufbuild/protobuf) from the importing file's directories,
    # not NODE_PATH, for ES modules: link the repository's packages next to the stubs. Node
    # follows the link to the real path, so stubs and Connect share one runtime instance.
    (tmp_path / "node_modules").symlink_to(ROOT / "node_modules", target_is_directory=True)
    # The stubs are ES-module .js files.
    (tmp_path / "package.json").write_text('{"type": "module"}\n')
    return tmp_path / "es"


async def test_node_stubs_generate_stream_list(
    node_stubs: Path, gateway: Gateway, emulator: EmulatorHandle
) -> None:
    node = shutil.which("node")
    assert node, "node is not on PATH"
    # Asynchronous: the gateway serves from this same event loop while Node runs.
    process = await asyncio.create_subprocess_exec(
        node, HERE / "node_client.mjs", node_stubs, gateway.target,
        cwd=ROOT, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    stdout, stderr = await asyncio.wait_for(process.communicate(), timeout=30)
    assert process.returncode == 0, stderr.decode()
    report = json.loads(stdout)

    assert report["generate"]["text"].startswith("Echo: hello from node")
    assert report["generate"]["finishReason"] == "STOP"
    assert report["generate"]["totalTokens"] > 0

    texts = report["stream"]["texts"]
    assert len(texts) == 4  # the prompt's [[chunks:4]] directive
    assert all(texts)
    assert "".join(texts).startswith("Echo: node stream")

    assert "models/gemini-2.5-flash" in report["models"]

    # The labels map (a gateway extension field, number 1000) survived Node's encoding and
    # reached the REST body.
    async with (
        aiohttp.ClientSession() as http,
        http.get(f"{emulator.url}/_emulator/requests") as response,
    ):
        seen = await response.json()
    generate = [r for r in seen if r["path"].endswith(":generateContent")]
    assert [r["body"].get("labels") for r in generate] == [{"team": "node"}]
