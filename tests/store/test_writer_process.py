"""The recorder's writer process, on SQLite and PostgreSQL: a real child process writing to
the store; what it writes is what the writers make in-process, and its counts, the logs it
wrote and its failures come back to the gateway's side.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import time
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import pytest

from gemini_gateway.generated.google.ai.generativelanguage.v1beta import content_pb2
from gemini_gateway.server.log_event import LogEvent, LoggingPolicy, LogSkip
from gemini_gateway.server.recorder import DROPPED, WRITTEN, Recorder, UsageEvent
from gemini_gateway.server.store import Store
from gemini_gateway.server.store.logs import LogWriter, get_logs, read_settings
from gemini_gateway.server.writer_process import WriterProcess
from tests.store.conftest import clear
from tests.store.test_logs import POLICY, all_pages, event, log_id, response
from tests.store.test_usage_write import stored, varied_events


@dataclass
class Gateway:
    """The gateway's side of the child: what it hears of, the policies it sends."""

    policies: dict[str, LoggingPolicy] = field(default_factory=lambda: {"p1": POLICY})
    published: list[Mapping[str, Sequence[str]]] = field(default_factory=list)

    def policy_for(self, project: str) -> LoggingPolicy:
        return self.policies.get(project, POLICY)

    def process(self, store_url: str) -> WriterProcess:
        return WriterProcess(
            store_url,
            policy_for=self.policy_for,
            published=self.published.append,
            notify_replica="replica-under-test",
        )


def url_of(store: Store) -> str:
    return store.engine.url.render_as_string(hide_password=False)


@pytest.fixture
def gateway() -> Gateway:
    return Gateway()


@pytest.fixture
async def process(store: Store, gateway: Gateway) -> AsyncIterator[WriterProcess]:
    child = gateway.process(url_of(store))
    yield child
    await child.close()


def mixed_batch() -> list[Any]:
    """Usage events, logs (a stream among them) and skips, interleaved as calls end."""
    usage = varied_events(60, seed=3)
    chunks = [response("Gen", response_id="r"), response("eral Kenobi", response_id="r")]
    logs = [
        event(1),
        event(2, method="StreamGenerateContent", responses=chunks, chunk_offsets_ms=[5.5, 9.25]),
        event(3, project="p2", labels={"team": "search"}, status="UNAVAILABLE", responses=[]),
    ]
    skips = [LogSkip("p1", "media"), LogSkip("p2", "at_limit", 2)]
    return [*usage[:30], *logs[:2], skips[0], *usage[30:], logs[2], skips[1]]


async def snapshot(store: Store) -> dict[str, Any]:
    logs = await get_logs(store, "p1", [log_id(1), log_id(2)], full=True)
    logs += await get_logs(store, "p2", [log_id(3)], full=True)
    settings = [await read_settings(store, project) for project in ("p1", "p2")]
    return {"usage": await stored(store), "logs": logs, "settings": settings}


async def test_the_child_stores_what_the_writers_store_in_process(
    store: Store, process: WriterProcess
) -> None:
    batch = mixed_batch()
    in_process = Recorder(store)
    log_writer = LogWriter(lambda project: POLICY)
    in_process.register(LogEvent, log_writer)
    in_process.register(LogSkip, log_writer.write_skips)
    in_process.start()
    for item in batch:
        in_process.record(item)
    await in_process.stop()
    expected = await snapshot(store)
    assert len(expected["logs"]) == 3 and expected["settings"][1].skipped_at_limit == 2

    await clear(store)
    groups: dict[type, list[Any]] = {}
    for item in batch:
        groups.setdefault(type(item), []).append(item)
    outcomes = await process.write(groups)
    assert [(o.event, o.size, o.error) for o in outcomes] == [
        ("UsageEvent", 60, ""),
        ("LogEvent", 3, ""),
        ("LogSkip", 2, ""),
    ]
    assert await snapshot(store) == expected


async def test_logs_written_are_handed_back_after_the_commit(
    store: Store, process: WriterProcess, gateway: Gateway
) -> None:
    await process.write({LogEvent: [event(1), event(2), event(3, project="p2")]})
    assert gateway.published == [{"p1": [log_id(1), log_id(2)], "p2": [log_id(3)]}]
    assert await all_pages(store) == [2, 1]  # readable by then


async def test_each_batch_carries_the_policies_in_force(
    store: Store, process: WriterProcess, gateway: Gateway
) -> None:
    gateway.policies["p1"] = replace(POLICY, max_logs=2)
    await process.write({LogEvent: [event(1), event(2), event(3)]})
    assert await all_pages(store) == [2, 1]
    assert (await read_settings(store, "p1")).skipped_at_limit == 1
    # Raised in the gateway (UpdateLoggingSettings): the next batch follows it at once.
    gateway.policies["p1"] = replace(POLICY, max_logs=4)
    await process.write({LogEvent: [event(4), event(5), event(6)]})
    assert await all_pages(store) == [5, 4, 2, 1]
    assert (await read_settings(store, "p1")).skipped_at_limit == 2


