"""RunService through a real gateway with logging on, the emulator and a real store (SQLite and
PostgreSQL): datasets of logged calls re-run in DIRECT and BATCH mode, followed as operations,
compared result by result; projects that cannot reach each other's runs; bad requests."""

from __future__ import annotations

import asyncio
import itertools
import os
import time
from collections.abc import AsyncIterator, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import grpc
import pytest
import sqlalchemy as sa
from google.longrunning import operations_pb2, operations_pb2_grpc
from google.protobuf import duration_pb2
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from gemini_gateway.client.gateway_client import response_text, text_request
from gemini_gateway.emulator.batches import BATCHES_KEY
from gemini_gateway.emulator.runner import EmulatorHandle, start_emulator
from gemini_gateway.emulator.settings import EmulatorSettings
from gemini_gateway.generated.gemini.gateway.v1 import (
    datasets_pb2,
    datasets_pb2_grpc,
    runs_pb2,
    runs_pb2_grpc,
    usage_pb2,
    usage_pb2_grpc,
)
from gemini_gateway.generated.gemini.gateway.v1 import operations_pb2 as watch_pb2
from gemini_gateway.generated.gemini.gateway.v1 import operations_pb2_grpc as watch_pb2_grpc
from gemini_gateway.generated.google.ai.generativelanguage.v1beta import (
    content_pb2,
    generative_service_pb2,
    generative_service_pb2_grpc,
)
from gemini_gateway.server.app import Gateway, start_gateway
from gemini_gateway.server.config import CallerConfig, ProjectConfig, Settings
from gemini_gateway.server.identity import token_sha256
from gemini_gateway.server.reruns import RUN_LABEL
from gemini_gateway.server.store.log_tables import DatasetRun
from gemini_gateway.server.store.logs import list_logs
from gemini_gateway.server.store.runs import ABANDONED_MESSAGE
from tests.integration.served_command import ServedCommand, launch, stop, wait_ready
from tests.store.support import FreshUrl

FLASH = "models/gemini-2.5-flash"
PRO = "models/gemini-2.5-pro"
ALPHA, BETA = "alpha-token", "beta-token"
BATCH_SECONDS = 0.3
PROMPTS = ("What makes the tide turn?", "Name three long rivers", "Overloaded [[fault:503]]")
_cases = itertools.count()


def bearer(token: str) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {token}"),)


@pytest.fixture(scope="module")
async def emulator() -> AsyncIterator[EmulatorHandle]:
    handle = await start_emulator(EmulatorSettings())
    handle.app[BATCHES_KEY].seconds = BATCH_SECONDS
    yield handle
    await handle.close()


def settings_for(emulator: EmulatorHandle, store_url: str) -> Settings:
    return Settings(
        upstream="emulator",
        upstream_url=emulator.url,
        port=0,
        store_url=store_url,
        logging_enabled=True,
        projects={
            "alpha": ProjectConfig(
                callers=[CallerConfig(name="alice", token_sha256=token_sha256(ALPHA))]
            ),
            "beta": ProjectConfig(
                callers=[CallerConfig(name="bob", token_sha256=token_sha256(BETA))]
            ),
        },
    )


@pytest.fixture(scope="module")
async def gateway(emulator: EmulatorHandle, fresh_url: FreshUrl) -> AsyncIterator[Gateway]:
    gw = await start_gateway(settings_for(emulator, await fresh_url()))
    yield gw
    await gw.stop(0)


class Stubs:
    def __init__(self, channel: grpc.aio.Channel) -> None:
        self.generative = generative_service_pb2_grpc.GenerativeServiceStub(channel)
        self.datasets = datasets_pb2_grpc.DatasetServiceStub(channel)
        self.runs = runs_pb2_grpc.RunServiceStub(channel)
        self.operations = operations_pb2_grpc.OperationsStub(channel)
        self.watch = watch_pb2_grpc.OperationWatchServiceStub(channel)
        self.usage = usage_pb2_grpc.UsageServiceStub(channel)


