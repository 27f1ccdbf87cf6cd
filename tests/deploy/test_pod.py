"""The container's command with the pod's environment serves, answers its probes and drains.

The environment is what the container gets: the Dockerfile's ENV, then the ConfigMap's and
the Secret's keys (envFrom). Only what cannot hold on a test machine is changed: loopback
instead of 0.0.0.0 and free ports (the tests use loopback only), a fresh PostgreSQL database
for the store (the placeholder host does not exist), and the upstream URL, pointing at an
emulator that requires the Secret's API key. `gemini-gateway serve` (ENTRYPOINT + CMD) runs
as a process; then:

- the Docker HEALTHCHECK command exits 0;
- the metrics port answers at the scrape annotation's path;
- a generate call goes through with the Secret's key, and its usage lands in PostgreSQL;
- SIGTERM drains it with status 0 well within terminationGracePeriodSeconds.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import socket
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml

from gemini_gateway.client import GatewayClient, UsageClient, response_text, text_request
from gemini_gateway.emulator import EmulatorHandle, EmulatorSettings, start_emulator
from gemini_gateway.server.identity import token_sha256
from tests.deploy import MANIFESTS, checker, dockerfile
from tests.postgres import PostgresAdmin, require

pytestmark = pytest.mark.postgres
LISTENING = re.compile(rb"listening on (127\.0\.0\.1:\d+)")


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def pod_template() -> dict[str, Any]:
    return dict(yaml.safe_load((MANIFESTS / "deployment.yaml").read_text())["spec"]["template"])


def pod_environment() -> dict[str, str]:
    _args, stages = dockerfile()
    env = {k: v for k, v in stages[-1].env().items() if k.startswith("GEMINI_GATEWAY_")}
    _kustomization, resources = checker().load()
    env.update(checker().pod_environment(resources))
    return env


@pytest.fixture
async def emulator() -> AsyncIterator[EmulatorHandle]:
    api_key = pod_environment()["GEMINI_GATEWAY_API_KEY"]
    handle = await start_emulator(EmulatorSettings(api_key=api_key))
    yield handle
    await handle.close()


async def _healthcheck(env: dict[str, str]) -> int:
    (check,) = dockerfile()[1][-1].all("HEALTHCHECK")
    command = check.exec_form()
    assert command is not None
    process = await asyncio.create_subprocess_exec(sys.executable, *command[1:], env=env)
    return await asyncio.wait_for(process.wait(), 30)


POD_TOKEN = "pod-test-token"


async def test_pod_environment_serves_probes_records_and_drains(
    postgres: PostgresAdmin, emulator: EmulatorHandle, tmp_path: Path
) -> None:
    require(postgres)
    pod = pod_environment()
    assert pod["GEMINI_GATEWAY_UPSTREAM"] == "gemini"
    assert pod["GEMINI_GATEWAY_STORE_URL"].startswith("postgresql+asyncpg://")
    port, metrics_port = free_port(), free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("GEMINI_", "GOOGLE_"))}
    env.update(pod)
    # The Secret's callers, with a digest of a token this test knows instead of the placeholder.
    projects = json.loads(pod["GEMINI_GATEWAY_PROJECTS"])
    ((project, config),) = projects.items()
    config["callers"][0]["token_sha256"] = token_sha256(POD_TOKEN)
    env.update(
        GEMINI_GATEWAY_PROJECTS=json.dumps(projects),
        GEMINI_GATEWAY_HOST="127.0.0.1",
        GEMINI_GATEWAY_PORT=str(port),
        GEMINI_GATEWAY_METRICS_PORT=str(metrics_port),
        GEMINI_GATEWAY_STORE_URL=postgres.url(await postgres.create()),
        GEMINI_GATEWAY_UPSTREAM_URL=emulator.url,
        GEMINI_GATEWAY_CONFIG=str(tmp_path / "absent.toml"),
    )
    assert project
    entrypoint = Path(sys.executable).with_name("gemini-gateway")
    log = tmp_path / "gateway.log"
    with log.open("wb") as out:
        process = await asyncio.create_subprocess_exec(
            entrypoint, "serve", cwd=tmp_path, env=env, stdout=out, stderr=asyncio.subprocess.STDOUT
        )
    try:
        deadline = time.monotonic() + 60
        while not LISTENING.search(log.read_bytes()):
            assert process.returncode is None, log.read_text()
            assert time.monotonic() < deadline, log.read_text()
            await asyncio.sleep(0.05)
        target = f"127.0.0.1:{port}"

        assert await _healthcheck(env) == 0, log.read_text()

        annotations = pod_template()["metadata"]["annotations"]
        async with (
            aiohttp.ClientSession() as http,
            http.get(f"http://127.0.0.1:{metrics_port}{annotations['prometheus.io/path']}") as got,
        ):
            assert got.status == 200
            assert "gateway_grpc_calls_total" in await got.text()

        async with GatewayClient(target, token=POD_TOKEN) as client:
            answer = await client.generate(text_request("gemini-2.5-flash", "Hello"), timeout=10)
        assert response_text(answer).startswith("Echo: Hello")
        async with UsageClient(target, token=POD_TOKEN) as usage:
            for _ in range(100):
                if (await usage.query()).totals.request_count == 1:
                    break
                await asyncio.sleep(0.05)
            else:
                raise AssertionError("the call's usage was not recorded in PostgreSQL")

        started = time.monotonic()
        process.send_signal(signal.SIGTERM)
        status = await asyncio.wait_for(process.wait(), 40)
        took = time.monotonic() - started
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    assert status == 0, log.read_text()
    grace = pod_template()["spec"]["terminationGracePeriodSeconds"]
    assert took < grace, f"drained in {took:.1f} s, beyond terminationGracePeriodSeconds {grace}"
