"""`gemini-gateway usage` and UsageClient against a real gateway, the emulator and SQLite.

The gateway runs in this process (on a loopback port) with a store of its own; labelled calls
are made with the Python client, then the real CLI runs in a subprocess, started with
asyncio so the gateway keeps serving while it waits. Expected counts and tokens come from
the answers the calls got.
"""

from __future__ import annotations

import asyncio
import csv
import io
import json
import os
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import grpc
import pytest
from typer.testing import CliRunner

from gemini_gateway.cli.main import app
from gemini_gateway.client.gateway_client import GatewayClient, text_request
from gemini_gateway.client.usage import UsageClient, parse_since
from gemini_gateway.emulator.runner import EmulatorHandle
from gemini_gateway.generated.google.ai.generativelanguage.v1beta import (
    generative_service_pb2,
    generative_service_pb2_grpc,
)
from gemini_gateway.server.app import Gateway, start_gateway
from gemini_gateway.server.config import CallerConfig, ProjectConfig, Settings
from gemini_gateway.server.identity import token_sha256
from gemini_gateway.server.pricing import PriceTable

CLI = [sys.executable, "-m", "gemini_gateway.cli"]
FLASH = "models/gemini-2.5-flash"
PRO = "models/gemini-2.5-pro"
TOKEN = "reporter-token-for-tests"
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


@dataclass
class Sums:
    requests: int = 0
    errors: int = 0
    prompt: int = 0
    candidates: int = 0
    cached: int = 0
    thoughts: int = 0
    total: int = 0

    def add(self, usage: generative_service_pb2.GenerateContentResponse.UsageMetadata) -> None:
        self.requests += 1
        self.prompt += usage.prompt_token_count
        self.candidates += usage.candidates_token_count
        self.cached += usage.cached_content_token_count
        self.thoughts += usage.thoughts_token_count
        self.total += usage.total_token_count


Expected = dict[tuple[str, str], Sums]  # (labels.team, model) -> sums


def _temp_store(tmp_path_factory: pytest.TempPathFactory, name: str) -> str:
    return f"sqlite+aiosqlite:///{tmp_path_factory.mktemp(name) / 'gateway.db'}"


