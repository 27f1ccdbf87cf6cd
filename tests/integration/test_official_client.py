"""Google's own gRPC client library, v1beta and v1, works against the gateway unchanged."""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.asyncio(loop_scope="session")

SCRIPT = Path(__file__).with_name("official_client_script.py")


@pytest.mark.parametrize("version", ["v1beta", "v1"])
async def test_official_client_generate_stream_count_list(gateway, version: str) -> None:
    process = await asyncio.create_subprocess_exec(
        sys.executable, str(SCRIPT), gateway.target, "generate", version,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    stdout, stderr = await asyncio.wait_for(process.communicate(), timeout=60)
    assert process.returncode == 0, stderr.decode()
    report = json.loads(stdout)
    assert report["version"] == version
    assert report["generate_text"].startswith("Echo: official client")
    assert report["generate_finish"] == "STOP"
    assert report["generate_total_tokens"] > 0
    assert len(report["stream_texts"]) == 3
    assert "".join(report["stream_texts"]) == report["generate_text"]
    assert report["count_tokens"] > 0
    assert "models/gemini-2.5-flash" in report["models"]
    assert report["model"] == "models/gemini-2.5-flash"
    assert report["embedding_size"] > 0
    assert report["quota_error"] == {"status": "RESOURCE_EXHAUSTED", "retry_delay_s": 7}
