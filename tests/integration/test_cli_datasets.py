"""`gemini-gateway datasets ...`, DatasetClient and RunClient against a real gateway with
logging on, the emulator (tuning in a fraction of a second) and SQLite.

The calls are made once per module; the CLI runs in subprocesses (see test_cli_logs.py).
Datasets are created by the tests in order: `search` from a filter, `picked` from ids.
"""

from __future__ import annotations

import asyncio
import csv
import io
import json
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest

from gemini_gateway.client.datasets import DatasetClient
from gemini_gateway.client.gateway_client import GatewayClient, text_request
from gemini_gateway.client.logs import dataset_name, log_name
from gemini_gateway.client.runs import RunClient, run_name
from gemini_gateway.emulator.runner import EmulatorHandle, start_emulator
from gemini_gateway.emulator.settings import EmulatorSettings
from gemini_gateway.generated.gemini.gateway.v1 import runs_pb2
from gemini_gateway.server.app import Gateway, start_gateway
from gemini_gateway.server.config import Settings
from gemini_gateway.server.exports import CSV_COLUMNS
from tests.integration.test_cli_logs import case_logs, cli, flush, one_error_line, table_rows

FLASH = "models/gemini-2.5-flash"
SEARCH_PROMPTS = ("How do I reset my password?", "Where is my order?", "Cancel my plan")
SEARCH = dataset_name("search", "default")
PICKED = dataset_name("picked", "default")


@pytest.fixture(scope="module")
async def tuning_emulator() -> AsyncIterator[EmulatorHandle]:
    handle = await start_emulator(EmulatorSettings(tuning_seconds=0.3))
    yield handle
    await handle.close()


