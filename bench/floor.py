"""`python -m bench.floor`: what the libraries the gateway is built on cost per call, beside
the gateway, under the load the CPU target is judged with.

Three servers, each its own process, take turns in interleaved rounds under the same load:
h2load posting the bench's unary GenerateContent frame on 64 connections, one call each at a
time, to a server whose upstream is nginx returning the emulator's answer (as in the
workers phase of `python -m bench`):

- `grpc.aio, fixed answer`: a grpc.aio server on uvloop answering every call with one
  prepared GenerateContentResponse; no upstream. The gRPC framework alone;
- `grpc.aio + aiohttp`: the same server whose handler first POSTs a prepared JSON body to
  nginx with one shared aiohttp session and reads the answer (no JSON made or parsed): the
  least a grpc.aio-to-aiohttp forwarder can cost;
- `gateway`: `gemini-gateway serve --workers 1`, default settings (usage recording on).

The CPU per call is each server's own (all its threads, from /proc) over its blocks,
divided by the calls; h2load's throughput is shown beside it. The gateway's CPU target
(issue 11: at most 350 µs per forwarded unary call) is printed against the second row, the
floor of any forwarder built on these two libraries.

    python -m bench.floor [--requests 8000] [--rounds 6]

It needs h2load and nginx (`apt-get install nghttp2-client nginx-light`). The servers
themselves are this module run as `python -m bench.floor --serve KIND PORT UPSTREAM`.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
from dataclasses import dataclass, field

from rich.console import Console
from rich.table import Table

from bench.processes import (
    Service,
    Services,
    find_tool,
    free_port,
    tree_cpu_seconds,
    wait_emulator_ready,
    wait_gateway_ready,
)
from bench.scaling import H2Load, _emulator_answer, _settle

CONCURRENCY = 64
TARGET_CPU_US = 350
INSTALL = "apt-get install nghttp2-client nginx-light"
FIXED = "grpc.aio, fixed answer"
FORWARDER = "grpc.aio + aiohttp"
GATEWAY = "gateway"


# --- the servers (run in their own processes) -------------------------------------------------


async def _serve(kind: str, port: int, upstream: str) -> None:
    import aiohttp
    import grpc
    from grpc_health.v1 import health, health_pb2, health_pb2_grpc

    from bench.measure import LABELS, MODEL, UNARY_PROMPT
    from gemini_gateway.generated.google.ai.generativelanguage.v1beta import (
        generative_service_pb2,
        generative_service_pb2_grpc,
    )

    answer = generative_service_pb2.GenerateContentResponse()
    answer.candidates.add().content.parts.add(text="Hello from the floor.")
    url = f"{upstream}/v1beta/models/{MODEL}:generateContent"
    contents = [{"role": "user", "parts": [{"text": UNARY_PROMPT}]}]
    body = json.dumps({"contents": contents, "labels": LABELS}).encode()  # as the gateway's
    session: aiohttp.ClientSession | None = None

    class Servicer(generative_service_pb2_grpc.GenerativeServiceServicer):
        async def GenerateContent(self, request: object, context: object) -> object:
            if kind == "forwarder":
                assert session is not None
                async with session.post(
                    url, data=body, headers={"content-type": "application/json"}
                ) as response:
                    await response.read()
            return answer

    if kind == "forwarder":
        session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=256))
    server = grpc.aio.server()
    generative_service_pb2_grpc.add_GenerativeServiceServicer_to_server(Servicer(), server)
    checks = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(checks, server)
    server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    await checks.set("", health_pb2.HealthCheckResponse.SERVING)
    await server.wait_for_termination()


# --- the measurement ----------------------------------------------------------------------------


@dataclass
class Figures:
    cpu_us: list[float] = field(default_factory=list)  # per round
    rps: list[float] = field(default_factory=list)


async def _measure(requests: int, rounds: int, console: Console) -> dict[str, Figures]:
    h2load, nginx = find_tool("h2load"), find_tool("nginx")
    if h2load is None or nginx is None:
        raise SystemExit(
            "bench.floor needs h2load and nginx: apt-get install nghttp2-client nginx-light"
        )
    with Services() as services:
        emulator = services.start_emulator()
        wait_emulator_ready(emulator)
        upstream = services.start_fixed_upstream(nginx, _emulator_answer(emulator))
        wait_emulator_ready(upstream)
        servers: dict[str, Service] = {}
        for name, kind in ((FIXED, "fixed"), (FORWARDER, "forwarder")):
            port = free_port()
            args = ["-m", "bench.floor", "--serve", kind, str(port), upstream.url]
            servers[name] = services.start_python(kind, args, port)
        servers[GATEWAY] = services.start_gateway("gateway", "aiohttp", upstream.url)
        for server in servers.values():
            wait_gateway_ready(server)
        load = H2Load(h2load, services, CONCURRENCY)
        for server in servers.values():  # warm-up: pools filled, code paths hot
            await load.run(server.target, max(500, requests // 4))
        figures = {name: Figures() for name in servers}
        names = list(servers)
        for round_index in range(rounds):
            turn = round_index % len(names)
            for name in names[turn:] + names[:turn]:
                server = servers[name]
                before = tree_cpu_seconds(server.pid)
                run = await load.run(server.target, requests)
                if run.error:
                    raise SystemExit(f"{name}: {run.error}")
                if name == GATEWAY:  # its CPU includes writing the block's usage events
                    await _settle(server)
                figures[name].cpu_us.append(
                    (tree_cpu_seconds(server.pid) - before) / requests * 1e6
                )
                figures[name].rps.append(requests / run.seconds)
            console.print(f"round {round_index + 1}/{rounds} done")
    return figures


def _report(figures: dict[str, Figures], console: Console) -> None:
    table = Table(title=f"CPU per unary call, h2load c={CONCURRENCY}, nginx upstream")
    for column in ("server", "CPU per call (µs), median", "per round", "throughput (req/s)"):
        table.add_column(column, justify="left" if column == "server" else "right")
    for name, data in figures.items():
        table.add_row(
            name,
            f"{statistics.median(data.cpu_us):.0f}",
            f"{min(data.cpu_us):.0f} … {max(data.cpu_us):.0f}",
            f"{statistics.median(data.rps):.0f}",
        )
    console.print(table)
    floor = statistics.median(figures[FORWARDER].cpu_us)
    gateway = statistics.median(figures[GATEWAY].cpu_us)
    verdict = "below" if floor <= TARGET_CPU_US else "above"
    console.print(
        f"target {TARGET_CPU_US} µs per forwarded call: the floor ({FORWARDER}) is {floor:.0f} "
        f"µs, {verdict} it; the gateway is {gateway:.0f} µs, "
        f"{gateway - floor:+.0f} µs over the floor"
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m bench.floor", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--requests", type=int, default=8000, help="calls per block")
    parser.add_argument("--rounds", type=int, default=6, help="interleaved rounds")
    parser.add_argument(
        "--serve", nargs=3, metavar=("KIND", "PORT", "UPSTREAM"), help=argparse.SUPPRESS
    )
    args = parser.parse_args(argv)
    if args.serve:
        import uvloop

        kind, port, upstream = args.serve
        uvloop.run(_serve(kind, int(port), upstream))
        return
    console = Console()
    _report(asyncio.run(_measure(args.requests, args.rounds, console)), console)


if __name__ == "__main__":
    main(sys.argv[1:])