@pytest.fixture(scope="module")
async def stubs(gateway: Gateway) -> AsyncIterator[Stubs]:
    async with grpc.aio.insecure_channel(gateway.target) as channel:
        yield Stubs(channel)


async def logged_dataset(
    gateway: Gateway, stubs: Stubs, prompts: Sequence[str] = PROMPTS
) -> tuple[str, list[str]]:
    """A dataset of alpha's logged calls of `prompts`: (its name, its log names)."""
    case = f"case{next(_cases)}"
    for prompt in prompts:
        try:
            await stubs.generative.GenerateContent(
                text_request(FLASH, prompt, {"case": case}), metadata=bearer(ALPHA)
            )
        except grpc.aio.AioRpcError:
            pass  # failed calls are logged too
    await gateway.recorder.flush()
    logs, _ = await list_logs(gateway.store, "alpha", filter_text=f'labels.case = "{case}"')
    assert len(logs) == len(prompts)
    log_names = [f"projects/alpha/logs/{log.id}" for log in logs]
    dataset = await stubs.datasets.CreateDataset(
        datasets_pb2.CreateDatasetRequest(
            parent="projects/alpha",
            dataset=datasets_pb2.Dataset(display_name=f"Runs {case}"),
            log_names=log_names,
        ),
        metadata=bearer(ALPHA),
    )
    return dataset.name, log_names


async def wait(stubs: Stubs, name: str, token: str = ALPHA) -> operations_pb2.Operation:
    return await stubs.operations.WaitOperation(
        operations_pb2.WaitOperationRequest(name=name), metadata=bearer(token), timeout=60
    )


def run_of(any_message: Any) -> runs_pb2.Run:
    run = runs_pb2.Run()
    assert any_message.Unpack(run)
    return run


async def get_run(stubs: Stubs, name: str, **fields: Any) -> runs_pb2.Run:
    return await stubs.runs.GetRun(
        runs_pb2.GetRunRequest(name=name, **fields), metadata=bearer(ALPHA)
    )


async def rpc_error(call: Any) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call
    return caught.value


def violated_field(error: grpc.aio.AioRpcError) -> str:
    status = rpc_status.from_call(error)
    assert status is not None
    bad_request = error_details_pb2.BadRequest()
    assert status.details[0].Unpack(bad_request)
    return bad_request.field_violations[0].field


