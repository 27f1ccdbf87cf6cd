"""The recorder's writer in a child process: the store's work off the gateway's event loop.

Writing usage events and request logs costs CPU in two places of the gateway's process:
SQLAlchemy's statements on the event loop, and SQLite (or asyncpg's protocol) in threads
that take the GIL back for every row and result. Both slow the calls being served. With
`writer_process` on (the default), the recorder hands each batch to one child process,
`python -m gemini_gateway.server.writer_process`, which runs the same writers
(`write_usage_batch`, `LogWriter`) against its own engine on the same store. The gateway's
share is turning the batch into plain tuples and pickling them, a few µs per event.

The protocol, over the child's stdin and a private copy of its stdout (its fd 1 is pointed
at stderr, so a stray print cannot corrupt the stream): frames of a 4-byte big-endian
length and a pickle. The first frame configures the child (the store's URL, password
included, so never on its command line); then each request frame is one batch, grouped by
event type, with the logging policies of the batch's projects; each reply is the outcome
of every group and the logs written per project, which the gateway hands to its log tail
once the reply arrives (the child's transaction has committed by then). The child writes one
batch at a time and exits when its stdin closes: when the gateway stops, or dies.

A child that exits (killed, out of memory) fails the batch it held, which the recorder
counts as dropped (`store_error`), and is started again for the next batch. The child never
touches the gateway's metrics: counts come back in the reply. An in-memory SQLite store
cannot be shared with another process, so such a store is always written in-process.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import pickle
import signal
import struct
import sys
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

from google.protobuf import descriptor_pool, message_factory
from google.protobuf.message import Message

from gemini_gateway.server.log_event import LogEvent, LoggingPolicy, LogSkip
from gemini_gateway.server.recorder import UsageEvent, WriteOutcome

log = logging.getLogger(__name__)

_HEADER = struct.Struct(">I")
STOP_TIMEOUT_S = 10.0
# Beyond the transactions' own timeouts, how long a batch's answer may take.
ANSWER_GRACE_S = 30.0
# How long a new child may take to import its modules and open the store (more than a
# second of CPU: longer on a loaded machine).
STARTUP_TIMEOUT_S = 60.0
MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"

# --- the wire form of events: tuples of plain values, cheap to pickle -------------------------

Written = dict[str, list[str]]  # project -> ids of the logs written, oldest first


def _message_to_wire(message: Message) -> tuple[str, bytes]:
    return message.DESCRIPTOR.full_name, message.SerializeToString()


_MESSAGE_CLASSES: dict[str, type[Message]] = {}


def _message_from_wire(wire: tuple[str, bytes]) -> Message:
    name, data = wire
    cls = _MESSAGE_CLASSES.get(name)
    if cls is None:
        descriptor = descriptor_pool.Default().FindMessageTypeByName(name)
        cls = _MESSAGE_CLASSES[name] = message_factory.GetMessageClass(descriptor)
    return cls.FromString(data)


def _log_to_wire(event: LogEvent) -> tuple[Any, ...]:
    # The generated classes are imported under another module name than the one they were
    # generated for, so pickle cannot find them by name: messages travel as (type, bytes).
    return (
        event.id, event.project, event.caller, event.create_time.timestamp(), event.model,
        event.method, event.api_version, tuple(event.labels.items()), event.status,
        event.error_message, event.latency_ms, event.first_chunk_ms, event.prompt_tokens,
        event.candidates_tokens, event.cached_tokens, event.thoughts_tokens,
        event.tool_use_tokens, event.total_tokens, event.incomplete,
        _message_to_wire(event.request), [_message_to_wire(m) for m in event.responses],
        list(event.chunk_offsets_ms),
    )  # fmt: skip


def _log_from_wire(wire: tuple[Any, ...]) -> LogEvent:
    fields = list(wire)
    fields[3] = datetime.fromtimestamp(fields[3], UTC)
    fields[7] = dict(fields[7])
    fields[19] = _message_from_wire(fields[19])
    fields[20] = [_message_from_wire(m) for m in fields[20]]
    return LogEvent(*fields)


def _usage_to_wire(event: UsageEvent) -> tuple[Any, ...]:
    return (event.time.timestamp(), *event[1:5], tuple(event.labels.items()), *event[6:])


def _usage_from_wire(wire: tuple[Any, ...]) -> UsageEvent:
    return UsageEvent._make(
        (datetime.fromtimestamp(wire[0], UTC), *wire[1:5], dict(wire[5]), *wire[6:])
    )


def _skip_to_wire(skip: LogSkip) -> tuple[Any, ...]:
    return skip.project, skip.reason, skip.count


_TO_WIRE: dict[type, tuple[str, Callable[[Any], tuple[Any, ...]]]] = {
    UsageEvent: ("UsageEvent", _usage_to_wire),
    LogEvent: ("LogEvent", _log_to_wire),
    LogSkip: ("LogSkip", _skip_to_wire),
}
_FROM_WIRE: dict[str, tuple[type, Callable[[tuple[Any, ...]], Any]]] = {
    "UsageEvent": (UsageEvent, _usage_from_wire),
    "LogEvent": (LogEvent, _log_from_wire),
    "LogSkip": (LogSkip, lambda wire: LogSkip(*wire)),
}


def _send(stream: Any, payload: object) -> None:
    data = pickle.dumps(payload, protocol=pickle.HIGHEST_PROTOCOL)
    stream.write(_HEADER.pack(len(data)) + data)


# --- the gateway's side -----------------------------------------------------------------------


class WriterProcess:
    """The gateway's handle on its writer child: started on first use, restarted after exit.

    `policy_for` gives each project's logging policy in force (sent with every batch that
    holds its logs); `published` hears of the logs written once their transaction committed;
    `notify_replica` is the id the child's PostgreSQL notifications name as their sender.
    """

    def __init__(
        self,
        store_url: str,
        *,
        policy_for: Callable[[str], LoggingPolicy],
        published: Callable[[Mapping[str, Sequence[str]]], None],
        notify_replica: str,
        write_timeout_s: float = 30.0,
        answer_grace_s: float = ANSWER_GRACE_S,
        log_level: str = "WARNING",
        log_format: str = "text",
    ) -> None:
        self._config = {
            "store_url": store_url,
            "replica": notify_replica,
            "write_timeout_s": write_timeout_s,
            "log_level": log_level,
            "log_format": log_format,
        }
        self._write_timeout_s = write_timeout_s
        self._answer_grace_s = answer_grace_s
        self._policy_for = policy_for
        self._published = published
        self._process: asyncio.subprocess.Process | None = None
        self._ready = False
        self._lock = asyncio.Lock()
        self.starts = 0  # children started so far (1 + restarts)

    @property
    def pid(self) -> int | None:
        """The running child's process id, if one runs."""
        process = self._process
        return None if process is None or process.returncode is not None else process.pid

    async def start(self) -> None:
        """Start the child now rather than at the first batch.

        The gateway does so before its gRPC server exists: a fork while grpc's threads are
        busy makes grpc log that it skipped its fork handlers (harmless, the child execs at
        once, but noise). The child's imports then also run while the gateway starts.
        """
        async with self._lock:
            await self._ensure_started()

    async def _ensure_started(self) -> asyncio.subprocess.Process:
        process = self._process
        if process is not None and process.returncode is None:
            return process
        if process is not None:
            log.warning(
                "store writer process exited (code %s): starting another", process.returncode
            )
        # The child writes no metrics of its own (counts come back in replies), so it does not
        # join the workers' prometheus multiprocess folder.
        env = {key: value for key, value in os.environ.items() if key != MULTIPROC_ENV}
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            __name__,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            env=env,
        )
        self._process = process
        self._ready = False
        self.starts += 1
        assert process.stdin is not None
        _send(process.stdin, self._config)
        return process

    @staticmethod
    def writes(groups: Mapping[type, Any]) -> bool:
        """Whether the child knows how to write every event type of `groups`."""
        return all(event_type in _TO_WIRE for event_type in groups)

    async def write(self, groups: Mapping[type, list[Any]]) -> list[WriteOutcome]:
        """Write `groups` (event type -> events) in the child; one outcome per group.

        Never raises but for cancellation: a child that exits before it answers, or does not
        answer in time (then it is killed), fails every group, with the reason.
        """
        wire: dict[str, list[tuple[Any, ...]]] = {}
        for event_type, events in groups.items():
            name, to_wire = _TO_WIRE[event_type]
            wire[name] = [to_wire(event) for event in events]
        projects = {event.project for event in groups.get(LogEvent, ())}
        policies = {project: self._policy_for(project) for project in projects}
        # The child bounds each group's transaction by write_timeout_s; this only guards
        # against a child that stopped answering at all.
        deadline_s = self._write_timeout_s * len(groups) + self._answer_grace_s
        async with self._lock:
            process = await self._ensure_started()
            answered = False
            try:
                if not self._ready:  # a new child says so once its store is open
                    async with asyncio.timeout(STARTUP_TIMEOUT_S):
                        await _receive(process)
                    self._ready = True
                async with asyncio.timeout(deadline_s):
                    reply = await _exchange(process, (wire, policies))
                answered = True
            except (ConnectionError, asyncio.IncompleteReadError):
                code = await _exit_code(process)
                return _failed(groups, f"exited (code {code}) before it answered")
            except TimeoutError:
                waited = deadline_s if self._ready else STARTUP_TIMEOUT_S
                verb = "answer" if self._ready else "start"
                return _failed(groups, f"did not {verb} within {waited:.0f} s")
            finally:
                if not answered:
                    # A request whose answer was not read would be taken for the next one's:
                    # this child is done with, and the next batch starts another.
                    _kill(process)
                    self._process = None
        outcomes, written = reply
        if written:
            self._published(written)
        return [WriteOutcome(*outcome) for outcome in outcomes]

    async def close(self, timeout_s: float = STOP_TIMEOUT_S) -> None:
        """Let the child finish (its stdin closes) and wait for it; killed after `timeout_s`."""
        async with self._lock:
            process, self._process = self._process, None
            if process is None or process.returncode is not None:
                return
            assert process.stdin is not None
            process.stdin.close()
            try:
                async with asyncio.timeout(timeout_s):
                    await process.wait()
            except TimeoutError:
                log.warning("store writer process did not stop within %.0f s: killed", timeout_s)
                process.kill()
                await process.wait()


