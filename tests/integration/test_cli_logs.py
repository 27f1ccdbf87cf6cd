"""`gemini-gateway logs ...` and LogClient against a real gateway with logging on, the
emulator and SQLite.

The gateway runs in this process on a loopback port; calls are made with the Python client,
then the real CLI runs in a subprocess started with asyncio, so the gateway keeps serving
while it waits. Each call carries a `case` label, so a test finds its own logs.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
from collections.abc import AsyncIterator, Sequence
from datetime import timedelta

import grpc
import pytest

from gemini_gateway.client.gateway_client import GatewayClient, text_request
from gemini_gateway.client.logs import LogClient, log_name, parse_duration
from gemini_gateway.emulator.runner import EmulatorHandle
from gemini_gateway.generated.google.ai.generativelanguage.v1beta import (
    content_pb2,
    generative_service_pb2,
)
from gemini_gateway.server.app import Gateway, start_gateway
from gemini_gateway.server.config import Settings

CLI = [sys.executable, "-m", "gemini_gateway.cli"]
FLASH = "models/gemini-2.5-flash"
CLI_TIMEOUT_S = 60


async def cli(*args: str, input: str | None = None) -> tuple[int, str, str]:
    """Run the real command in a subprocess without blocking the in-process gateway."""
    env = {**os.environ, "COLUMNS": "250"}
    env.pop("GEMINI_GATEWAY_TOKEN", None)
    process = await asyncio.create_subprocess_exec(
        *CLI, *args, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE, env=env,
    )  # fmt: skip
    data = input.encode() if input is not None else b""
    out, err = await asyncio.wait_for(process.communicate(data), CLI_TIMEOUT_S)
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()


def table_rows(text: str) -> list[list[str]]:
    """The cells of each body row of a rich table (header and rules skipped)."""
    return [
        [cell.strip() for cell in line.strip().strip("│").split("│")]
        for line in text.splitlines()
        if line.startswith("│")
    ]


def one_error_line(err: str) -> str:
    assert "Traceback" not in err
    (line,) = err.strip().splitlines()
    return line


def temp_store(tmp_path_factory: pytest.TempPathFactory, name: str) -> str:
    return f"sqlite+aiosqlite:///{tmp_path_factory.mktemp(name) / 'gateway.db'}"


async def flush(gateway: Gateway) -> None:
    assert gateway.recorder is not None
    await gateway.recorder.flush()


async def case_logs(gateway: Gateway, case: str) -> list[str]:
    """Ids of the logs labelled `case=<case>`, newest first."""
    async with LogClient(gateway.target) as logs:
        page = await logs.list(filter=f'labels.case = "{case}"', limit=None)
    return [log.name.rpartition("/")[2] for log in page.logs]


def weather_turns() -> generative_service_pb2.GenerateContentRequest:
    """A call with a system instruction, a tool and earlier turns (a function call and its
    response), as a chat client would send it."""
    request = text_request(FLASH, "Thanks! Should I take a coat?", {"case": "turns"})
    request.system_instruction.parts.add(text="Answer like a weather presenter.")
    tool = request.tools.add()
    tool.function_declarations.add(name="get_weather", description="Weather of a city.")
    earlier = [
        content_pb2.Content(role="user", parts=[content_pb2.Part(text="Weather in Paris?")]),
        content_pb2.Content(role="model"),
        content_pb2.Content(role="user"),
    ]
    call = earlier[1].parts.add().function_call
    call.name = "get_weather"
    call.args.update({"city": "Paris"})
    answer = earlier[2].parts.add().function_response
    answer.name = "get_weather"
    answer.response.update({"celsius": 11, "sky": "cloudy"})
    last = list(request.contents)
    del request.contents[:]
    request.contents.extend([*earlier, *last])
    return request


@pytest.fixture(scope="module")
async def gateway(
    emulator: EmulatorHandle, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[Gateway]:
    gw = await start_gateway(
        Settings(
            upstream="emulator",
            upstream_url=emulator.url,
            port=0,
            store_url=temp_store(tmp_path_factory, "logs-cli"),
            logging_enabled=True,
        )
    )
    yield gw
    await gw.stop(0)


@pytest.fixture(scope="module")
async def logged(gateway: Gateway) -> dict[str, str]:
    """The module's calls, oldest first: case -> log id."""
    async with GatewayClient(gateway.target) as client:
        await client.generate(
            text_request(FLASH, "What is the capital of France?", {"case": "unary", "team": "geo"})
        )
        await client.generate(weather_turns())
        async for _ in client.stream(
            text_request(FLASH, "Tell me a story [[chunks:3]]", {"case": "stream"})
        ):
            pass
        with pytest.raises(grpc.aio.AioRpcError):
            await client.generate(text_request(FLASH, "[[fault:429]]", {"case": "failed"}))
    await flush(gateway)
    ids = {}
    for case in ("unary", "turns", "stream", "failed"):
        (ids[case],) = await case_logs(gateway, case)
    return ids