async def test_direct_rerun_with_another_model(gateway: Gateway, stubs: Stubs) -> None:
    dataset, log_names = await logged_dataset(gateway, stubs)
    started = await stubs.runs.RerunDataset(
        runs_pb2.RerunDatasetRequest(dataset=dataset, model=PRO, concurrency=2),
        metadata=bearer(ALPHA),
    )
    assert started.name.startswith(dataset + "/runs/")
    assert not started.done
    pending = run_of(started.metadata)
    assert pending.name == started.name
    assert pending.state == runs_pb2.PENDING
    assert pending.mode == runs_pb2.DIRECT
    assert pending.model == PRO
    assert pending.summary.request_count == 3

    done = await wait(stubs, started.name)
    assert done.done and not done.HasField("error")
    finished = run_of(done.response)
    assert run_of(done.metadata) == finished
    # GetOperation answers the run's operation as WaitOperation does.
    polled = await stubs.operations.GetOperation(
        operations_pb2.GetOperationRequest(name=started.name), metadata=bearer(ALPHA)
    )
    assert polled == done
    assert finished.state == runs_pb2.SUCCEEDED
    assert not finished.results  # the operation carries the summary; GetRun the results
    summary = finished.summary
    assert (summary.request_count, summary.completed_count, summary.failed_count) == (3, 3, 1)
    # The emulator's text does not depend on the model: the two answered calls say the same.
    assert summary.same_text_count == 2
    assert summary.mean_text_similarity == pytest.approx(1.0)
    assert summary.rerun_tokens.prompt > 0 and summary.rerun_tokens.candidates > 0
    assert summary.original_cost > 0 and summary.rerun_cost > 0
    assert summary.rerun_cost != summary.original_cost  # priced at each side's model
    assert summary.HasField("original_latency_p50") and summary.HasField("rerun_latency_p50")

    run = await get_run(stubs, started.name)  # FULL by default
    assert run.summary == summary and run.end_time.seconds > 0
    assert sorted(result.log for result in run.results) == sorted(log_names)
    by_prompt = {response_text(r.response).split("\n")[0]: r for r in run.results}
    answered = [r for r in run.results if not r.rerun.HasField("error")]
    assert len(answered) == 2
    for result in answered:
        assert result.original.model == FLASH and result.rerun.model == PRO
        assert result.rerun.text == result.original.text != ""
        assert result.same_text and result.text_similarity == pytest.approx(1.0)
        assert result.rerun.finish_reason == "STOP"
        assert result.rerun.tokens.total > 0 and result.rerun.estimated_cost > 0
        assert result.rerun.HasField("latency") and result.original.HasField("latency")
        assert result.response.model_version == "gemini-2.5-pro"
        assert response_text(result.response) == result.rerun.text
    assert "Echo: What makes the tide turn?" in by_prompt
    (failed,) = [r for r in run.results if r.rerun.HasField("error")]
    assert failed.original.error.code == failed.rerun.error.code == 14
    assert not failed.same_text and failed.text_similarity == 0

    basic = await get_run(stubs, started.name, view=runs_pb2.RUN_VIEW_BASIC)
    assert basic.summary == summary and not basic.results

    # The re-run's calls are the caller's own generate calls: metered and logged as alice's,
    # labelled with the run.
    run_id = started.name.rsplit("/", 1)[1]
    await gateway.recorder.flush()
    usage = await stubs.usage.QueryUsage(
        usage_pb2.QueryUsageRequest(filter=f'labels.{RUN_LABEL} = "{run_id}"'),
        metadata=bearer(ALPHA),
    )
    assert usage.totals.request_count == 3 and usage.totals.error_count == 1
    logs, _ = await list_logs(
        gateway.store, "alpha", filter_text=f'labels.{RUN_LABEL} = "{run_id}"'
    )
    assert len(logs) == 3
    assert {log.model for log in logs} == {PRO} and {log.caller for log in logs} == {"alice"}


async def test_overrides_change_the_answers(gateway: Gateway, stubs: Stubs) -> None:
    dataset, _ = await logged_dataset(gateway, stubs, PROMPTS[:2])
    instruction = content_pb2.Content(parts=[content_pb2.Part(text="Answer like a pirate")])
    started = await stubs.runs.RerunDataset(
        runs_pb2.RerunDatasetRequest(
            dataset=dataset,
            model=FLASH,
            system_instruction=instruction,
            generation_config=generative_service_pb2.GenerationConfig(max_output_tokens=4),
        ),
        metadata=bearer(ALPHA),
    )
    await wait(stubs, started.name)
    run = await get_run(stubs, started.name)
    assert run.state == runs_pb2.SUCCEEDED
    assert run.system_instruction == instruction
    assert run.generation_config.max_output_tokens == 4
    assert run.summary.same_text_count == 0
    assert 0 < run.summary.mean_text_similarity < 1
    for result in run.results:
        assert result.rerun.finish_reason == "MAX_TOKENS"
        assert result.original.finish_reason == "STOP"
        assert result.rerun.text != result.original.text
        assert 0 < result.text_similarity < 1
        assert result.rerun.tokens.candidates <= 4


