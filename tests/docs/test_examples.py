"""The docs' Python code is examples/*.py, and every example runs against a real gateway.

Each ```python block of README.md and docs/*.md is the whole text of the example file that
the text just above it names (`examples/NAME.py`), so the doc shows what the test runs. Every
examples/*.py then runs as a script (`python examples/NAME.py`, from the checkout) against a
gateway started in this process on a free loopback port (`start_gateway`, the embedded
emulator, a SQLite store in a temporary folder); the examples read its address from
`GEMINI_GATEWAY_TARGET`, typed_consumer.py from `--target`. Each must exit 0 and print the
lines named below.
"""

from __future__ import annotations

import asyncio
import os
import re
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from gemini_gateway.client import GatewayClient, UsageClient, text_request
from gemini_gateway.server.app import Gateway, start_gateway
from gemini_gateway.server.config import Settings
from tests.docs.markdown import DOCS, ROOT, blocks

EXAMPLES = ROOT / "examples"
NAMED_EXAMPLE = re.compile(r"examples/[\w/]+\.py")
TIMEOUT_S = 45

# Lines (regular expressions, whole lines) each example must print.
PRINTS: dict[str, list[str]] = {
    "quickstart.py": [r"Echo: Hi", r"Echo: Tell me a story"],
    "google_client.py": [r"Echo: Hi"],
    "emulator_start.py": [r"emulator at http://127\.0\.0\.1:\d+", r"Echo: Hello"],
    "emulator_genai.py": [r"Echo: Hello from google-genai"],
    "tuning.py": [
        r"22/22",
        r"tunedModels/increment ACTIVE",
        r"tunedModels/increment Increment",
    ],
    "usage_report.py": [
        r"\S+ \S+ \{'labels\.team': 'search', 'model': 'models/gemini-2\.5-flash'\} \d+ \d+ \S+",
        r"total cost: \S+ USD",
        r"prices read on \d{4}-\d\d-\d\d from https://\S+",
        r"label keys: \[LabelCount\(name='\w+', request_count=\d+\).*",
        r"teams: \[.*LabelCount\(name='search', request_count=\d+\).*",
    ],
    "typed_consumer.py": [
        r"async: 'Echo: Hello from a typed consumer.*",
        r"chunk: .*",
        r"sync: total_tokens = \d+",
        r"models: models/.*",
    ],
}
ARGUMENTS: dict[str, list[str]] = {"typed_consumer.py": ["--target", "{target}"]}


def python_blocks() -> list[tuple[str, str, str]]:
    """(where, example path named above the block, block text) for every Python block."""
    found = []
    for doc in DOCS:
        for block in blocks(doc, "python"):
            named = NAMED_EXAMPLE.findall(block.before)
            found.append((block.where, named[-1] if named else "", block.text))
    return found


@pytest.mark.parametrize(
    ("where", "example", "text"), python_blocks(), ids=[b[0] for b in python_blocks()]
)
def test_python_block_is_its_example(where: str, example: str, text: str) -> None:
    assert example, f"{where}: the text above this block names no examples/*.py file"
    path = ROOT / example
    assert path.is_file(), f"{where}: {example} does not exist"
    assert text == path.read_text(encoding="utf-8"), (
        f"{where} differs from {example}: keep the two identical"
    )


def test_every_example_is_checked() -> None:
    assert sorted(p.name for p in EXAMPLES.glob("*.py")) == sorted(PRINTS)


@dataclass
class Run:
    status: int
    stdout: str
    stderr: str


@pytest.fixture(scope="module")
async def gateway(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Gateway]:
    store = tmp_path_factory.mktemp("examples-store") / "gateway.db"
    gw = await start_gateway(
        Settings(upstream="emulator", port=0, store_url=f"sqlite+aiosqlite:///{store}")
    )
    yield gw
    await gw.stop(0)


async def _seed_usage(target: str) -> None:
    """One recorded call with env=prod, so usage_report.py has a row to print."""
    async with GatewayClient(target) as client:
        labels = {"team": "search", "env": "prod"}
        await client.generate(text_request("gemini-2.5-flash", "Seed", labels), timeout=10)
    async with UsageClient(target) as usage:
        for _ in range(100):
            if (await usage.query(filter='labels.env = "prod"')).totals.request_count:
                return
            await asyncio.sleep(0.05)
    raise AssertionError("the seed call was not recorded")


async def _run(name: str, target: str) -> Run:
    env = {k: v for k, v in os.environ.items() if not k.startswith("GEMINI_")}
    env["GEMINI_GATEWAY_TARGET"] = target
    arguments = [a.format(target=target) for a in ARGUMENTS.get(name, [])]
    process = await asyncio.create_subprocess_exec(
        sys.executable, str(Path("examples") / name), *arguments, cwd=ROOT, env=env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    try:
        out, err = await asyncio.wait_for(process.communicate(), TIMEOUT_S)
    except TimeoutError:
        process.kill()
        out, err = await process.communicate()
        return Run(-1, out.decode(), err.decode() + f"\ntimed out after {TIMEOUT_S} s")
    return Run(process.returncode or 0, out.decode(), err.decode())


@pytest.fixture(scope="module")
async def runs(gateway: Gateway) -> dict[str, Run]:
    """Every example, run at the same time (they do not share state)."""
    await _seed_usage(gateway.target)
    names = sorted(PRINTS)
    done = await asyncio.gather(*(_run(name, gateway.target) for name in names))
    return dict(zip(names, done, strict=True))


@pytest.mark.parametrize("name", sorted(PRINTS))
async def test_example_runs(name: str, runs: dict[str, Run]) -> None:
    run = runs[name]
    assert run.status == 0, f"examples/{name} exited {run.status}:\n{run.stdout}\n{run.stderr}"
    lines = run.stdout.splitlines()
    for pattern in PRINTS[name]:
        assert any(re.fullmatch(pattern, line) for line in lines), (
            f"examples/{name} printed no line matching {pattern!r}:\n{run.stdout}"
        )