def _failed(groups: Mapping[type, list[Any]], why: str) -> list[WriteOutcome]:
    error = f"the store writer process {why}"
    return [
        WriteOutcome(event_type.__name__, len(events), error)
        for event_type, events in groups.items()
    ]


async def _exchange(process: asyncio.subprocess.Process, request: object) -> Any:
    """Send one request frame and read its answer."""
    assert process.stdin is not None
    _send(process.stdin, request)
    await process.stdin.drain()
    return await _receive(process)


async def _receive(process: asyncio.subprocess.Process) -> Any:
    assert process.stdout is not None
    (size,) = _HEADER.unpack(await process.stdout.readexactly(_HEADER.size))
    return pickle.loads(await process.stdout.readexactly(size))


def _kill(process: asyncio.subprocess.Process) -> None:
    if process.returncode is None:
        with contextlib.suppress(ProcessLookupError):
            process.kill()


async def _exit_code(process: asyncio.subprocess.Process) -> int | None:
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(2.0):
            return await process.wait()
    return process.returncode


# --- the child --------------------------------------------------------------------------------


class _CollectedLogs:
    """The child's LogNotifier: PostgreSQL NOTIFY in the transaction, as the gateway's bus
    does, and the ids kept for the reply instead of delivered here."""

    def __init__(self, replica: str) -> None:
        self.replica = replica
        self.written: Written = {}

    async def notify_in_transaction(self, conn: Any, written: Mapping[str, Sequence[str]]) -> None:
        from gemini_gateway.server.log_tail import notify_replicas

        await notify_replicas(conn, self.replica, written)

    def published(self, written: Mapping[str, Sequence[str]]) -> None:
        for project, ids in written.items():
            self.written.setdefault(project, []).extend(ids)