async def test_batch_rerun(gateway: Gateway, stubs: Stubs) -> None:
    dataset, log_names = await logged_dataset(gateway, stubs)
    started = await stubs.runs.RerunDataset(
        runs_pb2.RerunDatasetRequest(dataset=dataset, model=PRO, mode=runs_pb2.BATCH),
        metadata=bearer(ALPHA),
    )
    seen = [
        update.operation
        async for update in stubs.watch.WatchOperation(
            watch_pb2.WatchOperationRequest(
                name=started.name, poll_interval=duration_pb2.Duration(nanos=100_000_000)
            ),
            metadata=bearer(ALPHA),
            timeout=60,
        )
    ]
    assert seen[-1].done and all(not op.done for op in seen[:-1])
    run = await get_run(stubs, started.name)
    assert run.state == runs_pb2.SUCCEEDED and run.mode == runs_pb2.BATCH
    assert run.batch.startswith("batches/")
    assert (run.summary.completed_count, run.summary.failed_count) == (3, 1)
    assert run.summary.same_text_count == 2
    assert not run.summary.HasField("rerun_latency_p50")  # batch answers have no latency
    assert sorted(r.log for r in run.results) == sorted(log_names)
    for result in run.results:
        assert not result.rerun.HasField("latency")
        if not result.rerun.HasField("error"):
            assert result.rerun.text == result.original.text
            assert result.response.model_version == "gemini-2.5-pro"
            assert result.rerun.tokens.total > 0

    batch = await stubs.operations.GetOperation(
        operations_pb2.GetOperationRequest(name=run.batch), metadata=bearer(ALPHA)
    )
    assert batch.done and not batch.HasField("error")

    # The batch's requests are metered as alice's, at the Batch API's price, by run.
    run_id = started.name.rsplit("/", 1)[1]
    usage = await stubs.usage.QueryUsage(
        usage_pb2.QueryUsageRequest(
            filter=f'labels.{RUN_LABEL} = "{run_id}"', group_by=["method", "caller", "model"]
        ),
        metadata=bearer(ALPHA),
    )
    (row,) = usage.rows
    assert dict(row.group_values) == {
        "method": "BatchGenerateContent",
        "caller": "alice",
        "model": PRO,
    }
    answered = [r for r in run.results if not r.rerun.HasField("error")]
    assert row.request_count == len(run.results)
    assert row.tokens.total == sum(r.rerun.tokens.total for r in answered) > 0


async def test_a_cancelled_batch_fails_the_run(
    gateway: Gateway, stubs: Stubs, emulator: EmulatorHandle
) -> None:
    dataset, _ = await logged_dataset(gateway, stubs, PROMPTS[:1])
    emulator.app[BATCHES_KEY].seconds = 1000.0
    try:
        name = await batch_run_waiting_upstream(gateway.target, dataset, stubs)
        run = await get_run(stubs, name)
        assert run.state == runs_pb2.RUNNING
    finally:
        emulator.app[BATCHES_KEY].seconds = BATCH_SECONDS
    await stubs.operations.CancelOperation(
        operations_pb2.CancelOperationRequest(name=run.batch), metadata=bearer(ALPHA)
    )
    done = await wait(stubs, name)
    assert done.done
    assert done.error.code == grpc.StatusCode.CANCELLED.value[0]
    assert run.batch in done.error.message
    failed = run_of(done.metadata)
    assert failed.state == runs_pb2.FAILED and failed.error == done.error


async def test_runs_are_listed_newest_first(gateway: Gateway, stubs: Stubs) -> None:
    dataset, _ = await logged_dataset(gateway, stubs, PROMPTS[:1])
    names = []
    for model in (FLASH, PRO, FLASH):
        started = await stubs.runs.RerunDataset(
            runs_pb2.RerunDatasetRequest(dataset=dataset, model=model), metadata=bearer(ALPHA)
        )
        await wait(stubs, started.name)
        names.append(started.name)
    page = await stubs.runs.ListRuns(
        runs_pb2.ListRunsRequest(parent=dataset, page_size=2), metadata=bearer(ALPHA)
    )
    assert [run.name for run in page.runs] == names[::-1][:2]
    assert all(not run.results and run.summary.completed_count == 1 for run in page.runs)
    rest = await stubs.runs.ListRuns(
        runs_pb2.ListRunsRequest(parent=dataset, page_token=page.next_page_token),
        metadata=bearer(ALPHA),
    )
    assert [run.name for run in rest.runs] == names[:1] and not rest.next_page_token
    own = await stubs.runs.ListRuns(
        runs_pb2.ListRunsRequest(parent=dataset.replace("projects/alpha", "projects/-")),
        metadata=bearer(ALPHA),
    )
    assert len(own.runs) == 3


