"""TailLogs across replicas: two gateway processes share one PostgreSQL database, and a tail
opened on one receives the logs of calls made through the other (LISTEN/NOTIFY).

Each gateway is the real `gemini-gateway serve --emulator` command in a subprocess on
loopback, with request logging switched on by its environment.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import grpc
import pytest

from gemini_gateway.client.gateway_client import text_request
from gemini_gateway.generated.gemini.gateway.v1 import logs_pb2, logs_pb2_grpc
from gemini_gateway.generated.google.ai.generativelanguage.v1beta import (
    generative_service_pb2_grpc,
)
from gemini_gateway.server.log_event import parse_log_name
from tests.integration.served_command import ServedCommand, launch, stop, wait_ready
from tests.postgres import PostgresAdmin, require

pytestmark = pytest.mark.postgres

MODEL = "gemini-2.5-flash"
START_TIMEOUT_S = 60
# Guards against a hang only: a log crosses replicas in well under a second.
LOG_WAIT_S = 20.0
# How long one warm-up call waits for its log before the next is made (see `_follow`).
WARM_UP_WAIT_S = 2.0


def _env(folder: Path, store_url: str) -> dict[str, str]:
    """The environment minus the user's gateway and Google settings, plus this test's."""
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("GEMINI_GATEWAY_", "GOOGLE_", "GCLOUD_", "CLOUDSDK_"))
    }
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    env.update(
        PYTHONUNBUFFERED="1",
        GEMINI_GATEWAY_STORE_URL=store_url,
        GEMINI_GATEWAY_LOGGING_ENABLED="true",
        CLOUDSDK_CONFIG=str(folder / "gcloud"),
        NO_GCE_CHECK="true",
    )
    return env


@pytest.fixture(scope="module")
async def store_url(postgres: PostgresAdmin) -> str:
    require(postgres)
    return postgres.url(await postgres.create())


@pytest.fixture(scope="module")
def replicas(
    tmp_path_factory: pytest.TempPathFactory, store_url: str
) -> Iterator[list[ServedCommand]]:
    """Gateways A and B, started together on the same (empty) database."""
    folders = [tmp_path_factory.mktemp(name) for name in ("a", "b")]
    started = [
        launch(["serve", "--emulator", "--port", "0"], _env(folder, store_url), folder)
        for folder in folders
    ]
    try:
        for replica in started:
            wait_ready(replica, START_TIMEOUT_S)
        yield started
    finally:
        for replica in started:
            stop(replica)


class Tail:
    """A TailLogs stream read by a background task into a queue."""

    def __init__(self, call: grpc.aio.UnaryStreamCall) -> None:
        self.call = call
        self.logs: asyncio.Queue[logs_pb2.Log] = asyncio.Queue()
        self._reader = asyncio.create_task(self._read())

    async def _read(self) -> None:
        async for response in self.call:
            self.logs.put_nowait(response.log)

    async def next(self, wait_s: float = LOG_WAIT_S) -> logs_pb2.Log:
        """The next log; the stream's error if it ended; TimeoutError after `wait_s`."""
        getter = asyncio.ensure_future(self.logs.get())
        await asyncio.wait({getter, self._reader}, timeout=wait_s, return_when="FIRST_COMPLETED")
        if getter.done():
            return getter.result()
        getter.cancel()
        if self._reader.done():
            self._reader.result()  # raises the stream's error
            raise AssertionError("the TailLogs stream ended")
        raise TimeoutError

    async def close(self) -> None:
        self.call.cancel()
        with contextlib.suppress(asyncio.CancelledError, grpc.aio.AioRpcError):
            await self._reader


@contextlib.asynccontextmanager
async def _channel(target: str) -> AsyncIterator[grpc.aio.Channel]:
    async with grpc.aio.insecure_channel(target) as channel:
        yield channel


async def _generate(channel: grpc.aio.Channel, prompt: str) -> str:
    stub = generative_service_pb2_grpc.GenerativeServiceStub(channel)
    response = await stub.GenerateContent(text_request(MODEL, prompt), timeout=10)
    return response.candidates[0].content.parts[0].text


async def _follow(tail: Tail, own_channel: grpc.aio.Channel) -> None:
    """Return once `tail` is live: one of its own gateway's calls has reached it.

    The stream is subscribed on the server some moment after the call starts; a call made
    before that moment is not tailed, so warm-up calls are repeated until one arrives.
    """
    for attempt in range(int(LOG_WAIT_S / WARM_UP_WAIT_S)):
        await _generate(own_channel, f"warm-up {attempt}")
        with contextlib.suppress(TimeoutError):
            await tail.next(WARM_UP_WAIT_S)
            return
    raise AssertionError("the tail never showed its own gateway's calls")


async def _next_log(tail: Tail) -> logs_pb2.Log:
    """The next log on `tail` that is not a warm-up call's."""
    while True:
        log = await tail.next()
        if not log.prompt_preview.startswith("warm-up"):
            return log


async def test_a_tail_on_one_gateway_receives_the_calls_of_another(
    replicas: list[ServedCommand],
) -> None:
    a, b = replicas
    async with _channel(a.target) as on_a, _channel(b.target) as on_b:
        tail = Tail(logs_pb2_grpc.LogServiceStub(on_a).TailLogs(logs_pb2.TailLogsRequest()))
        try:
            await _follow(tail, on_a)

            answer = await _generate(on_b, "through gateway B")
            log = await _next_log(tail)
            assert log.prompt_preview == "through gateway B"
            assert log.response_preview == answer
            assert (log.model, log.method, log.status.code) == (
                f"models/{MODEL}",
                "GenerateContent",
                grpc.StatusCode.OK.value[0],
            )
            assert parse_log_name(log.name) is not None
            assert parse_log_name(log.name)[0] == "default"  # type: ignore[index]
            # B wrote it to the shared store: B reads the same log back.
            on_b_logs = logs_pb2_grpc.LogServiceStub(on_b)
            stored = await on_b_logs.GetLog(logs_pb2.GetLogRequest(name=log.name), timeout=10)
            assert stored.prompt_preview == "through gateway B"

            # Each log once, in order, wherever it was written.
            await _generate(on_a, "then through gateway A")
            assert (await _next_log(tail)).prompt_preview == "then through gateway A"
            await _generate(on_b, "and through gateway B again")
            assert (await _next_log(tail)).prompt_preview == "and through gateway B again"
            leftover = [tail.logs.get_nowait() for _ in range(tail.logs.qsize())]
            assert all(log.prompt_preview.startswith("warm-up") for log in leftover)
        finally:
            await tail.close()