async def test_the_recorder_counts_what_the_child_wrote_and_could_not_convert(
    store: Store, process: WriterProcess
) -> None:
    recorder = Recorder(store, process=process)
    recorder.register(LogEvent, LogWriter(lambda project: POLICY))
    written = WRITTEN.labels("LogEvent")
    unconvertible = DROPPED.labels("unconvertible")
    before = (written._value.get(), unconvertible._value.get())
    # A response of the wrong type: the child's writer cannot merge it.
    bad = event(2, responses=[content_pb2.Content(role="model")], method="StreamGenerateContent")
    recorder.start()
    for item in (event(1), bad, event(3)):
        recorder.record(item)
    await recorder.flush()
    assert await all_pages(store) == [3, 1]
    assert written._value.get() == before[0] + 3
    assert unconvertible._value.get() == before[1] + 1
    await recorder.stop()
    assert process.pid is None  # the recorder closes its child when it stops


async def test_a_child_killed_mid_batch_fails_that_batch_and_is_replaced(
    store: Store, process: WriterProcess
) -> None:
    await process.start()
    pid = process.pid
    assert pid is not None
    await process.write({})  # ready
    os.kill(pid, signal.SIGSTOP)  # it cannot answer: the batch is surely in its hands
    writing = asyncio.create_task(process.write({UsageEvent: varied_events(5)}))
    await asyncio.sleep(0.3)
    assert not writing.done()
    os.kill(pid, signal.SIGKILL)
    [outcome] = await writing
    assert outcome.size == 5
    assert outcome.error == "the store writer process exited (code -9) before it answered"
    assert (await stored(store))["usage_events"] == []

    [outcome] = await process.write({UsageEvent: varied_events(7)})
    assert outcome.error == ""
    assert process.starts == 2 and process.pid not in (None, pid)
    assert len((await stored(store))["usage_events"]) == 7


async def test_a_child_that_stops_answering_is_killed_and_replaced(
    store: Store, gateway: Gateway
) -> None:
    child = WriterProcess(
        url_of(store),
        policy_for=gateway.policy_for,
        published=gateway.published.append,
        notify_replica="replica-under-test",
        write_timeout_s=0.5,
        answer_grace_s=0.5,
    )
    try:
        await child.write({UsageEvent: varied_events(1)})  # started, and ready
        hung = child.pid
        assert hung is not None
        os.kill(hung, signal.SIGSTOP)
        [outcome] = await child.write({UsageEvent: varied_events(4)})
        assert outcome.error == "the store writer process did not answer within 1 s"
        assert _gone_soon(hung)

        # A write cancelled while the child holds it (the recorder's stop timing out): the
        # child cannot be trusted to answer the next request, so it goes too.
        await child.write({UsageEvent: varied_events(1)})
        second = child.pid
        assert second is not None and second != hung
        os.kill(second, signal.SIGSTOP)
        writing = asyncio.create_task(child.write({UsageEvent: varied_events(4)}))
        await asyncio.sleep(0.2)
        writing.cancel()
        with pytest.raises(asyncio.CancelledError):
            await writing
        assert _gone_soon(second)

        [outcome] = await child.write({UsageEvent: varied_events(6)})
        assert outcome.error == "" and child.starts == 3
        assert len((await stored(store))["usage_events"]) == 1 + 1 + 6
    finally:
        await child.close()


async def test_a_store_error_comes_back_and_the_child_stays(gateway: Gateway) -> None:
    child = gateway.process("postgresql+asyncpg://nobody@127.0.0.1:1/none")
    try:
        [outcome] = await child.write({UsageEvent: varied_events(3)})
        assert outcome.size == 3
        assert "OSError" in outcome.error or "ConnectionRefused" in outcome.error
        pid = child.pid
        [outcome] = await child.write({UsageEvent: varied_events(3)})
        assert outcome.error and child.pid == pid and child.starts == 1
    finally:
        await child.close()


async def test_closing_ends_the_child(store: Store, process: WriterProcess) -> None:
    await process.write({UsageEvent: varied_events(2)})
    pid = process.pid
    assert pid is not None
    await process.close()
    assert process.pid is None
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)  # exited and reaped


_ORPHAN_SCRIPT = """
import asyncio, sys
from gemini_gateway.server.writer_process import WriterProcess

async def main():
    child = WriterProcess(sys.argv[1], policy_for=None, published=None, notify_replica="x")
    await child.start()
    print(child.pid, flush=True)
    await asyncio.sleep(600)

asyncio.run(main())
"""


def _gone(pid: int) -> bool:
    """Exited: reaped, or a zombie waiting for init (an orphan's new parent) to reap it."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(") ", 1)[1].startswith("Z")
    except FileNotFoundError:
        return True


def _gone_soon(pid: int, timeout_s: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while not _gone(pid):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


async def test_a_child_whose_gateway_died_exits(store: Store) -> None:
    gateway = await asyncio.create_subprocess_exec(
        sys.executable, "-c", _ORPHAN_SCRIPT, url_of(store), stdout=asyncio.subprocess.PIPE
    )
    try:
        assert gateway.stdout is not None
        child_pid = int(await gateway.stdout.readline())
        assert not _gone(child_pid)
    finally:
        gateway.kill()
        await gateway.wait()
    deadline = time.monotonic() + 20
    while not _gone(child_pid):
        assert time.monotonic() < deadline, f"writer process {child_pid} outlived its gateway"
        await asyncio.sleep(0.1)