async def test_other_projects_cannot_reach_runs(gateway: Gateway, stubs: Stubs) -> None:
    dataset, _ = await logged_dataset(gateway, stubs, PROMPTS[:1])
    started = await stubs.runs.RerunDataset(
        runs_pb2.RerunDatasetRequest(dataset=dataset, model=PRO), metadata=bearer(ALPHA)
    )
    await wait(stubs, started.name)
    own_name = started.name.replace("projects/alpha", "projects/-")
    own_dataset = dataset.replace("projects/alpha", "projects/-")

    denied = [
        stubs.runs.RerunDataset(
            runs_pb2.RerunDatasetRequest(dataset=dataset, model=PRO), metadata=bearer(BETA)
        ),
        stubs.runs.GetRun(runs_pb2.GetRunRequest(name=started.name), metadata=bearer(BETA)),
        stubs.runs.ListRuns(runs_pb2.ListRunsRequest(parent=dataset), metadata=bearer(BETA)),
        stubs.operations.WaitOperation(
            operations_pb2.WaitOperationRequest(name=started.name), metadata=bearer(BETA)
        ),
        stubs.operations.GetOperation(
            operations_pb2.GetOperationRequest(name=started.name), metadata=bearer(BETA)
        ),
    ]
    for call in denied:
        assert (await rpc_error(call)).code() == grpc.StatusCode.PERMISSION_DENIED
    # In beta's own project the dataset and the run do not exist.
    missing = [
        stubs.runs.RerunDataset(
            runs_pb2.RerunDatasetRequest(dataset=own_dataset, model=PRO), metadata=bearer(BETA)
        ),
        stubs.runs.GetRun(runs_pb2.GetRunRequest(name=own_name), metadata=bearer(BETA)),
        stubs.runs.ListRuns(runs_pb2.ListRunsRequest(parent=own_dataset), metadata=bearer(BETA)),
        stubs.operations.WaitOperation(
            operations_pb2.WaitOperationRequest(name=own_name), metadata=bearer(BETA)
        ),
    ]
    for call in missing:
        assert (await rpc_error(call)).code() == grpc.StatusCode.NOT_FOUND
    no_token = stubs.runs.GetRun(runs_pb2.GetRunRequest(name=started.name))
    assert (await rpc_error(no_token)).code() == grpc.StatusCode.UNAUTHENTICATED
    # Alice reaches her run by either name.
    assert (await get_run(stubs, own_name)).name == started.name


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ({"model": ""}, "model"),
        ({"model": "gemini-2.5-pro"}, "model"),
        ({"model": "models/"}, "model"),
        ({"concurrency": 65}, "concurrency"),
        ({"concurrency": -1}, "concurrency"),
        ({"mode": 7}, "mode"),
        ({"mode": runs_pb2.BATCH, "model": "tunedModels/mine"}, "model"),
        ({"dataset": "datasets/x"}, "dataset"),
        ({"dataset": "projects/alpha/datasets"}, "dataset"),
    ],
)
async def test_bad_rerun_requests(
    gateway: Gateway, stubs: Stubs, fields: dict[str, Any], field: str
) -> None:
    values: dict[str, Any] = {"dataset": "projects/alpha/datasets/any", "model": PRO, **fields}
    error = await rpc_error(
        stubs.runs.RerunDataset(runs_pb2.RerunDatasetRequest(**values), metadata=bearer(ALPHA))
    )
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert violated_field(error) == field


