"""`generate` / `stream` refuse bad labels and empty prompts before any call is made.

Every command here targets a closed port: a refusal exits 2 with one `error:` line; an input
that passes the checks goes on to the call and fails UNAVAILABLE (exit 1) instead.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from typer.testing import CliRunner

from gemini_gateway.cli.main import app
from gemini_gateway.server.labels import MAX_LABELS

CLOSED = "127.0.0.1:1"
COMMANDS = ["generate", "stream"]


def run(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(app, [*args, "--target", CLOSED])
    return result.exit_code, result.stderr


def labels(*pairs: str) -> list[str]:
    return [arg for pair in pairs for arg in ("--label", pair)]


def one_line(stderr: str) -> str:
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, stderr
    return lines[0]


REFUSED = {
    "empty key": (["=x"], ["--label '=x'", "key must not be empty"]),
    "space and uppercase": (
        ["Team Name=x"],
        ["--label 'Team Name=x'", "must start with a lowercase letter", "(not 'T', ' ', 'N')"],
    ),
    "uppercase value": (["team=Search"], ["value 'Search'", "lowercase letters"]),
    "starts with a digit": (["1team=x"], ["key '1team' must start with"]),
    "no equals sign": (["novalue"], ["'novalue' must be written key=value"]),
    "64-character value": (["team=" + "v" * 64], ["must be at most 63 characters (has 64)"]),
    "repeated key": (["team=a", "team=b"], ["label key 'team' is given more than once"]),
    "decomposed accent": (["e\u0301quipe=x"], ["must contain only", "(not '\u0301')"]),
    "65 labels": (
        [f"k{i}=v" for i in range(MAX_LABELS + 1)],
        [f"at most {MAX_LABELS} labels are allowed per call (got {MAX_LABELS + 1})"],
    ),
}


@pytest.mark.parametrize("command", COMMANDS)
@pytest.mark.parametrize(("given", "words"), REFUSED.values(), ids=REFUSED.keys())
def test_bad_labels_exit_2_with_one_line_naming_the_rule(
    command: str, given: list[str], words: list[str]
) -> None:
    code, stderr = run(command, "hello", *labels(*given))
    assert code == 2
    line = one_line(stderr)
    assert line.startswith("error: --label")
    for word in words:
        assert word in line


def test_a_huge_label_is_quoted_short() -> None:
    code, stderr = run("generate", "hello", "--label", "team=" + "x" * 5000)
    assert code == 2
    assert len(one_line(stderr)) < 300


ACCEPTED = {
    "plain": ["team=search", "env=prod"],
    "empty value": ["team="],
    "international letters": ["équipe=東京", "команда=поиск"],
    "value holding '='": ["expr=a-b"],
    "64 labels": [f"k{i}=v" for i in range(MAX_LABELS)],
}


@pytest.mark.parametrize("given", ACCEPTED.values(), ids=ACCEPTED.keys())
def test_good_labels_go_on_to_the_call(given: list[str]) -> None:
    code, stderr = run("generate", "hello", *labels(*given))
    assert code == 1  # the closed port, reported as a gRPC status
    assert one_line(stderr).startswith("UNAVAILABLE: ")


@pytest.mark.parametrize("command", COMMANDS)
@pytest.mark.parametrize("prompt", ["", "   ", "\n"], ids=["empty", "spaces", "newline"])
def test_empty_prompt_is_refused(command: str, prompt: str) -> None:
    code, stderr = run(command, prompt, "--label", "team=search")
    assert code == 2
    assert one_line(stderr) == "error: the prompt is empty: give the text to send"


def test_refusal_from_the_installed_command_has_no_traceback() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "gemini_gateway.cli", "generate", "hi", "--label", "Team Name=x"],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "COLUMNS": "60"},  # narrow: the line must not be wrapped
    )
    assert result.returncode == 2
    line = one_line(result.stderr)
    assert "Traceback" not in result.stderr
    assert line.startswith("error: --label 'Team Name=x': key 'Team Name' must start")
    assert result.stdout == ""