# --- logs list --------------------------------------------------------------------------------


async def test_list_is_a_table_newest_first(gateway: Gateway, logged: dict[str, str]) -> None:
    code, out, err = await cli(
        "logs", "list", "--filter", "labels.case:*", "--target", gateway.target
    )
    assert code == 0, err
    header = next(line for line in out.splitlines() if "time (UTC)" in line)
    for name in ("id", "model", "method", "status", "labels", "tokens", "latency", "prompt"):
        assert name in header
    rows = table_rows(out)
    assert [row[1] for row in rows] == [
        logged["failed"], logged["stream"], logged["turns"], logged["unary"]
    ]  # fmt: skip
    failed, stream, _, unary = rows
    assert unary[2:5] == [FLASH, "GenerateContent", "OK"]
    assert unary[5] == "case=unary, team=geo"
    assert int(unary[6].replace(",", "")) > 0
    assert unary[7].endswith("ms")
    assert unary[8] == "What is the capital of France?"
    assert stream[3] == "StreamGenerateContent"
    assert failed[4] == "RESOURCE_EXHAUSTED"
    assert "4 logs" in out


async def test_list_json_jsonl_and_limit(gateway: Gateway, logged: dict[str, str]) -> None:
    target = ("--target", gateway.target)
    (code, out, err), (_, lines, _), (_, limited, _) = await asyncio.gather(
        cli("logs", "list", "--filter", 'labels.case = "unary"', "--format", "json", *target),
        cli("logs", "list", "--filter", "labels.case:*", "--format", "jsonl", *target),
        cli("logs", "list", "--filter", "labels.case:*", "--limit", "2", "--page-size", "1",
            "--format", "jsonl", *target),
    )  # fmt: skip
    assert code == 0, err
    listing = json.loads(out)
    (log,) = listing["logs"]
    assert log["name"] == log_name(logged["unary"], "default")
    assert log["labels"] == {"case": "unary", "team": "geo"}
    assert log["promptPreview"] == "What is the capital of France?"
    assert "request" not in log  # the BASIC view: previews, no messages
    assert listing["limitReached"] is False
    names = [json.loads(line)["name"].rpartition("/")[2] for line in lines.splitlines()]
    assert names == [logged[c] for c in ("failed", "stream", "turns", "unary")]
    assert [json.loads(line)["name"] for line in limited.splitlines()] == [
        log_name(logged["failed"], "default"),
        log_name(logged["stream"], "default"),
    ]


async def test_follow_prints_a_new_call_and_ends_on_ctrl_c(
    gateway: Gateway, logged: dict[str, str]
) -> None:
    env = {**os.environ, "COLUMNS": "250", "PYTHONUNBUFFERED": "1"}
    process = await asyncio.create_subprocess_exec(
        *CLI, "logs", "list", "--follow", "--filter", 'labels.case = "follow"',
        "--target", gateway.target,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env=env,
    )  # fmt: skip
    stdout, stderr = process.stdout, process.stderr
    assert stdout is not None and stderr is not None
    seen: list[str] = []

    async def read_until(text: str) -> None:
        while not any(text in line for line in seen):
            line = await asyncio.wait_for(stdout.readline(), CLI_TIMEOUT_S)
            assert line, "".join(seen) + (await stderr.read()).decode()
            seen.append(line.decode())

    try:
        await read_until("Following new logs")
        async with GatewayClient(gateway.target) as client:
            await client.generate(text_request(FLASH, "A followed call", {"case": "follow"}))
        await read_until("A followed call")
    finally:
        process.send_signal(signal.SIGINT)
        code = await asyncio.wait_for(process.wait(), CLI_TIMEOUT_S)
    (followed,) = await case_logs(gateway, "follow")
    (line,) = [line for line in seen if "A followed call" in line]
    assert followed in line and "GenerateContent" in line and "case=follow" in line
    assert code == 0, (await stderr.read()).decode()


