"""The README's shell commands, run as a user would after the two set-up commands.

Every command of every ```sh block in README.md runs through /bin/sh, in order, in a scratch
folder that mirrors the checkout, against a gateway started the way `make serve` starts it
(`.venv/bin/gemini-gateway serve --emulator`) but on a free loopback port (`--port 0`). The
commands reach it unchanged: the CLI reads the address from `GEMINI_GATEWAY_TARGET` (set to
the gateway's), and `127.0.0.1:50051` in the text of a command (buf curl, grpcurl) is replaced
by that address. Each must exit 0, print the key words of the output the README shows under
it (`#   ...` lines: words with two letters in a row; counts, dates and times vary), and
write the file it names (`--out`, `>`). Only the CLI (not `serve`), `npx buf`, `grpcurl` and
`node` are ever run: any other command not listed below fails the test instead of running.

Not run:

- `make serve`: runs until stopped; the gateway above is what it starts.
- `make test`: the whole suite, this test included.
- `grpcurl ...`, only when grpcurl is not installed (not a skip: nothing to run it with).
- The three `serve` commands under "Against the real APIs": they need a Gemini API key or
  Google credentials and the network.
- The commands of the "Development" section: they are for working on the gateway, and either
  rewrite files of the checkout (`make generate`, and the like that refresh baselines and
  golden files), are steps of `make test`, which runs them (`make lint`,
  `make check-migrations`), or take minutes (`make bench`, docs/benchmarks.md).
"""

from __future__ import annotations

import shutil

from tests.docs.conftest import ServedGateway, walk
from tests.docs.markdown import ROOT, blocks, sh_commands

README = ROOT / "README.md"
DEFAULT_TARGET = "127.0.0.1:50051"

SKIPPED = {
    "make serve": "runs until stopped; the test starts the same gateway itself",
    "make test": "the whole suite, this test included",
    "GEMINI_API_KEY=... .venv/bin/gemini-gateway serve": "needs a Gemini API key",
    ".venv/bin/gemini-gateway serve --upstream https://": "needs callers' Gemini API keys",
    "GEMINI_GATEWAY_VERTEX_PROJECT=my-project": "needs Google credentials",
}
SKIPPED_SECTIONS = {"Development"}


def test_readme_commands(served_gateway: ServedGateway) -> None:
    # What `make serve` prints: how to call the gateway.
    printed = served_gateway.log.read_text()
    assert f"listening on {served_gateway.target}" in printed, printed
    assert "gemini-gateway generate" in printed, printed

    commands = [
        command
        for block in blocks(README, "sh")
        if block.heading not in SKIPPED_SECTIONS
        for command in sh_commands(block)
    ]
    skipped = dict(SKIPPED)
    if shutil.which("grpcurl") is None:
        skipped["grpcurl"] = "grpcurl is not installed"
    result = walk(
        commands, served_gateway, skipped, substitutions={DEFAULT_TARGET: served_gateway.target}
    )
    assert not result.failures, "\n\n".join(result.failures)
    # The walk reached the sections a user follows: calls, buf curl, usage, tuning.
    for expected in ("gemini-gateway generate", "npx buf curl", "usage chart", "tune create"):
        assert any(expected in line for line in result.ran), (expected, result.ran)
