"""`python -m gemini_gateway.emulator --port 8081`: serve the emulated Gemini API."""

from __future__ import annotations

import argparse
from typing import Any

from gemini_gateway.emulator.runner import run_emulator
from gemini_gateway.emulator.settings import EmulatorSettings


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m gemini_gateway.emulator",
        description="Emulate Google's Gemini REST API locally.",
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8081)
    parser.add_argument("--chunk-count", type=int, help="chunks per streamed response")
    parser.add_argument("--chunk-delay-ms", type=float, help="pause between streamed chunks")
    parser.add_argument("--headers-delay-ms", type=float, help="pause before response headers")
    parser.add_argument("--fault", help="fault list applied to every generate request")
    parser.add_argument("--api-key", help="require this API key")
    parser.add_argument("--tuning-seconds", type=float, help="duration of a tuning job")
    parser.add_argument("--seed", type=int)
    args = parser.parse_args(argv)
    # Flags override GEMINI_EMULATOR_* variables; unset flags leave those in force.
    overrides: dict[str, Any] = {
        name: value
        for name, value in vars(args).items()
        if name not in ("host", "port") and value is not None
    }
    run_emulator(args.host, args.port, EmulatorSettings(**overrides))


if __name__ == "__main__":
    main()