async def test_missing_and_empty_datasets(gateway: Gateway, stubs: Stubs) -> None:
    missing = await rpc_error(
        stubs.runs.RerunDataset(
            runs_pb2.RerunDatasetRequest(dataset="projects/alpha/datasets/nothing", model=PRO),
            metadata=bearer(ALPHA),
        )
    )
    assert missing.code() == grpc.StatusCode.NOT_FOUND
    dataset, log_names = await logged_dataset(gateway, stubs, PROMPTS[:1])
    await stubs.datasets.RemoveLogs(
        datasets_pb2.RemoveLogsRequest(dataset=dataset, log_names=log_names),
        metadata=bearer(ALPHA),
    )
    empty = await rpc_error(
        stubs.runs.RerunDataset(
            runs_pb2.RerunDatasetRequest(dataset=dataset, model=PRO), metadata=bearer(ALPHA)
        )
    )
    assert empty.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "holds no logs" in (empty.details() or "")


async def test_bad_reads(gateway: Gateway, stubs: Stubs) -> None:
    dataset, _ = await logged_dataset(gateway, stubs, PROMPTS[:1])
    cases = [
        (runs_pb2.GetRunRequest(name="runs/x"), grpc.StatusCode.INVALID_ARGUMENT),
        (runs_pb2.GetRunRequest(name=f"{dataset}/runs/none"), grpc.StatusCode.NOT_FOUND),
        (
            runs_pb2.GetRunRequest(name=f"{dataset}/runs/x", view=9),
            grpc.StatusCode.INVALID_ARGUMENT,
        ),
    ]
    for request, code in cases:
        error = await rpc_error(stubs.runs.GetRun(request, metadata=bearer(ALPHA)))
        assert error.code() == code
    listings = [
        (
            runs_pb2.ListRunsRequest(parent=dataset, page_token="x"),
            grpc.StatusCode.INVALID_ARGUMENT,
        ),
        (runs_pb2.ListRunsRequest(parent=dataset, page_size=-1), grpc.StatusCode.INVALID_ARGUMENT),
        (
            runs_pb2.ListRunsRequest(parent="projects/alpha/datasets/none"),
            grpc.StatusCode.NOT_FOUND,
        ),
    ]
    for request, code in listings:
        error = await rpc_error(stubs.runs.ListRuns(request, metadata=bearer(ALPHA)))
        assert error.code() == code


async def batch_run_waiting_upstream(target: str, dataset: str, stubs: Stubs) -> str:
    """Start a BATCH re-run of `dataset` through the gateway at `target`; its name, once the
    run waits for its batch upstream (the caller makes the emulator's batches slow)."""
    async with grpc.aio.insecure_channel(target) as channel:
        started = await runs_pb2_grpc.RunServiceStub(channel).RerunDataset(
            runs_pb2.RerunDatasetRequest(dataset=dataset, model=FLASH, mode=runs_pb2.BATCH),
            metadata=bearer(ALPHA),
        )
    run = await get_run(stubs, started.name)
    while not run.batch:
        await asyncio.sleep(0.05)
        run = await get_run(stubs, started.name)
    return started.name


SLOW_PROMPT = "Take your time [[fault:headers_delay:3000]]"  # each answer takes 3 s
HELD_BATCH_SECONDS = 600.0  # a batch that runs until the test ends it (`end_batches_soon`)


def end_batches_soon(emulator: EmulatorHandle, seconds: float = 0.5) -> None:
    """Shorten every batch of the emulator to end within `seconds` from now: a handover test
    holds its batch running while it stops or kills a gateway, however slow the machine."""
    ends_at = time.time() + seconds
    for batch in emulator.app[BATCHES_KEY].batches.values():
        batch.duration = min(batch.duration, max(0.0, ends_at - batch.created))