def _read_frame(stream: Any) -> Any:
    header = stream.read(_HEADER.size)
    if len(header) < _HEADER.size:
        return None  # stdin closed: the gateway stopped
    (size,) = _HEADER.unpack(header)
    data = stream.read(size)
    if len(data) < size:
        return None
    return pickle.loads(data)


async def _serve(config: Mapping[str, Any], requests: Any, replies: Any) -> None:
    from gemini_gateway.server.recorder import BatchWriter, write_groups
    from gemini_gateway.server.store.engine import open_store
    from gemini_gateway.server.store.logs import LogWriter
    from gemini_gateway.server.store.usage import write_usage_batch

    # The gateway opened (and migrated) the store; one writer needs few connections.
    store = await open_store(config["store_url"], migrate=False, pool_size=2, max_overflow=2)
    _send(replies, "ready")
    replies.flush()
    policies: dict[str, LoggingPolicy] = {}
    unconvertible = [0]

    def count_unconvertible() -> None:
        unconvertible[0] += 1

    try:
        while True:
            # Blocking reads: the child does one thing at a time, and nothing else runs on
            # its loop between batches.
            request = _read_frame(requests)
            if request is None:
                return
            wire, batch_policies = request
            policies.clear()
            policies.update(batch_policies)
            notifier = _CollectedLogs(config["replica"])
            log_writer = LogWriter(
                policies.__getitem__, notifier, count_unconvertible=count_unconvertible
            )
            writers: dict[type, BatchWriter] = {
                UsageEvent: write_usage_batch,
                LogEvent: log_writer,
                LogSkip: log_writer.write_skips,
            }
            groups: dict[type, list[Any]] = {}
            lost: dict[str, int] = {}  # per type: events that did not survive the trip
            for name, events in wire.items():
                event_type, from_wire = _FROM_WIRE[name]
                groups[event_type] = []
                for event in events:
                    try:
                        groups[event_type].append(from_wire(event))
                    except Exception:
                        lost[name] = lost.get(name, 0) + 1
                        log.exception("store writer process: a %s could not be read", name)
            outcomes = []
            for outcome in await write_groups(store, writers, groups, config["write_timeout_s"]):
                extra = lost.get(outcome.event, 0)
                if outcome.event == "LogEvent":
                    extra += unconvertible[0]
                    unconvertible[0] = 0
                size = outcome.size + lost.get(outcome.event, 0)
                outcomes.append(tuple(outcome._replace(size=size, unconvertible=extra)))
            _send(replies, (outcomes, notifier.written))
            replies.flush()
    finally:
        await store.close()


def main() -> None:
    """The child: serve batches from stdin until it closes."""
    # Ctrl-C in a terminal reaches the whole process group; the child ends when the gateway
    # closes its stdin, after the last batch it was given.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    replies = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)  # a stray print goes to stderr, never into the replies
    requests = os.fdopen(0, "rb")
    config = _read_frame(requests)
    if config is None:
        return
    from gemini_gateway.server.log_format import configure_logging

    configure_logging(config["log_level"], config["log_format"])
    try:
        import uvloop

        runner: Callable[[Any], Any] = uvloop.run
    except ImportError:  # pragma: no cover - uvloop is a dependency off Windows
        runner = asyncio.run
    runner(_serve(config, requests, replies))


if __name__ == "__main__":
    main()