@pytest.fixture(scope="module")
async def gateway(
    tuning_emulator: EmulatorHandle, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[Gateway]:
    store = tmp_path_factory.mktemp("datasets-cli") / "gateway.db"
    gw = await start_gateway(
        Settings(
            upstream="emulator",
            upstream_url=tuning_emulator.url,
            port=0,
            store_url=f"sqlite+aiosqlite:///{store}",
            logging_enabled=True,
        )
    )
    yield gw
    await gw.stop(0)


@pytest.fixture(scope="module")
async def logged(gateway: Gateway) -> dict[str, list[str]]:
    """team -> log ids, newest first: three answered calls and one failed for `search`,
    one call for `ads`."""
    async with GatewayClient(gateway.target) as client:
        for prompt in SEARCH_PROMPTS:
            await client.generate(text_request(FLASH, prompt, {"team": "search", "case": "ds"}))
        with pytest.raises(grpc.aio.AioRpcError):
            await client.generate(
                text_request(FLASH, "[[fault:429]]", {"team": "search", "case": "ds"})
            )
        await client.generate(text_request(FLASH, "Draft an ad", {"team": "ads", "case": "ds"}))
    await flush(gateway)
    ids = await case_logs(gateway, "ds")
    return {"ads": ids[:1], "search": ids[1:]}


@pytest.fixture(scope="module")
async def search_dataset(gateway: Gateway, logged: dict[str, list[str]]) -> str:
    code, out, err = await cli(
        "datasets", "create", "--name", "Search questions", "--id", "search",
        "--from-filter", 'labels.team = "search"', "--description", "Support questions",
        "--target", gateway.target,
    )  # fmt: skip
    assert code == 0, err
    assert out.strip() == f"created {SEARCH}: Search questions (4 logs)"
    return SEARCH


# --- create, list, show, add, remove ----------------------------------------------------------


async def test_create_from_ids_then_list_show_add_remove(
    gateway: Gateway, logged: dict[str, list[str]], search_dataset: str
) -> None:
    target = ("--target", gateway.target)
    first, second, *_ = logged["search"]
    code, out, err = await cli(
        "datasets", "create", "--name", "Picked", "--id", "picked",
        "--ids", f"{first},{log_name(second, 'default')}", *target,
    )  # fmt: skip
    assert code == 0, err
    assert out.strip() == f"created {PICKED}: Picked (2 logs)"

    (code, listed, err), (_, shown, _), (_, as_json, _) = await asyncio.gather(
        cli("datasets", "list", *target),
        cli("datasets", "show", "search", "--logs", *target),
        cli("datasets", "show", PICKED, "--format", "json", *target),
    )
    assert code == 0, err
    rows = table_rows(listed)
    assert [(row[0], row[1], row[2]) for row in rows] == [
        ("picked", "Picked", "2"),
        ("search", "Search questions", "4"),
    ]
    assert rows[1][5] == "Support questions"
    assert f"dataset       {SEARCH}" in shown
    assert "description   Support questions" in shown
    assert [row[1] for row in table_rows(shown)] == logged["search"]
    picked = json.loads(as_json)
    assert picked["name"] == PICKED and int(picked["logCount"]) == 2

    code, out, err = await cli(
        "datasets", "add", "picked", "--filter", 'labels.team = "ads"', *target
    )
    assert code == 0, err
    assert out.strip() == f"added 1 log: {PICKED}: Picked (3 logs)"
    code, out, err = await cli("datasets", "remove", "picked", "--ids", first, *target)
    assert code == 0, err
    assert out.strip() == f"removed 1 log: {PICKED}: Picked (2 logs)"


# --- export -------------------------------------------------------------------------------


@pytest.mark.parametrize("output", ["csv", "jsonl", "batch", "tuning"])
async def test_export_writes_each_format_to_a_file(
    gateway: Gateway, search_dataset: str, output: str, tmp_path: Path
) -> None:
    out = tmp_path / f"search.{output}"
    target = ("--target", gateway.target)
    code, printed, err = await cli(
        "datasets", "export", "search", "--format", output, "--out", str(out), *target
    )
    assert code == 0, err
    data = out.read_bytes()
    kind = "text/csv" if output == "csv" else "application/jsonl"
    assert printed.strip() == f"wrote {len(data):,} bytes to {out} ({output}, {kind})"
    assert not (tmp_path / f".search.{output}.partial").exists()
    text = data.decode()
    if output == "csv":
        records = list(csv.DictReader(io.StringIO(text)))
        assert tuple(records[0]) == CSV_COLUMNS
        assert sorted(r["prompt"] for r in records if r["status"] == "OK") == sorted(SEARCH_PROMPTS)
        assert len(records) == 4
    lines = [] if output == "csv" else [json.loads(line) for line in text.splitlines()]
    if output == "jsonl":
        assert len(lines) == 4
        assert all(line["request"]["contents"] for line in lines)
        assert sum("candidates" in (line.get("response") or {}) for line in lines) == 3
    elif output == "batch":
        assert len(lines) == 4
        assert all(set(line) == {"key", "request"} for line in lines)
    elif output == "tuning":  # the failed call has no output and is left out
        assert sorted(line["text_input"] for line in lines) == sorted(SEARCH_PROMPTS)
        assert all(line["output"] for line in lines)

    folder = tmp_path / "exports"
    folder.mkdir()
    (code, streamed, err), (_, printed, _) = await asyncio.gather(
        cli("datasets", "export", "search", "--format", output, "--out", "-", *target),
        cli("datasets", "export", "search", "--format", output, "--out", str(folder), *target),
    )
    assert code == 0, err
    assert streamed == text
    suffix = {"csv": ".csv", "jsonl": ".jsonl", "batch": "-batch.jsonl"}.get(
        output, "-tuning.jsonl"
    )
    assert (folder / f"search{suffix}").read_bytes() == data
    assert printed.strip().startswith(f"wrote {len(data):,} bytes to {folder}/search{suffix} (")


# --- re-runs ------------------------------------------------------------------------------


def facts(text: str) -> dict[str, str]:
    """`label  value` lines of a facts grid (the lines of tables are left out)."""
    found = {}
    for line in text.splitlines():
        label, _, value = line.strip().partition("  ")
        if value.strip() and not line.startswith(("│", "┃")):
            found[label] = value.strip()
    return found


def run_name_of(out: str) -> str:
    """The run's name, from the line `run ID of DATASET` that rerun begins with."""
    words = out.splitlines()[0].split()
    assert words[0] == "run" and words[2] == "of", out
    return f"{words[3]}/runs/{words[1]}"


async def test_rerun_direct_shows_progress_then_the_comparison(
    gateway: Gateway, logged: dict[str, list[str]], search_dataset: str
) -> None:
    target = ("--target", gateway.target)
    code, out, err = await cli(
        "datasets", "rerun", "search", "--model", "gemini-2.5-pro", "--concurrency", "2", *target
    )
    assert code == 0, err
    name = run_name_of(out)
    assert name.startswith(f"{SEARCH}/runs/")
    progress = next(line for line in out.splitlines() if "4/4" in line)
    assert "succeeded" in progress and "1 failed" in progress
    comparison = [row for row in table_rows(out) if len(row) == 8]
    assert sorted(row[0] for row in comparison) == sorted(logged["search"])
    failed = [row for row in comparison if row[2].startswith("RESOURCE_EXHAUSTED")]
    assert len(failed) == 1  # the fault in the prompt fires again
    for row in comparison:
        if row not in failed:
            assert row[1] and row[2] and row[3] == "STOP"
            assert row[7] == "same" or 0 <= float(row[7]) <= 1
        else:
            assert row[7] == "-"  # nothing to compare
    totals = {row[0]: row[1:] for row in table_rows(out) if len(row) == 3}
    assert totals["requests"] == ["4", "4"]
    assert totals["failed"] == ["1", "1"]
    assert set(totals) >= {"same text", "mean similarity", "total tokens", "est. cost (USD)"}
    assert "median latency" in totals

    run_id = name.rpartition("/")[2]
    (
        (code, runs, err),
        (_, shown, _),
        (_, newest, _),
        (_, short, _),
        (_, as_json, _),
    ) = await asyncio.gather(
        cli("datasets", "runs", "search", *target),
        cli("datasets", "run", "search", run_id, *target),
        cli("datasets", "run", "search", *target),  # its newest run
        cli("datasets", "run", f"search/runs/{run_id}", *target),
        cli("datasets", "run", name, "--format", "json", *target),
    )
    assert code == 0, err
    (row,) = [row for row in table_rows(runs) if row[0] == run_id]
    assert row[1:4] == ["models/gemini-2.5-pro", "direct", "succeeded"]
    assert row[5:7] == ["4/4", "1"]
    assert facts(shown)["run"] == run_id and facts(shown)["dataset"] == SEARCH
    assert sorted(r[0] for r in table_rows(shown) if len(r) == 8) == sorted(logged["search"])
    assert newest == shown == short
    run = json.loads(as_json)
    assert run["state"] == "SUCCEEDED" and len(run["results"]) == 4


async def test_rerun_batch_with_an_override(gateway: Gateway, search_dataset: str) -> None:
    code, out, err = await cli(
        "datasets", "rerun", "search", "--model", "gemini-2.5-flash", "--mode", "batch",
        "--system-instruction", "Answer in French.", "--temperature", "0.2",
        "--target", gateway.target,
    )  # fmt: skip
    assert code == 0, err
    name = run_name_of(out)
    shown = facts(out)
    assert shown["mode"] == "batch"
    assert shown["overrides"] == "system instruction 'Answer in French.', generation config"
    async with RunClient(gateway.target) as runs:
        run = await runs.get(name)
    assert run.mode == runs_pb2.BATCH and run.batch.startswith("batches/")
    assert run.summary.completed_count == run.summary.request_count == 4


async def test_rerun_without_wait_prints_the_run(gateway: Gateway, search_dataset: str) -> None:
    code, out, err = await cli(
        "datasets", "rerun", "search", "--model", "gemini-2.5-flash", "--no-wait",
        "--target", gateway.target,
    )  # fmt: skip
    assert code == 0, err
    name = run_name_of(out)
    assert f"follow it: gemini-gateway datasets run search {name.rpartition('/')[2]}" in out
    async with RunClient(gateway.target) as runs:
        operation = await runs.rerun("search", "gemini-2.5-flash")
        seen: list[int] = []
        finished = await operation.wait(
            30, on_progress=lambda run: seen.append(run.summary.completed_count)
        )
        assert finished.state == runs_pb2.SUCCEEDED
        assert seen and seen == sorted(seen)
        assert (await runs.get(name, full=False)).name == name
        assert any(run.name == operation.name for run in await runs.list("search"))


# --- tuning ---------------------------------------------------------------------------------


async def test_tune_on_a_dataset(gateway: Gateway, search_dataset: str) -> None:
    code, out, err = await cli(
        "datasets", "tune", "search", "--display-name", "Support bot", "--id", "support-bot",
        "--epochs", "2", "--batch-size", "1", "--wait", "--target", gateway.target,
    )  # fmt: skip
    assert code == 0, err
    assert "operation:   tunedModels/support-bot/operations/" in out
    assert "tunedModels/support-bot: ACTIVE" in out
    async with GatewayClient(gateway.target) as client:
        answer = await client.generate(text_request("tunedModels/support-bot", SEARCH_PROMPTS[1]))
    assert answer.candidates[0].content.parts[0].text


# --- delete and errors ------------------------------------------------------------------------


async def test_delete_asks_first(gateway: Gateway, search_dataset: str) -> None:
    target = ("--target", gateway.target)
    code, out, err = await cli(
        "datasets", "create", "--name", "Doomed", "--id", "doomed",
        "--from-filter", 'labels.team = "ads"', *target,
    )  # fmt: skip
    assert code == 0, err
    code, out, err = await cli("datasets", "delete", "doomed", *target, input="n\n")
    assert code == 1 and "Aborted" in out + err
    code, out, err = await cli("datasets", "delete", "doomed", "--yes", *target)
    assert code == 0, err
    assert out.strip() == "deleted dataset doomed"
    code, _, err = await cli("datasets", "show", "doomed", *target)
    assert code == 1 and one_error_line(err).startswith("NOT_FOUND: ")
    async with DatasetClient(gateway.target) as datasets:
        assert "doomed" not in [d.name.rpartition("/")[2] for d in await datasets.list()]


async def test_errors_are_one_line(gateway: Gateway, tmp_path: Path) -> None:
    target = ("--target", gateway.target)
    out = tmp_path / "nope.csv"
    failed = await asyncio.gather(
        cli("datasets", "show", "nope", *target),
        cli("datasets", "export", "nope", "--format", "csv", "--out", str(out), *target),
        cli("datasets", "rerun", "nope", "--model", "gemini-2.5-pro", *target),
        cli("datasets", "runs", "nope", *target),
        cli("datasets", "create", "--name", "x", "--from-filter", "model = (", *target),
        cli("datasets", "list", "--target", "127.0.0.1:1"),
    )
    statuses = []
    for code, _, err in failed:
        assert code == 1, err
        statuses.append(one_error_line(err).split(":")[0])
    assert statuses == ["NOT_FOUND"] * 4 + ["INVALID_ARGUMENT", "UNAVAILABLE"]
    assert not out.exists() and not (tmp_path / ".nope.csv.partial").exists()

    refused = await asyncio.gather(
        cli("datasets", "create", "--name", "x", *target),
        cli("datasets", "create", "--name", "x", "--ids", "a", "--from-filter", "b", *target),
        cli("datasets", "add", "search", *target),
        cli("datasets", "show", "a/b", *target),
        cli("datasets", "run", "search/runs/", *target),
        cli("datasets", "run", "search/runs/x", "y", *target),
    )
    lines = []
    for code, _, err in refused:
        assert code == 2, err
        lines.append(one_error_line(err))
    assert lines[0] == "error: give --ids ID,ID... or --from-filter FILTER (one of them)"
    assert lines[1] == lines[0]
    assert lines[2] == "error: give --ids ID,ID... or --filter FILTER (one of them)"
    assert lines[3].startswith("error: 'a/b' is neither an id nor a name")
    assert lines[4].startswith("error: 'search/runs/' is not a run")
    assert lines[5] == "error: give a run's name alone, or a dataset and a run id"


def test_run_names() -> None:
    assert run_name("set/runs/r1") == "projects/-/datasets/set/runs/r1"
    assert run_name("set/runs/r1", "p") == "projects/p/datasets/set/runs/r1"
    full = "projects/p/datasets/set/runs/r1"
    assert run_name(full, "other") == full
    for bad in ("set", "set/runs/", "/runs/r1", "set/runs/a/b", "projects/p/logs/x/runs/r"):
        with pytest.raises(ValueError):
            run_name(bad)