async def direct_run_waiting_upstream(target: str, dataset: str) -> str:
    """Start a DIRECT re-run of `dataset` (of SLOW_PROMPT) through the gateway at `target`."""
    async with grpc.aio.insecure_channel(target) as channel:
        started = await runs_pb2_grpc.RunServiceStub(channel).RerunDataset(
            runs_pb2.RerunDatasetRequest(dataset=dataset, model=FLASH, mode=runs_pb2.DIRECT),
            metadata=bearer(ALPHA),
        )
    await asyncio.sleep(0.5)  # its call is waiting for the answer
    return started.name


async def assert_answered_by_its_batch(stubs: Stubs, name: str, log_names: list[str]) -> None:
    """The run ended SUCCEEDED with its batch's answers, and the batch was not cancelled."""
    done = await wait(stubs, name)
    run = await get_run(stubs, name)
    assert done.done and not done.HasField("error"), done.error
    assert run.state == runs_pb2.SUCCEEDED and run.batch.startswith("batches/")
    assert [r.log for r in run.results] == log_names
    assert all(r.rerun.text == r.original.text for r in run.results)
    batch = await stubs.operations.GetOperation(
        operations_pb2.GetOperationRequest(name=run.batch), metadata=bearer(ALPHA)
    )
    assert batch.done and not batch.HasField("error")


async def test_a_stopping_gateway_hands_its_batch_runs_over(
    gateway: Gateway, stubs: Stubs, emulator: EmulatorHandle
) -> None:
    """A gateway that stops leaves a submitted batch running upstream and ends its lease; a
    gateway that sweeps 4 times a second adopts the run and ends it with the batch's answers.
    A DIRECT run, whose calls were this process's own, is FAILED."""
    dataset, log_names = await logged_dataset(gateway, stubs, PROMPTS[:2])
    slow_dataset, _ = await logged_dataset(gateway, stubs, [SLOW_PROMPT])
    store_url = gateway.settings.store_url
    watcher = await start_gateway(
        settings_for(emulator, store_url).model_copy(update={"run_lease_s": 1})
    )
    other = await start_gateway(settings_for(emulator, store_url))
    emulator.app[BATCHES_KEY].seconds = HELD_BATCH_SECONDS
    try:
        name = await batch_run_waiting_upstream(other.target, dataset, stubs)
        direct = await direct_run_waiting_upstream(other.target, slow_dataset)
    finally:
        await other.stop(0)
        emulator.app[BATCHES_KEY].seconds = BATCH_SECONDS
    try:
        await asyncio.sleep(1.0)  # the watcher sweeps 4 times a second: it has the run now
        assert (await get_run(stubs, name)).state == runs_pb2.RUNNING  # not failed, not cancelled
        end_batches_soon(emulator)
        await assert_answered_by_its_batch(stubs, name, log_names)
    finally:
        end_batches_soon(emulator)
        await watcher.stop(0)
    run = await get_run(stubs, direct)
    assert run.state == runs_pb2.FAILED
    assert run.error.code == grpc.StatusCode.UNAVAILABLE.value[0]
    assert "stopped" in run.error.message


def _config(folder: Path) -> Path:
    """The module's projects and callers as a gateway.toml, for a gateway in a subprocess."""
    lines = []
    for project, (caller, token) in {"alpha": ("alice", ALPHA), "beta": ("bob", BETA)}.items():
        lines += [
            f"[[projects.{project}.callers]]",
            f'name = "{caller}"',
            f'token_sha256 = "{token_sha256(token)}"',
        ]
    path = folder / "gateway.toml"
    path.write_text("\n".join(lines) + "\n")
    return path


