"""A real `gemini-gateway` command in a subprocess, its output read for the whole test.

`launch` starts it and a thread that keeps its pipe drained (a full pipe would block the
gateway) and notes the address of the "listening on" banner; `wait_ready` waits for the line
that says it serves; `stop` sends SIGTERM, kills it if it does not end, and reads its
output to the end.
"""

from __future__ import annotations

import re
import signal
import subprocess
import sys
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

CLI = [sys.executable, "-m", "gemini_gateway.cli"]
_LISTENING = re.compile(r"Gemini gRPC gateway listening on (\S+)")


def _listening(line: str) -> bool:
    return _LISTENING.search(line) is not None


@dataclass
class ServedCommand:
    process: subprocess.Popen[str]
    output: list[str] = field(default_factory=list)
    target: str = ""  # from the banner
    ready: threading.Event = field(default_factory=threading.Event)
    reader: threading.Thread | None = None

    @property
    def text(self) -> str:
        return "".join(self.output)


def launch(
    args: list[str],
    env: Mapping[str, str],
    cwd: Path,
    ready_when: Callable[[str], bool] = _listening,
) -> ServedCommand:
    """Start `gemini-gateway ARGS`; it is ready at the first line `ready_when` accepts."""
    process = subprocess.Popen(
        [*CLI, *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        cwd=cwd,
        env=dict(env),
    )
    served = ServedCommand(process)

    def read() -> None:  # until the process ends
        assert process.stdout is not None
        for line in process.stdout:
            served.output.append(line)
            found = _LISTENING.search(line)
            if found:
                served.target = found.group(1)
            if ready_when(line):
                served.ready.set()

    served.reader = threading.Thread(target=read, daemon=True)
    served.reader.start()
    return served


def wait_ready(served: ServedCommand, timeout_s: float = 60.0) -> None:
    if not served.ready.wait(timeout_s):
        served.process.kill()
        raise AssertionError("the gateway did not start:\n" + served.text)


def stop(served: ServedCommand, timeout_s: float = 15.0) -> None:
    """End the process; its whole output is in `served.output` afterwards."""
    if served.process.poll() is None:
        served.process.send_signal(signal.SIGTERM)
        try:
            served.process.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            served.process.kill()
            served.process.wait()
    if served.reader is not None:
        served.reader.join(timeout_s)
