"""Tuning end to end: TuningClient and `gemini-gateway tune` through a gateway and the emulator."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import grpc
import pytest

from gemini_gateway.client.gateway_client import GatewayClient, response_text, text_request
from gemini_gateway.client.tuning import (
    CreateTunedModelMetadata,
    TunedModel,
    TuningClient,
    TuningFailed,
    build_tuned_model,
    load_examples,
)
from gemini_gateway.emulator.runner import start_emulator
from gemini_gateway.emulator.settings import EmulatorSettings
from gemini_gateway.server.app import Gateway, start_gateway
from gemini_gateway.server.config import Settings

INCREMENT = Path(__file__).resolve().parents[2] / "docs" / "examples" / "increment.jsonl"
TUNING_SECONDS = 1.0
CLI = [sys.executable, "-m", "gemini_gateway.cli"]


@pytest.fixture(scope="module", params=["aiohttp", "httpx"])
async def tuning_gateway(request: pytest.FixtureRequest) -> AsyncIterator[Gateway]:
    """A gateway on its own emulator whose tuning jobs last TUNING_SECONDS."""
    emulator = await start_emulator(EmulatorSettings(tuning_seconds=TUNING_SECONDS))
    gateway = await start_gateway(
        Settings(upstream="emulator", upstream_url=emulator.url, port=0, http_client=request.param)
    )
    yield gateway
    await gateway.stop(0)
    await emulator.close()


@pytest.fixture
async def tuning(tuning_gateway: Gateway) -> AsyncIterator[TuningClient]:
    async with grpc.aio.insecure_channel(tuning_gateway.target) as channel:
        yield TuningClient(channel, poll_interval=0.1)


def increment_model(display_name: str = "Increment") -> TunedModel:
    return build_tuned_model(load_examples(INCREMENT), display_name, epochs=5, batch_size=4)


async def test_tune_follow_and_use_a_model(tuning: TuningClient, tuning_gateway: Gateway) -> None:
    operation = await tuning.create(increment_model(), "increment-e2e")
    assert operation.name.startswith("tunedModels/increment-e2e/operations/")
    assert operation.tuned_model_name == "tunedModels/increment-e2e"
    assert not operation.done
    # 17 examples x 5 epochs / batch size 4
    assert operation.metadata.total_steps == 22

    seen: list[CreateTunedModelMetadata] = []
    model = await operation.result(timeout=30, on_progress=seen.append)

    steps = [metadata.completed_steps for metadata in seen]
    assert len(seen) >= 3, steps
    assert steps == sorted(steps) and len(set(steps)) == len(steps), steps
    assert steps[-1] == 22
    assert [len(metadata.snapshots) for metadata in seen] == steps
    assert operation.done and operation.metadata.completed_steps == 22

    assert model.name == "tunedModels/increment-e2e"
    assert model.state == TunedModel.ACTIVE
    assert len(model.tuning_task.snapshots) == 22
    assert model.tuning_task.hyperparameters.epoch_count == 5

    async with GatewayClient(tuning_gateway.target) as gateway:
        answer = await gateway.generate(text_request(model.name, "seven"))
    assert response_text(answer) == "eight"

    fetched = await tuning.get("increment-e2e")
    assert fetched.state == TunedModel.ACTIVE
    updated = await tuning.update("increment-e2e", description="adds one", temperature=0.2)
    assert updated.description == "adds one"
    assert updated.temperature == pytest.approx(0.2)
    assert updated.display_name == "Increment"  # not in the mask: left alone

    await tuning.delete("increment-e2e")
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await tuning.get("increment-e2e")
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND


async def test_operation_lookup_and_refresh(tuning: TuningClient) -> None:
    created = await tuning.create(increment_model(), "increment-lookup")
    by_model = await tuning.operation("increment-lookup")
    by_name = await tuning.operation(created.name)
    assert by_model.name == by_name.name == created.name

    await by_name.wait(timeout=30)
    assert by_name.done
    # A done operation answers at once, and refresh reads the same final state.
    assert (await by_name.wait()).done
    assert (await by_model.refresh()).done
    assert by_model.metadata.completed_steps == 22
    await tuning.delete("increment-lookup")


async def test_list_walks_pages_and_filters(tuning: TuningClient) -> None:
    for index in range(3):
        model = increment_model(f"Paged {index}")
        model.description = "page walk"
        await tuning.create(model, f"paged-{index}")
    try:
        pages = [page async for page in tuning.pages(filter="page walk", page_size=2)]
        assert [len(page.tuned_models) for page in pages] == [2, 1]
        names = [model.name async for model in tuning.list(filter="Paged", page_size=1)]
        assert names == [f"tunedModels/paged-{index}" for index in range(3)]
        assert [m async for m in tuning.list(filter="no such words")] == []
    finally:
        for index in range(3):
            await tuning.delete(f"paged-{index}")


async def test_failed_job_raises_tuning_failed(tuning: TuningClient) -> None:
    operation = await tuning.create(increment_model("Broken [[fault:tuning_failed]]"), "broken")
    with pytest.raises(TuningFailed) as caught:
        await operation.result(timeout=30)
    assert caught.value.code == grpc.StatusCode.INTERNAL
    assert "tuning job failed" in caught.value.message
    assert (await tuning.get("broken")).state == TunedModel.FAILED
    await tuning.delete("broken")


async def test_cancel_ends_the_job_cancelled(tuning: TuningClient) -> None:
    operation = await tuning.create(increment_model(), "cancelled")
    await operation.cancel()
    with pytest.raises(TuningFailed) as caught:
        await operation.result(timeout=30)
    assert caught.value.code == grpc.StatusCode.CANCELLED
    await tuning.delete("cancelled")


async def test_wait_timeout_raises_timeout_error(tuning: TuningClient) -> None:
    operation = await tuning.create(increment_model(), "slow-wait")
    started = time.monotonic()
    with pytest.raises(TimeoutError):
        await operation.wait(timeout=0.3)
    assert time.monotonic() - started < TUNING_SECONDS
    assert not operation.done
    await operation.wait(timeout=30)
    await tuning.delete("slow-wait")


async def test_gateway_validation_reaches_the_caller(tuning: TuningClient) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await tuning.create(increment_model(), "Not_A_Valid_Id")
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "tuned_model_id" in (caught.value.details() or "")


# --- the command line ----------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def served_gateway() -> Iterator[str]:
    """`gemini-gateway serve --emulator` with short tuning jobs."""
    port = _free_port()
    env = {
        **os.environ,
        "PYTHONUNBUFFERED": "1",
        "GEMINI_EMULATOR_TUNING_SECONDS": str(TUNING_SECONDS),
    }
    process = subprocess.Popen(
        [*CLI, "serve", "--emulator", "--port", str(port)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
    )
    seen = []
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        line = process.stdout.readline()
        seen.append(line)
        if "listening on" in line:
            break
        if not line and process.poll() is not None:
            raise AssertionError("gateway did not start:\n" + "".join(seen))
    yield f"127.0.0.1:{port}"
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout=15)
    except subprocess.TimeoutExpired:
        process.kill()
        raise


def tune(target: str, *args: str) -> subprocess.CompletedProcess:
    # A wide terminal keeps rich tables from wrapping names across lines.
    env = {**os.environ, "COLUMNS": "200"}
    return subprocess.run(
        [*CLI, *args, "--target", target], capture_output=True, text=True, timeout=60, env=env
    )


def test_cli_tuning_walkthrough(served_gateway: str, tmp_path: Path) -> None:
    created = tune(
        served_gateway,
        "tune", "create", "--data", str(INCREMENT), "--display-name", "Increment",
        "--id", "cli-increment", "--epochs", "5", "--batch-size", "4", "--wait",
    )  # fmt: skip
    assert created.returncode == 0, created.stderr
    assert "tunedModels/cli-increment/operations/" in created.stdout
    assert "tunedModels/cli-increment: ACTIVE" in created.stdout

    answer = tune(served_gateway, "generate", "seven", "--model", "tunedModels/cli-increment")
    assert answer.returncode == 0, answer.stderr
    assert answer.stdout.strip() == "eight"

    listed = tune(served_gateway, "tune", "list", "--filter", "increment")
    assert listed.returncode == 0, listed.stderr
    row = next(line for line in listed.stdout.splitlines() if "tunedModels/cli-increment" in line)
    assert "Increment" in row and "ACTIVE" in row and "models/gemini-1.5-flash-001-tuning" in row

    details = tune(served_gateway, "tune", "get", "cli-increment")
    assert details.returncode == 0, details.stderr
    assert "epochs 5, batch size 4" in details.stdout
    assert "snapshots" in details.stdout and "22" in details.stdout
    assert "last loss" in details.stdout

    updated = tune(served_gateway, "tune", "update", "cli-increment", "--top-k", "5")
    assert updated.returncode == 0, updated.stderr
    assert "updated top_k" in updated.stdout
    nothing = tune(served_gateway, "tune", "update", "cli-increment")
    assert nothing.returncode == 2
    assert "nothing to update" in nothing.stderr

    waited = tune(served_gateway, "tune", "wait", "tunedModels/cli-increment")
    assert waited.returncode == 0, waited.stderr
    assert "ACTIVE" in waited.stdout

    out = tmp_path / "loss.png"
    plotted = tune(served_gateway, "tune", "plot", "cli-increment", "--out", str(out))
    assert plotted.returncode == 0, plotted.stderr
    assert out.read_bytes().startswith(b"\x89PNG\r\n\x1a\n")

    deleted = tune(served_gateway, "tune", "delete", "tunedModels/cli-increment")
    assert deleted.returncode == 0, deleted.stderr
    gone = tune(served_gateway, "tune", "get", "cli-increment")
    assert gone.returncode == 1
    assert "NOT_FOUND" in gone.stderr


def test_cli_failed_job_exits_1(served_gateway: str) -> None:
    result = tune(
        served_gateway,
        "tune", "create", "--data", str(INCREMENT), "--id", "cli-broken",
        "--display-name", "Broken [[fault:tuning_failed]]", "--wait",
    )  # fmt: skip
    assert result.returncode == 1
    assert "FAILED" in result.stderr and "INTERNAL" in result.stderr
    # Brackets in names and messages are printed as they are, not read as rich markup.
    listed = tune(served_gateway, "tune", "list", "--filter", "Broken")
    assert "Broken [[fault:tuning_failed]]" in listed.stdout
    tune(served_gateway, "tune", "delete", "cli-broken")


def test_cli_shows_the_gateway_validation_message(served_gateway: str) -> None:
    result = tune(
        served_gateway,
        "tune", "create", "--data", str(INCREMENT), "--display-name", "x", "--id", "Bad_Id",
    )  # fmt: skip
    assert result.returncode == 1
    assert "INVALID_ARGUMENT" in result.stderr
    assert "[a-z]([a-z0-9-]{0,38}[a-z0-9])?" in result.stderr


def test_cli_bad_data_is_a_usage_error(served_gateway: str, tmp_path: Path) -> None:
    data = tmp_path / "bad.jsonl"
    data.write_text('{"text_input": "1", "output": "2"}\n{"text_input": "2"}\n')
    result = tune(served_gateway, "tune", "create", "--data", str(data), "--display-name", "Bad")
    assert result.returncode == 2
    assert "bad.jsonl:2: missing output" in result.stderr


async def test_cli_plot_without_snapshots_fails(served_gateway: str, tmp_path: Path) -> None:
    # One step, completed only at the end of the job; cancelled at once, it never is.
    async with grpc.aio.insecure_channel(served_gateway) as channel:
        client = TuningClient(channel)
        model = build_tuned_model([("a", "b")], "Fresh", epochs=1)
        operation = await client.create(model, "cli-fresh")
        await operation.cancel()
        out = tmp_path / "none.png"
        result = await asyncio.to_thread(
            tune, served_gateway, "tune", "plot", "cli-fresh", "--out", str(out)
        )
        assert result.returncode == 1
        assert "no tuning snapshots" in result.stderr
        assert not out.exists()
        await client.delete("cli-fresh")