@pytest.fixture(scope="module")
async def usage_gateway(
    emulator: EmulatorHandle, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[Gateway]:
    gateway = await start_gateway(
        Settings(
            upstream="emulator",
            upstream_url=emulator.url,
            port=0,
            store_url=_temp_store(tmp_path_factory, "usage-cli"),
        )
    )
    yield gateway
    await gateway.stop(0)


@pytest.fixture(scope="module")
async def expected(usage_gateway: Gateway) -> Expected:
    """The module's calls, made once; what each (team, model) group must add up to."""
    sums: Expected = {}
    async with GatewayClient(usage_gateway.target) as client:
        for number in range(3):
            answer = await client.generate(
                text_request(
                    FLASH, f"hello from search {number}", {"team": "search", "env": "prod"}
                )
            )
            sums.setdefault(("search", FLASH), Sums()).add(answer.usage_metadata)
        chunks = [
            chunk
            async for chunk in client.stream(
                text_request(FLASH, "a story [[chunks:3]]", {"team": "search", "env": "dev"})
            )
        ]
        sums[("search", FLASH)].add(chunks[-1].usage_metadata)  # a stream's last chunk counts
        answer = await client.generate(text_request(PRO, "ads budget question", {"team": "ads"}))
        sums.setdefault(("ads", PRO), Sums()).add(answer.usage_metadata)
        answer = await client.generate(text_request(FLASH, "no labels at all"))
        sums.setdefault(("(none)", FLASH), Sums()).add(answer.usage_metadata)
        with pytest.raises(grpc.aio.AioRpcError):
            await client.generate(text_request(FLASH, "[[fault:429]]", {"team": "ads"}))
        sums[("ads", FLASH)] = Sums(requests=1, errors=1)
    assert usage_gateway.recorder is not None
    await usage_gateway.recorder.flush()
    return sums


async def cli(*args: str, token: str | None = None) -> tuple[int, str, str]:
    """Run the real command in a subprocess without blocking the in-process gateway."""
    env = {**os.environ, "COLUMNS": "200"}
    env.pop("GEMINI_GATEWAY_TOKEN", None)
    if token:
        env["GEMINI_GATEWAY_TOKEN"] = token
    process = await asyncio.create_subprocess_exec(
        *CLI, *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env=env
    )
    out, err = await asyncio.wait_for(process.communicate(), 60)
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()


def table_rows(text: str) -> list[list[str]]:
    """The cells of each body row of a rich table (header and rules skipped)."""
    rows = []
    for line in text.splitlines():
        if line.startswith("│"):
            rows.append([cell.strip() for cell in line.strip("│").split("│")])
    return rows


def number(cell: str) -> int:
    return int(cell.replace(",", ""))


# --- the table and its exports --------------------------------------------------------------


async def test_table_has_a_row_per_group_and_totals(
    usage_gateway: Gateway, expected: Expected
) -> None:
    code, out, err = await cli(
        "usage", "--group-by", "labels.team,model", "--since", "7d",
        "--target", usage_gateway.target,
    )  # fmt: skip
    assert code == 0, err
    header = next(line for line in out.splitlines() if "requests" in line)
    for name in ("labels.team", "model", "errors", "prompt", "output", "cached", "thinking"):
        assert name in header
    assert "est. cost (USD)" in header
    rows = table_rows(out)
    body, totals = rows[:-1], rows[-1]
    shown = {(row[0], row[1]): row for row in body}
    assert set(shown) == set(expected)
    for key, sums in expected.items():
        cells = shown[key]
        assert [number(cell) for cell in cells[2:5]] == [sums.requests, sums.errors, sums.prompt]
        assert [number(cell) for cell in cells[5:9]] == [
            sums.candidates,
            sums.cached,
            sums.thoughts,
            sums.total,
        ]
        assert (float(cells[9]) > 0) == (sums.total > 0)
    assert totals[0] == "total"
    assert number(totals[2]) == sum(s.requests for s in expected.values()) == 7
    assert number(totals[8]) == sum(s.total for s in expected.values())
    prices = PriceTable.load()
    assert f"price table read on {prices.read_on} from {prices.source}" in out


async def test_csv_and_json_exports_match_the_calls(
    usage_gateway: Gateway, expected: Expected
) -> None:
    args = ("usage", "--group-by", "labels.team,model", "--target", usage_gateway.target)
    (csv_code, csv_out, csv_err), (json_code, json_out, json_err) = await asyncio.gather(
        cli(*args, "--format", "csv"), cli(*args, "--format", "json")
    )
    assert csv_code == 0, csv_err
    assert json_code == 0, json_err
    records = list(csv.DictReader(io.StringIO(csv_out)))
    report = json.loads(json_out)
    assert csv_out.splitlines()[0].startswith("labels.team,model,request_count,error_count,")
    by_group = {(r["labels.team"], r["model"]): r for r in records}
    json_rows = {(r["group"]["labels.team"], r["group"]["model"]): r for r in report["rows"]}
    assert set(by_group) == set(json_rows) == set(expected)
    for key, sums in expected.items():
        record, row = by_group[key], json_rows[key]
        assert int(record["request_count"]) == row["request_count"] == sums.requests
        assert int(record["error_count"]) == row["error_count"] == sums.errors
        assert int(record["prompt_tokens"]) == row["tokens"]["prompt"] == sums.prompt
        assert int(record["candidates_tokens"]) == row["tokens"]["candidates"] == sums.candidates
        assert int(record["cached_tokens"]) == row["tokens"]["cached"] == sums.cached
        assert int(record["thoughts_tokens"]) == row["tokens"]["thoughts"] == sums.thoughts
        assert int(record["total_tokens"]) == row["tokens"]["total"] == sums.total
        assert float(record["estimated_cost"]) == row["estimated_cost"]
        assert (row["estimated_cost"] > 0) == (sums.total > 0)
        assert record["currency"] == "USD"
    # Pro costs more than Flash for about as many tokens.
    assert (
        json_rows[("ads", PRO)]["estimated_cost"] > json_rows[("(none)", FLASH)]["estimated_cost"]
    )
    assert report["totals"]["request_count"] == 7
    assert report["totals"]["estimated_cost"] == pytest.approx(
        sum(row["estimated_cost"] for row in report["rows"])
    )
    assert report["group_by"] == ["labels.team", "model"]
    prices = PriceTable.load()
    assert report["price_table"] == {
        "currency": "USD",
        "read_on": str(prices.read_on),
        "source": prices.source,
    }


async def test_day_buckets_filter_and_time_range(
    usage_gateway: Gateway, expected: Expected
) -> None:
    target = ("--target", usage_gateway.target)
    (code, out, err), (_, filtered, _), (_, recent, _), (_, past, _) = await asyncio.gather(
        cli("usage", "--group-by", "labels.env", "--bucket", "day", "--format", "csv", *target),
        cli(
            "usage", "--group-by", "labels.env", "--format", "json", *target,
            "--filter", 'labels.team = "search" AND labels.env != "dev"',
        ),
        cli("usage", "--since", "90m", "--format", "json", *target),
        cli("usage", "--since", "30d", "--until", "1d", *target),
    )  # fmt: skip
    assert code == 0, err
    today = datetime.now(UTC).strftime("%Y-%m-%dT00:00:00Z")
    records = list(csv.DictReader(io.StringIO(out)))
    assert {r["bucket_start"] for r in records} == {today}
    assert {r["labels.env"]: int(r["request_count"]) for r in records} == {
        "prod": 3,
        "dev": 1,
        "(none)": 3,
    }
    rows = json.loads(filtered)["rows"]
    assert [(r["group"], r["request_count"]) for r in rows] == [({"labels.env": "prod"}, 3)]
    assert json.loads(recent)["totals"]["request_count"] == 7
    assert "No recorded calls match." in past
    assert table_rows(past)[-1][:2] == ["total", "0"]


async def test_label_keys_and_values(usage_gateway: Gateway, expected: Expected) -> None:
    target = ("--target", usage_gateway.target)
    (code, keys, err), (_, teams, _), (_, envs, _) = await asyncio.gather(
        cli("usage", "keys", *target),
        cli("usage", "values", "team", *target),
        cli("usage", "values", "labels.env", "--prefix", "pr", *target),
    )
    assert code == 0, err
    assert table_rows(keys) == [["team", "6"], ["env", "4"]]
    assert table_rows(teams) == [["search", "4"], ["ads", "2"]]
    assert table_rows(envs) == [["prod", "3"]]


# --- the chart ------------------------------------------------------------------------------


async def test_chart_writes_a_png(
    usage_gateway: Gateway, expected: Expected, tmp_path: Path
) -> None:
    out = tmp_path / "usage.png"
    code, stdout, err = await cli(
        "usage", "chart", "--group-by", "labels.team,model", "--since", "30d",
        "--out", str(out), "--target", usage_gateway.target,
    )  # fmt: skip
    assert code == 0, err
    assert f"wrote {out} (31 days, 3 series)" in stdout.replace("\n", "")
    image = out.read_bytes()
    assert image.startswith(PNG_SIGNATURE)
    assert len(image) > 20_000  # bars, legend, labels: far more than an empty canvas


async def test_chart_refuses_a_format_matplotlib_cannot_write(
    usage_gateway: Gateway, tmp_path: Path
) -> None:
    out = tmp_path / "usage.txt"
    code, _, err = await cli("usage", "chart", "--out", str(out), "--target", usage_gateway.target)
    assert code == 2
    (line,) = err.strip().splitlines()
    assert line.startswith("error: --out usage.txt: matplotlib cannot write '.txt' files; use")
    assert ".png" in line and ".svg" in line and ".pdf" in line
    assert "Traceback" not in err and not out.exists()


def test_chart_without_matplotlib_says_how_to_install_it(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # `import matplotlib` now fails
    result = CliRunner().invoke(
        app, ["usage", "chart", "--out", str(tmp_path / "u.png"), "--target", "127.0.0.1:1"]
    )
    assert result.exit_code == 1
    (line,) = result.stderr.strip().splitlines()
    assert "needs matplotlib" in line and "pip install" in line and "[plot]" in line


# --- errors -----------------------------------------------------------------------------------


async def test_gateway_errors_are_one_status_line(usage_gateway: Gateway) -> None:
    target = ("--target", usage_gateway.target)
    results = await asyncio.gather(
        cli("usage", "--filter", 'model = "x" AND (', *target),
        cli("usage", "--group-by", "colour", *target),
        cli("usage", "--target", "127.0.0.1:1"),
        cli("usage", "keys", "--target", "127.0.0.1:1"),
    )
    statuses = []
    for code, _, err in results:
        assert code == 1
        assert "Traceback" not in err
        (line,) = err.strip().splitlines()
        statuses.append(line.split(":")[0])
    assert statuses == ["INVALID_ARGUMENT", "INVALID_ARGUMENT", "UNAVAILABLE", "UNAVAILABLE"]
    assert "column" in results[0][2]
    assert "cannot group by 'colour'" in results[1][2]


async def test_bad_times_are_usage_errors(usage_gateway: Gateway) -> None:
    code, _, err = await cli("usage", "--since", "last tuesday", "--target", usage_gateway.target)
    assert code == 2
    (line,) = err.strip().splitlines()
    assert line.startswith("error: --since: cannot read 'last tuesday' as a time: use")


@pytest.fixture(scope="module")
async def team_gateway(
    emulator: EmulatorHandle, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[Gateway]:
    """A gateway that knows its callers: one project, one caller with default labels."""
    gateway = await start_gateway(
        Settings(
            upstream="emulator",
            upstream_url=emulator.url,
            port=0,
            store_url=_temp_store(tmp_path_factory, "usage-cli-callers"),
            projects={
                "search": ProjectConfig(
                    default_labels={"team": "search"},
                    callers=[CallerConfig(name="reporter", token_sha256=token_sha256(TOKEN))],
                )
            },
        )
    )
    yield gateway
    await gateway.stop(0)


async def test_token_identifies_the_caller(team_gateway: Gateway) -> None:
    async with grpc.aio.insecure_channel(team_gateway.target) as channel:
        stub = generative_service_pb2_grpc.GenerativeServiceStub(channel)
        await stub.GenerateContent(
            text_request(FLASH, "hello", {"env": "prod"}),
            metadata=(("authorization", f"Bearer {TOKEN}"),),
        )
    assert team_gateway.recorder is not None
    await team_gateway.recorder.flush()
    target = ("--target", team_gateway.target)
    (code, out, err), anonymous, elsewhere = await asyncio.gather(
        cli("usage", "--group-by", "project,caller,labels.team", "--format", "json", *target,
            token=TOKEN),
        cli("usage", *target),
        cli("usage", "--project", "ads", *target, token=TOKEN),
    )  # fmt: skip
    assert code == 0, err
    (row,) = json.loads(out)["rows"]
    assert row["group"] == {"project": "search", "caller": "reporter", "labels.team": "search"}
    assert anonymous[0] == 1 and anonymous[2].startswith("UNAUTHENTICATED: ")
    assert elsewhere[0] == 1
    assert elsewhere[2].strip() == "PERMISSION_DENIED: caller 'reporter' may not read project 'ads'"


# --- UsageClient ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
async def paging_gateway(
    emulator: EmulatorHandle, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[Gateway]:
    """A store of its own, so these calls never show in the other tests' totals."""
    gateway = await start_gateway(
        Settings(
            upstream="emulator",
            upstream_url=emulator.url,
            port=0,
            store_url=_temp_store(tmp_path_factory, "usage-cli-paging"),
        )
    )
    async with GatewayClient(gateway.target) as client:
        for n in range(12):
            labels = {"batch": "paging", "n": f"{n:02}", "team": "search"}
            await client.generate(text_request(FLASH, "hi", labels))
    assert gateway.recorder is not None
    await gateway.recorder.flush()
    yield gateway
    await gateway.stop(0)


async def test_usage_client_walks_every_page(paging_gateway: Gateway) -> None:
    async with UsageClient(paging_gateway.target) as client:
        pages = 0
        query_usage = client.stub.QueryUsage

        async def counted(*args: object, **kwargs: object) -> object:
            nonlocal pages
            pages += 1
            return await query_usage(*args, **kwargs)

        client.stub.QueryUsage = counted  # type: ignore[method-assign]
        report = await client.query(
            ["labels.n", "model"], filter='labels.batch = "paging"', page_size=5
        )
        assert pages == 3
        assert sorted(row.group["labels.n"] for row in report.rows) == [
            f"{n:02}" for n in range(12)
        ]
        assert all(list(row.group) == ["labels.n", "model"] for row in report.rows)
        assert report.totals.request_count == 12
        assert report.totals.tokens.total == sum(row.tokens.total for row in report.rows) > 0
        assert report.totals.estimated_cost == pytest.approx(
            sum(row.estimated_cost for row in report.rows)
        )
        assert report.price_table.currency == "USD"

        keys = await client.label_keys()
        assert [(key.name, key.request_count) for key in keys] == [
            ("batch", 12),
            ("n", 12),
            ("team", 12),
        ]
        assert [key.name for key in await client.label_keys("ba")] == ["batch"]
        values = await client.label_values("n", page_size=5)
        assert sorted(value.name for value in values) == [f"{n:02}" for n in range(12)]
        assert [v.name for v in await client.label_values("labels.n", prefix="1")] == [
            "10",
            "11",
        ]


async def test_usage_client_bad_filter_is_invalid_argument(usage_gateway: Gateway) -> None:
    async with UsageClient(usage_gateway.target) as client:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await client.query(["model"], filter="labels.team = ")
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        with pytest.raises(ValueError, match="bucket"):
            await client.query(bucket="week")  # type: ignore[arg-type]


async def test_usage_client_time_series(usage_gateway: Gateway, expected: Expected) -> None:
    async with grpc.aio.insecure_channel(usage_gateway.target) as channel:
        client = UsageClient(channel=channel)
        report = await client.query(
            ["labels.team"],
            filter="labels.team:*",
            start=parse_since("1d"),
            end=datetime.now(UTC) + timedelta(minutes=1),
            bucket="hour",
        )
        await client.close()
        # A channel passed in belongs to the caller: close leaves it open.
        assert channel.get_state() != grpc.ChannelConnectivity.SHUTDOWN
    hour = datetime.now(UTC).replace(minute=0, second=0, microsecond=0)
    assert {row.bucket_start for row in report.rows} <= {hour, hour - timedelta(hours=1)}
    assert sum(row.request_count for row in report.rows) == 6


# --- parse_since ------------------------------------------------------------------------------

NOW = datetime(2026, 11, 25, 12, 30, tzinfo=UTC)


@pytest.mark.parametrize(
    ("text", "moment"),
    [
        ("90m", NOW - timedelta(minutes=90)),
        ("24h", NOW - timedelta(hours=24)),
        ("7d", NOW - timedelta(days=7)),
        ("2w", NOW - timedelta(weeks=2)),
        (" 7D ", NOW - timedelta(days=7)),
        ("2026-11-01T00:00:00Z", datetime(2026, 11, 1, tzinfo=UTC)),
        ("2026-11-01T02:00:00+02:00", datetime(2026, 11, 1, tzinfo=UTC)),
        ("2026-11-01", datetime(2026, 11, 1, tzinfo=UTC)),
    ],
)
def test_parse_since(text: str, moment: datetime) -> None:
    parsed = parse_since(text, now=NOW)
    assert parsed == moment and parsed.tzinfo == UTC


@pytest.mark.parametrize("text", ["", "7", "d7", "7x", "-7d", "1.5h", "yesterday", "9" * 20 + "d"])
def test_parse_since_refuses_with_one_line(text: str) -> None:
    with pytest.raises(ValueError) as caught:
        parse_since(text, now=NOW)
    message = str(caught.value)
    assert "\n" not in message and len(message) < 200
    assert "90m" in message or "too far back" in message
