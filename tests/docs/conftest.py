"""Real processes on loopback ports for the docs' commands and examples.

Commands run in a scratch folder that mirrors the checkout with symbolic links (so `.venv/`,
`docs/examples/`, `node_modules/` resolve as in the checkout) while the files they write
(`cost.csv`, `usage.png`, `gen/`...) land in the scratch folder, never in the checkout.
"""

from __future__ import annotations

import os
import re
import shlex
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.docs.markdown import (
    DOCS,
    ROOT,
    Command,
    blocks,
    doc_commands,
    is_transcript,
    missing_words,
    transcript_commands,
)

# Not mirrored: version control and a configuration file the gateway would read; and what
# the docs' commands write, so that it is never written through a link into the checkout.
NOT_MIRRORED = {".git", "gateway.toml"}
WRITES = re.compile(r"(?:--out|--output|>)\s+([^\s;&|]+)")
# Programs the walks run: the CLI (not `serve`), buf, grpcurl and node.
RUNNABLE = (
    ".venv/bin/gemini-gateway ",
    "gemini-gateway ",
    "npx buf",
    "grpcurl ",
    "node ",
)
LISTENING = re.compile(r"listening on (127\.0\.0\.1:\d+)")
COMMAND_TIMEOUT_S = 60


def written_by_docs() -> set[str]:
    """Top-level names that commands in the docs write (`cost.csv`, `gen`...)."""
    commands = [command for doc in DOCS for command in doc_commands(doc)]
    commands += [
        command
        for doc in DOCS
        for block in blocks(doc, "text")
        if is_transcript(block)
        for command in transcript_commands(block)
    ]
    return {Path(written).parts[0] for c in commands for written in WRITES.findall(c.text)}


def mirror(scratch: Path) -> Path:
    skipped = NOT_MIRRORED | written_by_docs()
    for entry in ROOT.iterdir():
        if entry.name not in skipped:
            (scratch / entry.name).symlink_to(entry, target_is_directory=entry.is_dir())
    return scratch