async def test_follow_refuses_json(gateway: Gateway) -> None:
    code, _, err = await cli(
        "logs", "list", "--follow", "--format", "json", "--target", gateway.target
    )
    assert code == 2
    assert one_error_line(err).startswith("error: --follow prints one log at a time")


# --- logs show ------------------------------------------------------------------------------


async def test_show_renders_the_exchange_in_order(gateway: Gateway, logged: dict[str, str]) -> None:
    target = ("--target", gateway.target)
    (code, out, err), (_, streamed, _), (_, failed, _), (_, by_name, _) = await asyncio.gather(
        cli("logs", "show", logged["turns"], *target),
        cli("logs", "show", logged["stream"], *target),
        cli("logs", "show", logged["failed"], *target),
        cli("logs", "show", log_name(logged["unary"], "default"), *target),
    )
    assert code == 0, err
    order = [
        "log ",
        "system instruction",
        "Answer like a weather presenter.",
        "tools",
        "function get_weather",
        "turn 1 · user",
        "Weather in Paris?",
        "turn 2 · model",
        '→ call get_weather({"city": "Paris"})',
        "turn 3 · user",
        "← get_weather returned",
        "turn 4 · user",
        "Thanks! Should I take a coat?",
        "response · model",
        "Echo: Thanks! Should I take a coat?",
        "finish  STOP",
    ]
    position = 0
    for text in order:  # each after the one before
        found = out.find(text, position)
        assert found >= 0, (text, out[position:])
        position = found + len(text)
    for fact in ("model", "caller", "anonymous", "tokens", "prompt", "total", "latency"):
        assert fact in out
    assert "GenerateContent (v1beta)" in out

    assert "StreamGenerateContent" in streamed
    assert "first chunk" in streamed and "3 chunks" in streamed
    assert "RESOURCE_EXHAUSTED" in failed and "turn 1 · user" in failed
    assert "What is the capital of France?" in by_name and "case=unary, team=geo" in by_name


async def test_show_raw_is_the_log_as_json(gateway: Gateway, logged: dict[str, str]) -> None:
    code, out, err = await cli("logs", "show", logged["turns"], "--raw", "--target", gateway.target)
    assert code == 0, err
    log = json.loads(out)
    assert log["name"] == log_name(logged["turns"], "default")
    roles = [turn.get("role") for turn in log["request"]["contents"]]
    assert roles == ["user", "model", "user", "user"]
    assert log["request"]["systemInstruction"]["parts"][0]["text"].startswith("Answer like")
    assert log["response"]["candidates"][0]["finishReason"] == "STOP"
    assert int(log["tokens"]["total"]) > 0  # int64: a string in proto3 JSON


async def test_show_without_an_id_is_the_newest_match(
    gateway: Gateway, logged: dict[str, str]
) -> None:
    target = ("--target", gateway.target)
    (code, out, err), (none_code, _, none_err), (both_code, _, both_err) = await asyncio.gather(
        cli("logs", "show", "--filter", 'labels.case = "stream"', *target),
        cli("logs", "show", "--filter", 'labels.case = "nothing"', *target),
        cli("logs", "show", logged["unary"], "--filter", "model:*", *target),
    )
    assert code == 0, err
    assert facts(out)["log"] == logged["stream"] and facts(out)["project"] == "default"
    assert "Tell me a story" in out
    assert none_code == 1
    assert one_error_line(none_err) == "error: no log matches the filter"
    assert both_code == 2
    assert one_error_line(both_err) == "error: give a log id or --filter, not both"


# --- logs delete ----------------------------------------------------------------------------


async def test_delete_by_id_and_by_filter(gateway: Gateway, logged: dict[str, str]) -> None:
    async with GatewayClient(gateway.target) as client:
        for number in range(4):
            await client.generate(text_request(FLASH, f"Delete me {number}", {"case": "delete"}))
    await flush(gateway)
    first, second, *rest = await case_logs(gateway, "delete")
    target = ("--target", gateway.target)

    code, out, err = await cli("logs", "delete", first, "--target", gateway.target, input="n\n")
    assert code == 1 and "Aborted" in out + err  # confirmation refused: nothing deleted
    assert len(await case_logs(gateway, "delete")) == 4

    code, out, err = await cli("logs", "delete", first, *target, input="y\n")
    assert code == 0, err
    assert "Delete 1 log?" in out and "deleted 1 log" in out
    code, out, err = await cli(
        "logs", "delete", log_name(second, "default"), "0" * 24, "--yes", *target
    )
    assert code == 0, err
    assert out.strip() == "deleted 1 log"  # an id that is not there is not counted
    code, out, err = await cli(
        "logs", "delete", "--filter", 'labels.case = "delete"', "--yes", *target
    )
    assert code == 0, err
    assert out.strip() == f"deleted {len(rest)} logs"
    assert await case_logs(gateway, "delete") == []
    assert len(await case_logs(gateway, "unary")) == 1  # other logs stay


