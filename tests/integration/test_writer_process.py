"""The gateway's store writer process: started with the gateway as its own child, it writes
every call's usage event and log, and what was recorded is written before it ends with the
gateway. None for an in-memory store, or with `writer_process` off: the gateway then writes
them itself.
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path
from typing import Any

import grpc
import pytest
import sqlalchemy as sa

from gemini_gateway.client.gateway_client import text_request
from gemini_gateway.emulator.runner import EmulatorHandle
from gemini_gateway.generated.google.ai.generativelanguage.v1beta import (
    generative_service_pb2_grpc,
)
from gemini_gateway.server.app import Gateway, start_gateway
from gemini_gateway.server.config import Settings
from gemini_gateway.server.store import open_store
from gemini_gateway.server.store.log_tables import RequestLog
from gemini_gateway.server.store.models import UsageEventRow

FLASH = "models/gemini-2.5-flash"


async def start(emulator: EmulatorHandle, store_url: str, **extra: Any) -> Gateway:
    return await start_gateway(
        Settings(
            upstream="emulator",
            upstream_url=emulator.url,
            port=0,
            store_url=store_url,
            logging_enabled=True,
            console_port=None,
            **{"writer_process": True, **extra},
        )
    )


async def call(gateway: Gateway, count: int, run: str) -> None:
    """`count` unary calls and one stream, at once, all labelled `run`."""
    async with grpc.aio.insecure_channel(gateway.target) as channel:
        stub = generative_service_pb2_grpc.GenerativeServiceStub(channel)
        request = text_request(FLASH, "hello", {"run": run})
        stream = text_request(FLASH, "[[chunks:3]] hello", {"run": run})

        async def read_stream() -> None:
            async for _chunk in stub.StreamGenerateContent(stream):
                pass

        await asyncio.gather(*(stub.GenerateContent(request) for _ in range(count)), read_stream())


async def rows(store_url: str) -> tuple[int, int]:
    """(usage events, request logs) in the store, read by a store of the test's own."""
    store = await open_store(store_url, migrate=False)
    try:
        async with store.connect() as conn:
            usage = await conn.scalar(sa.select(sa.func.count()).select_from(UsageEventRow))
            logs = await conn.scalar(sa.select(sa.func.count()).select_from(RequestLog))
        return int(usage or 0), int(logs or 0)
    finally:
        await store.close()


def parent_of(pid: int) -> int:
    stat = Path(f"/proc/{pid}/stat").read_text()
    return int(stat.rsplit(") ", 1)[1].split()[1])


async def test_the_gateway_writes_through_its_own_child(
    emulator: EmulatorHandle, tmp_path: Path, run: str
) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path}/gateway.db"
    gateway = await start(emulator, url)
    process = gateway.recorder.process
    try:
        assert process is not None and process.pid is not None
        pid = process.pid
        assert pid != os.getpid() and parent_of(pid) == os.getpid()
        await call(gateway, 5, run)
        await gateway.recorder.flush()
        assert await rows(url) == (6, 6)
        assert process.starts == 1
    finally:
        await gateway.stop(0)
    assert process.pid is None
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)


async def test_what_was_recorded_is_written_before_the_gateway_stops(
    emulator: EmulatorHandle, tmp_path: Path, run: str
) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path}/gateway.db"
    gateway = await start(emulator, url)
    try:
        await call(gateway, 40, run)
    finally:
        await gateway.stop(0)  # no flush first: stopping drains the recorder through its child
    assert await rows(url) == (41, 41)


@pytest.mark.parametrize("case", ["in-memory store", "writer_process off"])
async def test_without_a_child_the_gateway_writes_itself(
    emulator: EmulatorHandle, tmp_path: Path, run: str, case: str
) -> None:
    if case == "in-memory store":
        gateway = await start(emulator, "sqlite+aiosqlite://")
    else:
        gateway = await start(
            emulator, f"sqlite+aiosqlite:///{tmp_path}/gateway.db", writer_process=False
        )
    try:
        assert gateway.recorder.process is None
        await call(gateway, 3, run)
        await gateway.recorder.flush()
        async with gateway.store.connect() as conn:
            usage = await conn.scalar(sa.select(sa.func.count()).select_from(UsageEventRow))
            logs = await conn.scalar(sa.select(sa.func.count()).select_from(RequestLog))
        assert (usage, logs) == (4, 4)
    finally:
        await gateway.stop(0)