def _serve_in_a_subprocess(folder: Path, emulator: EmulatorHandle, store_url: str) -> ServedCommand:
    """`gemini-gateway serve` on the module's store with a 1 s run lease, once it listens."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("GEMINI_GATEWAY_")}
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    env.update(
        PYTHONUNBUFFERED="1",
        GEMINI_GATEWAY_CONFIG=str(_config(folder)),
        GEMINI_GATEWAY_STORE_URL=store_url,
        GEMINI_GATEWAY_RUN_LEASE_S="1",
    )
    args = ["serve", "--upstream", emulator.url, "--port", "0", "--metrics-port", "0"]
    served = launch([*args, "--console-port", "0", "--workers", "1"], env, folder)
    wait_ready(served, 40)
    return served


async def test_the_runs_of_a_gateway_that_died_are_adopted_or_failed(
    gateway: Gateway, stubs: Stubs, emulator: EmulatorHandle, tmp_path: Path
) -> None:
    """A gateway process runs a batch run and a direct run, holding their 1 s leases, beside
    a gateway that sweeps 4 times a second. Killed (SIGKILL), its batch run is adopted by the
    other, which reads the batch's answers; its direct run is failed."""
    dataset, log_names = await logged_dataset(gateway, stubs, PROMPTS[:2])
    slow_dataset, _ = await logged_dataset(gateway, stubs, [SLOW_PROMPT])
    store_url = gateway.settings.store_url
    watcher = await start_gateway(
        settings_for(emulator, store_url).model_copy(update={"run_lease_s": 1})
    )
    served = _serve_in_a_subprocess(tmp_path, emulator, store_url)
    emulator.app[BATCHES_KEY].seconds = HELD_BATCH_SECONDS
    try:
        name = await batch_run_waiting_upstream(served.target, dataset, stubs)
        emulator.app[BATCHES_KEY].seconds = BATCH_SECONDS
        direct = await direct_run_waiting_upstream(served.target, slow_dataset)
        await asyncio.sleep(1.5)  # past their lease: the live gateway keeps extending it
        assert (await get_run(stubs, name)).state == runs_pb2.RUNNING
        assert (await get_run(stubs, direct)).state == runs_pb2.RUNNING
        served.process.kill()
        served.process.wait()
        await asyncio.sleep(1.0)  # past the dead gateway's lease: the watcher adopts the run
        assert (await get_run(stubs, name)).state == runs_pb2.RUNNING
        end_batches_soon(emulator)
        await assert_answered_by_its_batch(stubs, name, log_names)
    finally:
        stop(served)  # killed already, unless the test failed before
        end_batches_soon(emulator)
        emulator.app[BATCHES_KEY].seconds = BATCH_SECONDS
        await watcher.stop(0)
    run = await get_run(stubs, direct)
    assert run.state == runs_pb2.FAILED
    assert run.error.code == grpc.StatusCode.UNAVAILABLE.value[0]
    assert run.error.message == ABANDONED_MESSAGE
    done = await wait(stubs, direct)
    assert done.done and done.error.message == ABANDONED_MESSAGE


async def test_a_gateway_does_not_adopt_its_own_running_batch_run(
    gateway: Gateway, stubs: Stubs, emulator: EmulatorHandle
) -> None:
    """A run whose lease lapsed while its own process still runs it (the store was out of
    reach) is leased again by that process's sweep, not run twice."""
    dataset, log_names = await logged_dataset(gateway, stubs, PROMPTS[:1])
    emulator.app[BATCHES_KEY].seconds = 2.0
    try:
        name = await batch_run_waiting_upstream(gateway.target, dataset, stubs)
    finally:
        emulator.app[BATCHES_KEY].seconds = BATCH_SECONDS
    run_id = name.rsplit("/", 1)[1]
    async with gateway.store.begin() as conn:
        await conn.execute(
            sa.update(DatasetRun)
            .where(DatasetRun.run_id == run_id)
            .values(lease_until=datetime.now(UTC) - timedelta(seconds=1))
        )
    running = [task for task in asyncio.all_tasks() if task.get_name().endswith(run_id)]
    await gateway.runs._sweep()
    assert [t for t in asyncio.all_tasks() if t.get_name().endswith(run_id)] == running
    assert len(running) == 1
    await assert_answered_by_its_batch(stubs, name, log_names)