async def test_delete_needs_exactly_one_selection(gateway: Gateway) -> None:
    target = ("--target", gateway.target)
    results = await asyncio.gather(
        cli("logs", "delete", "--yes", *target),
        cli("logs", "delete", "abc", "--all", "--yes", *target),
        cli("logs", "delete", "--filter", "model:*", "--all", "--yes", *target),
    )
    for code, _, err in results:
        assert code == 2
        assert one_error_line(err) == (
            "error: give log ids, --filter FILTER or --all (exactly one of them)"
        )


# --- settings, limits -------------------------------------------------------------------------


@pytest.fixture(scope="module")
async def small_gateway(
    emulator: EmulatorHandle, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[Gateway]:
    """Logging on, at most two logs, AI Studio's behaviour at the limit."""
    gw = await start_gateway(
        Settings(
            upstream="emulator",
            upstream_url=emulator.url,
            port=0,
            store_url=temp_store(tmp_path_factory, "logs-cli-limit"),
            logging_enabled=True,
            log_max_logs=2,
        )
    )
    yield gw
    await gw.stop(0)


def facts(text: str) -> dict[str, str]:
    """`label  value` lines of a settings grid, as a dict."""
    found = {}
    for line in text.splitlines():
        label, _, value = line.partition("  ")
        if value.strip():
            found[label.strip()] = value.strip()
    return found


async def calls(gateway: Gateway, prompts: Sequence[str]) -> None:
    async with GatewayClient(gateway.target) as client:
        for prompt in prompts:
            await client.generate(text_request(FLASH, prompt))
    await flush(gateway)


async def test_settings_limit_and_changes(small_gateway: Gateway) -> None:
    target = ("--target", small_gateway.target)
    code, out, err = await cli("logs", "settings", *target)
    assert code == 0, err
    shown = facts(out)
    assert shown["settings"] == "projects/default/loggingSettings"
    assert shown["logging"] == "enabled"
    assert shown["max logs"] == "2"
    assert shown["retention"] == "55 days"
    assert shown["at limit"].startswith("stop logging")
    assert shown["limit reached"] == "no"
    assert shown["changed"] == "never (configured defaults)"

    await calls(small_gateway, ["one", "two", "three"])
    (code, listed, err), (_, out, _) = await asyncio.gather(
        cli("logs", "list", *target), cli("logs", "settings", *target)
    )
    assert code == 0, err
    assert len(table_rows(listed)) == 2
    assert "delete" in listed.splitlines()[-1].lower()  # the notice: delete logs to log again
    shown = facts(out)
    assert shown["logs kept"] == "2"
    assert shown["limit reached"] == "yes"
    assert shown["skipped at limit"] == "1"

    code, out, err = await cli(
        "logs", "settings", "--max-logs", "3", "--retention", "30d", "--at-limit", "evict",
        *target,
    )  # fmt: skip
    assert code == 0, err
    assert out.splitlines()[0] == "updated max_logs, retention, at_limit"
    shown = facts(out)
    assert shown["max logs"] == "3"
    assert shown["retention"] == "30 days"
    assert shown["at limit"].startswith("evict the oldest")
    assert shown["limit reached"] == "no"
    assert shown["changed"].endswith("UTC")

    await calls(small_gateway, ["four", "five"])  # "four" fits, then "one" makes room
    code, out, err = await cli("logs", "settings", "--disable", "--format", "json", *target)
    assert code == 0, err
    settings = json.loads(out)
    assert settings["enabled"] is False
    assert int(settings["logCount"]) == 3
    assert int(settings["evictedCount"]) == 1

    await calls(small_gateway, ["six"])  # logging is off: not logged
    code, out, err = await cli("logs", "list", "--format", "jsonl", *target)
    assert code == 0, err
    previews = [json.loads(line)["promptPreview"] for line in out.splitlines()]
    assert previews == ["five", "four", "two"]  # "three" came at the limit: skipped

    code, out, err = await cli("logs", "delete", "--all", "--yes", *target)
    assert code == 0, err
    assert out.strip() == "deleted 3 logs"
    code, out, err = await cli("logs", "list", *target)
    assert code == 0, err
    assert "logging is off for this project" in out and "--enable" in out
    code, out, err = await cli("logs", "settings", "--enable", *target)
    assert code == 0, err
    assert facts(out)["logging"] == "enabled"


async def test_settings_refuse_bad_values(small_gateway: Gateway) -> None:
    target = ("--target", small_gateway.target)
    (code, _, err), (max_code, _, max_err) = await asyncio.gather(
        cli("logs", "settings", "--retention", "a month", *target),
        cli("logs", "settings", "--max-logs", "0", *target),
    )
    assert code == 2
    assert one_error_line(err).startswith("error: --retention: cannot read 'a month' as a")
    assert max_code == 2 and "--max-logs" in max_err


# --- errors ---------------------------------------------------------------------------------


async def test_errors_are_one_line(gateway: Gateway, logged: dict[str, str]) -> None:
    target = ("--target", gateway.target)
    results = await asyncio.gather(
        cli("logs", "show", "0" * 24, *target),
        cli("logs", "list", "--filter", 'model = "x" AND (', *target),
        cli("logs", "list", "--target", "127.0.0.1:1"),
        cli("logs", "show", logged["unary"], "--project", "elsewhere", *target),
    )
    statuses = []
    for code, _, err in results:
        assert code == 1, err
        statuses.append(one_error_line(err).split(":")[0])
    assert statuses == ["NOT_FOUND", "INVALID_ARGUMENT", "UNAVAILABLE", "PERMISSION_DENIED"]
    code, _, err = await cli("logs", "show", "projects/default/datasets/x", *target)
    assert code == 2
    assert one_error_line(err).startswith("error: 'projects/default/datasets/x' is not a name")


# --- LogClient --------------------------------------------------------------------------------


async def test_log_client_pages_get_and_tail(gateway: Gateway, logged: dict[str, str]) -> None:
    async with LogClient(gateway.target) as logs:
        everything = await logs.list(filter="labels.case:*", limit=None)
        page = await logs.list(filter="labels.case:*", limit=3, page_size=2)
        assert len(everything.logs) > 3 and not everything.next_page_token
        assert [log.name for log in page.logs] == [log.name for log in everything.logs[:3]]
        assert page.next_page_token  # where the listing stopped
        full = await logs.get(logged["turns"])
        assert len(full.request.contents) == 4 and full.response.candidates
        basic = await logs.get(logged["turns"], full=False)
        assert not basic.HasField("request") and basic.prompt_preview

        async with logs.tail(filter='labels.case = "tail"') as tail:
            await tail.started()  # the gateway follows the project from here on
            async with GatewayClient(gateway.target) as client:
                await client.generate(text_request(FLASH, "not followed", {"case": "other"}))
                await client.generate(text_request(FLASH, "followed", {"case": "tail"}))
            followed = await asyncio.wait_for(anext(aiter(tail)), CLI_TIMEOUT_S)
        assert followed.prompt_preview == "followed"
        assert followed.labels["case"] == "tail" and not followed.HasField("request")

        with pytest.raises(ValueError, match="exactly one"):
            await logs.delete()
        with pytest.raises(ValueError, match="nothing to change"):
            await logs.update_settings()


def test_parse_duration() -> None:
    assert parse_duration("30d") == timedelta(days=30)
    assert parse_duration(" 36H ") == timedelta(hours=36)
    assert parse_duration("90m") == timedelta(minutes=90)
    assert parse_duration("1.5s") == timedelta(seconds=1.5)
    assert parse_duration("2w") == timedelta(weeks=2)
    for text in ("", "30", "d", "0d", "-1d", "a month", "9" * 30 + "w"):
        with pytest.raises(ValueError) as caught:
            parse_duration(text)
        assert "\n" not in str(caught.value)


def test_log_names() -> None:
    assert log_name("abc") == "projects/-/logs/abc"
    assert log_name("abc", "search") == "projects/search/logs/abc"
    assert log_name("projects/p/logs/abc", "other") == "projects/p/logs/abc"
    for bad in ("", "a/b", "projects/p/datasets/x", "projects/p/logs/"):
        with pytest.raises(ValueError):
            log_name(bad)
