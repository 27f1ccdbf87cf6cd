"""The shell commands and `$ ` transcripts of docs/*.md, run as the docs show them.

As in test_readme.py: real processes on free loopback ports, a scratch folder mirroring the
checkout, `GEMINI_GATEWAY_TARGET` pointing the CLI at the gateway and `127.0.0.1:50051` in a
command's text replaced by its address; each command must exit as the doc says and print the
key words of the output shown under it (`# ...` lines, a `text` block right below, or the lines
after a `$ ` command). `gemini-gateway` alone is run with the venv active (`.venv/bin` first on
PATH), as the docs say.

- docs/tuning.md: the walkthrough (tune create, list, get, plot, generate with the tuned model),
  on a fresh gateway (the emulator's tuned-model ids are deterministic, so `increment-y0cq6`
  is the id the first job gets). Not run: `make serve` (the gateway above replaces it).
- docs/usage.md: first the eleven calls the doc describes, then the `$ ` transcripts (refused
  labels exit 2 with the line shown, csv, keys, values) and the table the doc shows. Not run:
  the two synopses (`[...]` marks optional parts; the table is checked with the bare command).
- docs/logs.md: the walkthrough in order on a fresh gateway: logging switched on, calls made,
  logs listed, shown and filtered, a dataset built, exported in each format, tuned on and
  re-run, and the `buf curl` calls of the gRPC methods.
- docs/emulator.md: each `python -m gemini_gateway.emulator` command on a free port instead of
  8081, until it prints what the doc says; a generate call gets 200, or the status its
  `--fault` names; Ctrl-C (SIGINT) stops it with status 0.
- docs/workers.md: each `serve --workers` command on free ports, until it says how many
  worker processes share the port; SIGTERM drains them with status 0.
- docs/polyglot.md: `npx buf generate` into the scratch folder, then each JavaScript snippet,
  unchanged but for the gateway's address, run by Node after the doc's set-up (a
  `package.json` with `"type": "module"` above the stubs) with one line added to print the
  answer; a JavaScript block that shows a script of the repository must equal it, and the
  doc's `node ...` command runs it. Not run: `make generate && npm ci` (it rewrites
  generated/ and node_modules/ in the checkout; the test set-up has them) and `make serve`.
- docs/benchmarks.md: nothing runs; `make bench` and `python -m bench` take 30 s to 2 min,
  more than these tests' budget (the bench checks its own calls and store).

Commands other than the CLI (not `serve`), `npx buf`, `grpcurl` and `node` are never run:
one not listed as skipped fails the test instead (conftest.not_runnable).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

import grpc
import pytest

from gemini_gateway.client import SyncGatewayClient, text_request
from gemini_gateway.generated.gemini.gateway.v1 import usage_pb2, usage_pb2_grpc
from tests.docs.conftest import (
    ServedGateway,
    check_command,
    clean_env,
    free_port,
    mirror,
    run_command,
    stop,
    wait_for_text,
    walk,
)
from tests.docs.markdown import (
    DOCS,
    ROOT,
    Command,
    blocks,
    doc_commands,
    inline_comment,
    is_transcript,
    transcript_commands,
)

DEFAULT_TARGET = "127.0.0.1:50051"
TUNING = ROOT / "docs" / "tuning.md"
USAGE = ROOT / "docs" / "usage.md"
LOGS = ROOT / "docs" / "logs.md"
EMULATOR = ROOT / "docs" / "emulator.md"
POLYGLOT = ROOT / "docs" / "polyglot.md"
BENCHMARKS = ROOT / "docs" / "benchmarks.md"
WORKERS = ROOT / "docs" / "workers.md"
WALKED = {ROOT / "README.md", TUNING, USAGE, LOGS, EMULATOR, POLYGLOT, BENCHMARKS, WORKERS}

TUNING_SKIPPED = {"make serve": "runs until stopped; the test starts the same gateway itself"}
USAGE_SKIPPED = {
    "gemini-gateway usage --group-by labels.team,model --since 7d [": "a synopsis",
    "gemini-gateway usage chart --group-by labels.team --since 30d [": "a synopsis",
}
POLYGLOT_SKIPPED = {
    "make generate && npm ci": "rewrites generated/ and node_modules/ in the checkout",
    "make serve": "runs until stopped; the test starts the same gateway itself",
}
# A JavaScript block naming a script of the repository shows that script.
NAMED_SCRIPT = re.compile(r"(?:tests|examples)/[\w/.-]+\.m?js")
EMULATOR_COMMAND = ".venv/bin/python -m gemini_gateway.emulator "
BENCHMARKS_SKIPPED = {
    "make bench": "about six minutes",
    ".venv/bin/python -m bench --quick": "about a minute",
    ".venv/bin/python -m bench --recording": "about a minute",
    ".venv/bin/python -m bench --logging": "about a minute and a half",
    ".venv/bin/python -m bench --markdown": "about six minutes",
    ".venv/bin/python -m bench.floor": "about two minutes, and needs h2load and nginx",
}


def _activate_venv(gateway: ServedGateway) -> None:
    gateway.env["PATH"] = f"{gateway.scratch / '.venv' / 'bin'}{os.pathsep}{gateway.env['PATH']}"


def test_workers_commands(tmp_path: Path) -> None:
    """docs/workers.md: each `serve` command, on free ports, serves with the workers it asks
    for and drains on SIGTERM with status 0."""
    scratch = mirror(tmp_path)
    env = clean_env(scratch)
    commands = doc_commands(WORKERS)
    assert commands, "docs/workers.md shows no command"
    for number, command in enumerate(commands):
        assert ".venv/bin/gemini-gateway serve" in command.first_line, command.first_line
        text = command.text.split("#")[0].strip()
        text = re.sub(r"--metrics-port \d+", f"--metrics-port {free_port()}", text)
        log = scratch / f"workers-{number}.log"
        with log.open("wb") as out:
            process = subprocess.Popen(
                ["/bin/sh", "-c", f"exec env {text} --port {free_port()}"], cwd=scratch, env=env,
                stdout=out, stderr=subprocess.STDOUT,
            )  # fmt: skip
        try:
            workers = wait_for_text(log, re.compile(r"workers: (\d+) processes"), process)
            asked = re.search(r"--workers (\d+)", text)
            expected = int(asked.group(1)) if asked else os.cpu_count()
            if expected and expected > 1:
                assert int(workers.group(1)) == expected, log.read_text()
        finally:
            status = stop(process, signal.SIGTERM)
        assert status == 0, (command.first_line, status, log.read_text())


def test_every_doc_with_commands_is_walked() -> None:
    for doc in DOCS:
        if any(b.language == "sh" or is_transcript(b) for b in blocks(doc)):
            assert doc in WALKED, f"{doc.relative_to(ROOT)} has commands no test runs"


def test_tuning_walkthrough(served_gateway: ServedGateway) -> None:
    _activate_venv(served_gateway)
    result = walk(
        doc_commands(TUNING),
        served_gateway,
        TUNING_SKIPPED,
        substitutions={DEFAULT_TARGET: served_gateway.target},
    )
    assert not result.failures, "\n\n".join(result.failures)
    assert any(line.startswith("gemini-gateway tune create") for line in result.ran)


def _make_the_documented_calls(target: str) -> None:
    """docs/usage.md: "after eleven calls: five `generate` with `--label team=search --label
    env=prod`, two `stream` with `team=search`, `env=dev`, two on `gemini-2.5-pro` and one
    `[[fault:429]]` with `team=ads`, `env=prod`, and one without labels"."""
    search_prod = {"team": "search", "env": "prod"}
    search_dev = {"team": "search", "env": "dev"}
    ads_prod = {"team": "ads", "env": "prod"}
    with SyncGatewayClient(target) as client:
        for number in range(5):
            client.generate(text_request("gemini-2.5-flash", f"Roadmap {number}", search_prod))
        for number in range(2):
            request = text_request("gemini-2.5-flash", f"Story {number}", search_dev)
            list(client.stream(request))
        for number in range(2):
            client.generate(text_request("gemini-2.5-pro", f"Ad {number}", ads_prod))
        with pytest.raises(grpc.RpcError) as refused:
            client.generate(text_request("gemini-2.5-flash", "[[fault:429]]", ads_prod))
        assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        client.generate(text_request("gemini-2.5-flash", "No labels"))
    # The recorder writes in batches off the request path: wait until all eleven are stored.
    with grpc.insecure_channel(target) as channel:
        stub = usage_pb2_grpc.UsageServiceStub(channel)
        for _ in range(200):
            if stub.QueryUsage(usage_pb2.QueryUsageRequest()).totals.request_count == 11:
                return
            time.sleep(0.05)
    raise AssertionError("the eleven calls were not all recorded")


def _table_rows(lines: list[str]) -> set[tuple[str, ...]]:
    """(team, model, requests, errors) of each body row of a rich usage table."""
    rows = set()
    for line in lines:
        cells = [cell.strip() for cell in line.strip().strip("│").split("│")]
        if len(cells) > 4 and cells[2].replace(",", "").isdigit() and cells[0] != "total":
            rows.add(tuple(cells[:4]))
    return rows


def test_usage_commands(served_gateway: ServedGateway) -> None:
    _activate_venv(served_gateway)
    _make_the_documented_calls(served_gateway.target)

    transcripts = [
        command
        for block in blocks(USAGE, "text")
        if is_transcript(block)
        for command in transcript_commands(block)
    ]
    commands = sorted(doc_commands(USAGE) + transcripts, key=lambda command: command.line)
    result = walk(
        commands,
        served_gateway,
        USAGE_SKIPPED,
        substitutions={DEFAULT_TARGET: served_gateway.target},
        # The doc: input refused before any call prints one `error: ...` line, exit status 2.
        expected_status=lambda c: 2 if c.output and c.output[0].startswith("error:") else 0,
    )
    assert not result.failures, "\n\n".join(result.failures)
    assert len(result.ran) >= 6, result.ran

    # The table shown for those eleven calls: the synopsis without its optional parts.
    (table,) = [b for b in blocks(USAGE, "text") if b.text.startswith("Usage, ")]
    command = Command("gemini-gateway usage --group-by labels.team,model --since 7d", table.line)
    command.output = table.text.splitlines()
    outcome = run_command(command.text, served_gateway.scratch, served_gateway.env)
    problems = check_command(command, outcome, served_gateway.scratch)
    assert not problems, "\n".join(problems)
    printed = _table_rows(outcome.output.splitlines())
    assert printed == _table_rows(command.output), outcome.output


def _generate_status(url: str) -> int:
    body = json.dumps({"contents": [{"parts": [{"text": "Hello"}]}]}).encode()
    request = urllib.request.Request(
        f"{url}/v1beta/models/gemini-2.5-flash:generateContent",
        data=body,
        headers={"content-type": "application/json"},
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return int(response.status)
    except urllib.error.HTTPError as exc:
        return exc.code


def test_emulator_commands(tmp_path: Path) -> None:
    scratch = mirror(tmp_path)
    env = clean_env(scratch)
    commands = doc_commands(EMULATOR)
    assert commands, "docs/emulator.md shows no command"
    for number, command in enumerate(commands):
        assert command.first_line.startswith(EMULATOR_COMMAND), (
            f"docs/emulator.md:{command.line}: not run: only {EMULATOR_COMMAND!r} commands are"
        )
        port = str(free_port())
        log = scratch / f"emulator-{number}.log"
        with log.open("wb") as out:
            # exec: the shell becomes the emulator, which gets Ctrl-C's SIGINT itself.
            process = subprocess.Popen(
                ["/bin/sh", "-c", "exec " + command.text.replace("8081", port)], cwd=scratch,
                env=env, stdout=out, stderr=subprocess.STDOUT,
            )  # fmt: skip
        try:
            url = wait_for_text(log, re.compile(r"listening on (http://\S+)"), process).group(1)
            shown = inline_comment(command).removeprefix("prints:").strip().replace("8081", port)
            if shown:
                assert shown in log.read_text(), (command.first_line, log.read_text())
            fault = re.search(r"--fault (\d{3})\b", command.text)
            assert _generate_status(url) == (int(fault.group(1)) if fault else 200), command.text
        finally:
            status = stop(process, signal.SIGINT)
        assert status == 0, (command.first_line, status, log.read_text())


def test_polyglot_commands(served_gateway: ServedGateway) -> None:
    result = walk(
        doc_commands(POLYGLOT),
        served_gateway,
        POLYGLOT_SKIPPED,
        substitutions={DEFAULT_TARGET: served_gateway.target},
    )
    assert not result.failures, "\n\n".join(result.failures)
    assert result.ran, "docs/polyglot.md shows no command"
    stubs = served_gateway.scratch / "gen" / "node"
    assert (stubs / "es").is_dir(), "npx buf generate wrote no gen/node/es/"
    # The doc: the directory holding the stubs needs a package.json with "type": "module".
    (stubs / "package.json").write_text('{"type": "module"}\n')

    snippets = []
    for block in blocks(POLYGLOT, "js"):
        named = [n for n in NAMED_SCRIPT.findall(block.before + block.text) if (ROOT / n).is_file()]
        if named:  # a program in the repository, which the doc's commands run
            assert block.text == (ROOT / named[0]).read_text(), f"{block.where} != {named[0]}"
        else:
            snippets.append(block)
    assert snippets, "docs/polyglot.md shows no Connect client"
    node = shutil.which("node")
    assert node, "node is not on PATH"
    for number, block in enumerate(snippets):
        script = served_gateway.scratch / f"snippet-{number}.mjs"
        script.write_text(
            block.text.replace(f"http://{DEFAULT_TARGET}", f"http://{served_gateway.target}")
            + "console.log(JSON.stringify(answer.candidates[0].content.parts[0].data));\n"
        )
        done = subprocess.run(
            [node, script], cwd=served_gateway.scratch, env=served_gateway.env,
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert done.returncode == 0, f"{block.where}:\n{done.stdout}{done.stderr}"
        part = json.loads(done.stdout.splitlines()[-1])
        assert part["case"] == "text" and part["value"].startswith("Echo: Hello"), done.stdout


def test_benchmark_commands_are_accounted_for() -> None:
    commands = doc_commands(BENCHMARKS)
    unmatched = [
        c.first_line
        for c in commands
        if not any(c.first_line.startswith(key) for key in BENCHMARKS_SKIPPED)
    ]
    assert not unmatched, f"docs/benchmarks.md commands no test runs or skips: {unmatched}"
    stale = [k for k in BENCHMARKS_SKIPPED if not any(c.first_line.startswith(k) for c in commands)]
    assert not stale, f"skip entries that match no command: {stale}"


def test_logs_walkthrough(served_gateway: ServedGateway) -> None:
    _activate_venv(served_gateway)
    result = walk(
        doc_commands(LOGS),
        served_gateway,
        {},
        substitutions={DEFAULT_TARGET: served_gateway.target},
    )
    assert not result.failures, "\n\n".join(result.failures)
    for expected in ("logs list", "datasets export", "datasets tune", "datasets rerun", "buf curl"):
        assert any(expected in line for line in result.ran), (expected, result.ran)
