"""The web console in a real browser: Debian's Chromium driven by Playwright against a real
gateway (logging on), the real emulator (fast tuning and batches), the gateway's REST/JSON face
serving console/, and a store seeded by real calls.

Chromium comes from Debian (`scripts/install_browser.sh`; Playwright's own browser downloads are
never used). Outside CI, the tests skip when Chromium or the `playwright` package is missing;
with CI set they install Chromium if they can and fail otherwise.

Screenshots of every page go to build/screenshots/ (git-ignored), as test artifacts.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import grpc
import pytest
from google.longrunning import operations_pb2, operations_pb2_grpc
from google.protobuf import struct_pb2

from gemini_gateway.client.gateway_client import text_request
from gemini_gateway.emulator.batches import BATCHES_KEY
from gemini_gateway.emulator.runner import EmulatorHandle, start_emulator
from gemini_gateway.emulator.settings import EmulatorSettings
from gemini_gateway.generated.gemini.gateway.v1 import logs_pb2, logs_pb2_grpc
from gemini_gateway.generated.google.ai.generativelanguage.v1beta import (
    content_pb2,
    generative_service_pb2,
    generative_service_pb2_grpc,
    model_service_pb2,
    model_service_pb2_grpc,
    tuned_model_pb2,
)
from gemini_gateway.server.app import Gateway, start_gateway
from gemini_gateway.server.config import Settings

ROOT = Path(__file__).resolve().parents[2]
SCREENSHOTS = ROOT / "build" / "screenshots"
CHROMIUM = Path(os.environ.get("GATEWAY_TEST_CHROMIUM", "/usr/bin/chromium"))
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
IN_CI = bool(os.environ.get("CI"))

FLASH = "models/gemini-2.5-flash"
PRO = "models/gemini-2.5-pro"
TUNING_SECONDS = 1.0
BATCH_SECONDS = 0.3
# (model, prompt, labels) of the seeded calls, oldest first.
SEED_CALLS = [
    (FLASH, "Where is my refund for order 1182?", {"team": "billing", "env": "prod"}),
    (
        FLASH,
        "Summarise the search relevance report in three bullets",
        {"team": "search", "env": "prod"},
    ),
    (PRO, "Rank three search results for 'tide tables'", {"team": "search", "env": "staging"}),
    (FLASH, "How do I reset my password?", {"team": "support"}),
    (PRO, "Write a haiku about the tide", {"team": "search", "env": "prod"}),
    (FLASH, "Explain invoice line 4", {"team": "billing"}),
    (FLASH, "Name three long rivers", {"team": "search", "env": "prod"}),
]
FAILING_PROMPT = "Overloaded [[fault:500]]"


def _browser_problem() -> str | None:
    """Why the browser tests cannot run here (None: they can)."""
    try:
        import playwright.async_api  # noqa: F401
    except ImportError:
        return "the playwright package is not installed (.venv/bin/pip install playwright)"
    if not CHROMIUM.exists():
        if IN_CI:
            script = ROOT / "scripts" / "install_browser.sh"
            subprocess.run(["sh", str(script)], check=False)
        if not CHROMIUM.exists():
            return f"{CHROMIUM} is missing (run scripts/install_browser.sh as root)"
    return None


@pytest.fixture(scope="session")
def browser_ready() -> None:
    problem = _browser_problem()
    if problem is not None:
        if IN_CI:
            pytest.fail(f"browser tests cannot run in CI: {problem}")
        pytest.skip(problem)


# --- the gateway, its face and the seeded store -----------------------------------------------


@dataclass
class Console:
    """What the browser tests talk to."""

    gateway: Gateway
    emulator: EmulatorHandle
    url: str
    channel: grpc.aio.Channel
    http: aiohttp.ClientSession
    seeded: dict[str, Any] = field(default_factory=dict)

    @property
    def generative(self) -> generative_service_pb2_grpc.GenerativeServiceStub:
        return generative_service_pb2_grpc.GenerativeServiceStub(self.channel)

    @property
    def logs(self) -> logs_pb2_grpc.LogServiceStub:
        return logs_pb2_grpc.LogServiceStub(self.channel)

    async def generate(self, model: str, prompt: str, labels: dict[str, str]) -> None:
        await self.generative.GenerateContent(text_request(model, prompt, labels))

    async def flush(self) -> None:
        await self.gateway.recorder.flush()

    async def face(self, method: str, path: str, body: Any = None) -> Any:
        """A call to the JSON face, as the console makes it."""
        async with self.http.request(method, self.url + path, json=body) as response:
            answer = await response.json()
            assert response.status == 200, answer
            return answer


def _function_call_request() -> generative_service_pb2.GenerateContentRequest:
    """A conversation with a system instruction, a function call and its response."""
    args = struct_pb2.Struct()
    args.update({"city": "Lisbon"})
    result = struct_pb2.Struct()
    result.update({"temperature_c": 21, "sky": "clear"})
    request = generative_service_pb2.GenerateContentRequest(
        model=FLASH,
        system_instruction=content_pb2.Content(
            parts=[content_pb2.Part(text="You are a terse weather assistant.")]
        ),
        contents=[
            content_pb2.Content(role="user", parts=[content_pb2.Part(text="Weather in Lisbon?")]),
            content_pb2.Content(
                role="model",
                parts=[
                    content_pb2.Part(
                        function_call=content_pb2.FunctionCall(name="get_weather", args=args)
                    )
                ],
            ),
            content_pb2.Content(
                role="user",
                parts=[
                    content_pb2.Part(
                        function_response=content_pb2.FunctionResponse(
                            name="get_weather", response=result
                        )
                    )
                ],
            ),
        ],
        tools=[
            content_pb2.Tool(
                function_declarations=[
                    content_pb2.FunctionDeclaration(
                        name="get_weather", description="Current weather of a city"
                    )
                ]
            )
        ],
        labels={"team": "weather", "env": "prod"},
    )
    request.generation_config.temperature = 0.2
    return request


async def _seed(console: Console) -> None:
    """Calls through the gateway (logged), a tuned model, all written before the tests start."""
    models = model_service_pb2_grpc.ModelServiceStub(console.channel)
    tuning = await models.CreateTunedModel(
        model_service_pb2.CreateTunedModelRequest(
            tuned_model_id="console-increment",
            tuned_model=tuned_model_pb2.TunedModel(
                display_name="Console increment",
                base_model="models/gemini-1.5-flash-001-tuning",
                tuning_task=tuned_model_pb2.TuningTask(
                    hyperparameters=tuned_model_pb2.Hyperparameters(
                        epoch_count=4, batch_size=2, learning_rate=0.001
                    ),
                    training_data=tuned_model_pb2.Dataset(
                        examples=tuned_model_pb2.TuningExamples(
                            examples=[
                                tuned_model_pb2.TuningExample(text_input=str(n), output=str(n + 1))
                                for n in range(1, 9)
                            ]
                        )
                    ),
                ),
            ),
        )
    )
    for model, prompt, labels in SEED_CALLS:
        await console.generate(model, prompt, labels)
    with pytest.raises(grpc.aio.AioRpcError):
        await console.generate(FLASH, FAILING_PROMPT, {"team": "billing"})
    stream = console.generative.StreamGenerateContent(
        text_request(PRO, "Tell a short story about a lighthouse", {"team": "support"})
    )
    async for _ in stream:
        pass
    await console.generative.GenerateContent(_function_call_request())
    await console.flush()
    operations = operations_pb2_grpc.OperationsStub(console.channel)
    done = await operations.WaitOperation(
        operations_pb2.WaitOperationRequest(name=tuning.name), timeout=30
    )
    assert done.done and not done.HasField("error"), done
    listing = await console.logs.ListLogs(logs_pb2.ListLogsRequest(page_size=100))
    console.seeded = {
        "tuned_model": "tunedModels/console-increment",
        "log_count": len(listing.logs),
        "logs": {log.prompt_preview: log.name for log in listing.logs},
    }


@pytest.fixture(scope="session")
async def console(
    browser_ready: None, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[Console]:
    emulator = await start_emulator(EmulatorSettings(tuning_seconds=TUNING_SECONDS))
    emulator.app[BATCHES_KEY].seconds = BATCH_SECONDS
    store = tmp_path_factory.mktemp("console-store") / "console.db"
    gateway = await start_gateway(
        Settings(
            port=0,
            upstream="emulator",
            upstream_url=emulator.url,
            logging_enabled=True,
            store_url=f"sqlite+aiosqlite:///{store}",
            console_port=0,  # the console and the JSON face, on a free port
        )
    )
    assert gateway.console is not None
    channel = grpc.aio.insecure_channel(gateway.target)
    http = aiohttp.ClientSession()
    handle = Console(gateway, emulator, gateway.console.url, channel, http)
    try:
        await _seed(handle)
        yield handle
    finally:
        await http.close()
        await channel.close()
        await gateway.stop(0)
        await emulator.close()


# --- the browser -------------------------------------------------------------------------------


@pytest.fixture(scope="session")
async def browser(browser_ready: None) -> AsyncIterator[Any]:
    from playwright.async_api import async_playwright

    async with async_playwright() as playwright:
        launched = await playwright.chromium.launch(
            executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS
        )
        try:
            yield launched
        finally:
            await launched.close()


@pytest.fixture(scope="session")
def screenshots() -> Path:
    shutil.rmtree(SCREENSHOTS, ignore_errors=True)
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    return SCREENSHOTS


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    """Keeps each phase's report on the test, for the page fixture to see a failure."""
    report = yield
    setattr(item, f"report_{report.when}", report)
    return report


@pytest.fixture
async def page(
    request: pytest.FixtureRequest, browser: Any, console: Console, screenshots: Path
) -> AsyncIterator[Any]:
    """A fresh tab on the console; uncaught script errors fail the test, and a failed test
    leaves a screenshot of where it stopped (build/screenshots/FAILED-<test>.png)."""
    context = await browser.new_context(
        base_url=console.url, accept_downloads=True, viewport={"width": 1360, "height": 900}
    )
    context.set_default_timeout(10_000)
    tab = await context.new_page()
    errors: list[str] = []
    tab.on("pageerror", lambda error: errors.append(str(error)))
    try:
        yield tab
        report = getattr(request.node, "report_call", None)
        if report is not None and report.failed:
            await tab.screenshot(path=str(screenshots / f"FAILED-{request.node.name}.png"))
    finally:
        await context.close()
    assert not errors, f"script errors in the console: {errors}"


async def until(condition: Any, timeout: float = 10.0) -> Any:
    """Polls an async condition until it returns something true."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        value = await condition()
        if value:
            return value
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.1)