def clean_env(scratch: Path, **extra: str) -> dict[str, str]:
    """The caller's environment without gateway settings, and a store in `scratch`.

    `NPM_CONFIG_OFFLINE` keeps `npx` to node_modules/ (it never downloads); `COLUMNS` gives
    rich tables a wide terminal, as a user's would be, so cells are not wrapped.
    """
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("GEMINI_", "GOOGLE_")) and key != "VIRTUAL_ENV"
    }
    env.update(
        GEMINI_GATEWAY_STORE_URL=f"sqlite+aiosqlite:///{scratch}/gateway.db",
        GEMINI_GATEWAY_CONFIG=str(scratch / "no-gateway.toml"),
        NPM_CONFIG_OFFLINE="true",
        NPM_CONFIG_UPDATE_NOTIFIER="false",
        COLUMNS="200",
        **extra,
    )
    return env


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def wait_for_text(path: Path, pattern: re.Pattern[str], process: subprocess.Popen[bytes],
                  timeout: float = 30) -> re.Match[str]:  # fmt: skip
    """The first match of `pattern` in the growing file `path`, while `process` runs."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        match = pattern.search(path.read_text(errors="replace"))
        if match:
            return match
        if process.poll() is not None:
            break
        time.sleep(0.05)
    raise AssertionError(f"no {pattern.pattern!r} within {timeout} s:\n{path.read_text()}")


def stop(process: subprocess.Popen[bytes], sig: int = signal.SIGINT) -> int:
    """Stop a process we started, as Ctrl-C would; kill it if it does not end in 15 s."""
    if process.poll() is None:
        process.send_signal(sig)
        try:
            process.wait(15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(5)
    return process.returncode


@dataclass
class ServedGateway:
    """`.venv/bin/gemini-gateway serve --emulator --port 0` running in a scratch folder."""

    scratch: Path
    env: dict[str, str]
    target: str
    log: Path


@pytest.fixture
def served_gateway(tmp_path: Path) -> Iterator[ServedGateway]:
    scratch = mirror(tmp_path)
    env = clean_env(scratch)
    log = scratch / "serve.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            [".venv/bin/gemini-gateway", "serve", "--emulator", "--port", "0"],
            cwd=scratch, env=env, stdout=out, stderr=subprocess.STDOUT,
        )  # fmt: skip
    try:
        target = wait_for_text(log, LISTENING, process).group(1)
        env["GEMINI_GATEWAY_TARGET"] = target
        yield ServedGateway(scratch, env, target, log)
    finally:
        status = stop(process)
    assert status == 0, f"gateway exited with {status}:\n{log.read_text()}"


@dataclass
class Outcome:
    command: str
    status: int
    output: str


def run_command(text: str, cwd: Path, env: dict[str, str]) -> Outcome:
    """One command, through /bin/sh as a user's shell would run it.

    It runs in a session of its own: on a timeout the whole group (the shell and what it
    started) is killed, so nothing it started outlives the test.
    """
    process = subprocess.Popen(
        ["/bin/sh", "-c", text], cwd=cwd, env=env, stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT, text=True, start_new_session=True,
    )  # fmt: skip
    try:
        output, _ = process.communicate(timeout=COMMAND_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        output, _ = process.communicate()
        return Outcome(text, -1, f"{output}\ntimed out after {COMMAND_TIMEOUT_S} s")
    return Outcome(text, process.returncode, output)


def not_runnable(command: Command) -> str | None:
    """Why the docs tests must not run `command` (None: they may).

    Only programs that call a gateway or write into the scratch folder run; anything else (a
    `make` target, `npm ci`, a server that runs until stopped, a chain of commands) could
    change the checkout or the shared environment, so it must be listed as skipped instead.
    """
    try:
        lexer = shlex.shlex(command.text, posix=True, punctuation_chars=True)
        lexer.whitespace_split = True
        lexer.commenters = "#"
        words = list(lexer)
    except ValueError as exc:
        return f"cannot be split into words: {exc}"
    if any(word in {"&&", "||", ";", "|", "&"} for word in words):
        return "a chain of commands"
    program = " ".join(words[:2])
    if not any(program.startswith(prefix) for prefix in RUNNABLE):
        return f"runs {words[0]!r}, which the docs tests do not run"
    if program.endswith(("gemini-gateway serve", "gemini-gateway emulator")):
        return "runs until stopped"
    if program == "npx buf" and words[2] == "generate" and "--output" not in words:
        return "buf generate without --output writes into the checkout"
    return None


def check_command(command: Command, outcome: Outcome, cwd: Path, status: int = 0) -> list[str]:
    """What is wrong with a run of `command` (nothing when it did what the doc shows).

    Besides the exit status and the shown output, what the command writes (`--out FILE`,
    `--output DIR`, `> FILE`) must exist and not be empty.
    """
    problems = []
    if outcome.status != status:
        problems.append(f"exit status {outcome.status}, expected {status}")
    missing = missing_words(command.output, outcome.output)
    if missing:
        problems.append(f"the output lacks {missing}, shown in the doc")
    if outcome.status == 0:
        for written in WRITES.findall(command.text):
            path = cwd / written
            written_something = (path.is_file() and path.stat().st_size > 0) or (
                path.is_dir() and any(path.iterdir())
            )
            if not written_something:
                problems.append(f"{written} was not written")
    return [
        f"line {command.line}: {command.first_line!r}: {problem}\n{outcome.output}"
        for problem in problems
    ]


@dataclass
class Walk:
    """What became of each command of a doc."""

    ran: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)


def walk(
    commands: list[Command],
    gateway: ServedGateway,
    skipped: dict[str, str],
    *,
    substitutions: dict[str, str] | None = None,
    expected_status: Callable[[Command], int] = lambda command: 0,
) -> Walk:
    """Run `commands` in order against `gateway`, except those whose first line starts with
    a key of `skipped`; every key must match a command, so the list cannot go stale."""
    result = Walk()
    unused = set(skipped)
    for command in commands:
        reason = next((r for key, r in skipped.items() if command.first_line.startswith(key)), None)
        if reason is not None:
            unused -= {key for key in skipped if command.first_line.startswith(key)}
            result.skipped.append(f"{command.first_line} ({reason})")
            continue
        refused = not_runnable(command)
        if refused is not None:
            result.failures.append(
                f"line {command.line}: {command.first_line!r}: not run: {refused}; run it "
                "another way or list it, with the reason, among the test's skipped commands"
            )
            continue
        text = command.text
        for old, new in (substitutions or {}).items():
            text = text.replace(old, new)
        outcome = run_command(text, gateway.scratch, gateway.env)
        result.ran.append(command.first_line)
        result.failures += check_command(
            command, outcome, gateway.scratch, expected_status(command)
        )
    assert not unused, f"skip entries that match no command: {sorted(unused)}"
    return result
