"""The recorder: events from finished calls go to a bounded queue and are written in batches.

A call hands its event to `Recorder.record`, which never blocks and never raises: recording
must not change what the caller sees. One background task drains the queue and writes each
batch in one transaction per event type. Whatever cannot be kept (queue full, store failing,
recorder stopped) is counted in `gateway_recorder_dropped_events_total{reason}` and logged at
most once per `DROP_LOG_INTERVAL_S`, so no event is lost silently.

Event types are plain classes; each has one `BatchWriter` registered for it. Usage events are
written by `store.usage.write_usage_batch`; other features register theirs the same way.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import weakref
from collections.abc import Awaitable, Callable, Mapping, Sequence
from datetime import datetime
from typing import Any, NamedTuple

from prometheus_client import Counter, Gauge
from sqlalchemy.ext.asyncio import AsyncConnection

from gemini_gateway.server.store.engine import Store, describe_error
from gemini_gateway.server.store.usage import write_usage_batch

log = logging.getLogger(__name__)

DROPPED = Counter(
    "gateway_recorder_dropped_events",
    "Events the recorder could not store, by reason: queue_full, store_error, stopped "
    "(recorded after stop() or still queued when its timeout ran out), or unconvertible "
    "(an event its writer could not turn into a row; the rest of its batch is written).",
    ["reason"],
)
WRITTEN = Counter("gateway_recorder_written_events", "Events written to the store.", ["event"])
QUEUE_DEPTH = Gauge("gateway_recorder_queue_depth", "Events waiting to be written.")

DROP_LOG_INTERVAL_S = 10.0
# After a failed write the next attempt waits, doubling up to the cap, while the queue buffers.
RETRY_DELAY_S = 0.1
RETRY_DELAY_MAX_S = 5.0


class UsageEvent(NamedTuple):
    """What one GenerateContent / StreamGenerateContent call used.

    `method` is the short RPC name, `status` the gRPC code name ("OK", "RESOURCE_EXHAUSTED"),
    token counts are usageMetadata's (prompt includes cached), `first_chunk_ms` is set for
    streams only, `incomplete` marks a call that ended before its last chunk, `batch` a request
    of a Batch API batch (method "BatchGenerateContent", billed at the batch discount, no
    latency of its own). A named tuple:
    immutable like a frozen dataclass, and made in a third of its time (one per call).
    """

    time: datetime
    project: str
    caller: str
    model: str
    method: str
    labels: Mapping[str, str]
    status: str
    prompt_tokens: int
    candidates_tokens: int
    cached_tokens: int
    thoughts_tokens: int
    tool_use_tokens: int
    total_tokens: int
    latency_ms: float
    first_chunk_ms: float | None
    incomplete: bool
    batch: bool = False


BatchWriter = Callable[[AsyncConnection, Sequence[Any]], Awaitable["Callable[[], None] | None"]]
"""Writes a batch of events of one type inside the transaction it is given.

It may return a callable, run once the transaction has committed (e.g. to tell followers of
the logs that new ones are readable); an exception there is logged, never retried.
"""


class _DropLog:
    """Counts drops and logs them at most once per interval, with the count since last time."""

    def __init__(self, interval_s: float) -> None:
        self._interval = interval_s
        self._pending: dict[str, int] = {}
        self._last_error = ""
        self._last_log = float("-inf")

    def add(self, reason: str, count: int, error: str = "") -> None:
        DROPPED.labels(reason).inc(count)
        self._pending[reason] = self._pending.get(reason, 0) + count
        if error:
            self._last_error = error
        self.maybe_log()

    def maybe_log(self, *, force: bool = False) -> None:
        now = time.monotonic()
        if not self._pending or (not force and now - self._last_log < self._interval):
            return
        summary = ", ".join(f"{reason}: {n}" for reason, n in sorted(self._pending.items()))
        error = f"; last store error: {self._last_error}" if self._last_error else ""
        log.warning(
            "recorder dropped %d events since the last report (%s)%s",
            sum(self._pending.values()),
            summary,
            error,
        )
        self._pending.clear()
        self._last_error = ""
        self._last_log = now


# Every recorder of the process, for the queue depth gauge (tests run several).
_RECORDERS: weakref.WeakSet[Recorder] = weakref.WeakSet()


def _queue_depth() -> float:
    # Called by the metrics thread: a recorder created meanwhile changes the set.
    while True:
        try:
            return float(sum(len(recorder._pending) for recorder in _RECORDERS))
        except RuntimeError:
            continue


QUEUE_DEPTH.set_function(_queue_depth)


class Recorder:
    """Bounded queue -> batched writes to the store, by one background task.

    `record` runs once per call on the event loop, so it only appends to a list: the queue
    depth gauge is read from the lists when scraped, and flush/stop are woken per batch, not
    per event.
    """

    def __init__(
        self,
        store: Store,
        *,
        max_queue: int = 10_000,
        batch_size: int = 500,
        flush_interval_s: float = 0.2,
        write_timeout_s: float = 30.0,
        drop_log_interval_s: float = DROP_LOG_INTERVAL_S,
        writers: Mapping[type, BatchWriter] | None = None,
    ) -> None:
        if max_queue < 1 or batch_size < 1:
            raise ValueError("max_queue and batch_size must be positive")
        self._store = store
        self._pending: list[Any] = []
        self._max_queue = max_queue
        self._batch_size = batch_size
        self._flush_interval = flush_interval_s
        self._write_timeout = write_timeout_s
        self._writers: dict[type, BatchWriter] = (
            {UsageEvent: write_usage_batch} if writers is None else dict(writers)
        )
        self._drops = _DropLog(drop_log_interval_s)
        # Set when the first event arrives, when a full batch waits, or when flush()/stop()
        # want the writer to go now.
        self._wake = asyncio.Event()
        # flush()/stop() waiting for the queue to drain; resolved after every batch.
        self._drain_waiters: list[asyncio.Future[None]] = []
        self._task: asyncio.Task[None] | None = None
        self._stopped = False
        self._flushing = 0
        self._in_flight = 0
        self._failures = 0
        _RECORDERS.add(self)

    def register(self, event_type: type, writer: BatchWriter) -> None:
        """Write events of exactly `event_type` with `writer`."""
        self._writers[event_type] = writer

    def record(self, event: Any) -> None:
        """Queue `event` for writing; never blocks, never raises (a drop is counted)."""
        try:
            pending = self._pending
            if self._stopped:
                self._drops.add("stopped", 1)
            elif len(pending) >= self._max_queue:
                self._drops.add("queue_full", 1)
            else:
                pending.append(event)
                if len(pending) == 1 or len(pending) >= self._batch_size:
                    self._wake.set()
        except Exception:  # recording must never fail the call
            log.exception("recorder could not queue an event")

    @property
    def queue_depth(self) -> int:
        return len(self._pending)

    def start(self) -> None:
        """Start the writer task on the running loop (does nothing if it runs already)."""
        if self._task is None or self._task.done():
            self._stopped = False
            self._task = asyncio.get_running_loop().create_task(self._run(), name="recorder")

    async def flush(self) -> None:
        """Wait until every event queued so far is written (or counted as dropped)."""
        if self._task is None or self._task.done():
            raise RuntimeError("the recorder is not running: call start() first")
        self._flushing += 1
        self._wake.set()
        try:
            await self._drained()
        finally:
            self._flushing -= 1

    async def stop(self, timeout: float = 10.0) -> None:
        """Stop accepting events, write what is queued (for up to `timeout`), end the task.

        Events still unwritten when the timeout runs out are counted as dropped ("stopped").
        """
        self._stopped = True
        task, self._task = self._task, None
        if task is not None:
            self._wake.set()
            try:
                async with asyncio.timeout(timeout):
                    await self._drained()
            except TimeoutError:
                log.warning(
                    "recorder stop: %d events not written within %.1f s",
                    len(self._pending) + self._in_flight,
                    timeout,
                )
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._drop_queued()
        self._drops.maybe_log(force=True)

    async def _drained(self) -> None:
        """Return once nothing is queued or being written."""
        while self._pending or self._in_flight:
            waiter = asyncio.get_running_loop().create_future()
            self._drain_waiters.append(waiter)
            await waiter

    def _batch_done(self) -> None:
        waiters, self._drain_waiters = self._drain_waiters, []
        for waiter in waiters:
            if not waiter.done():
                waiter.set_result(None)

    def _drop_queued(self) -> None:
        lost = len(self._pending)
        self._pending = []
        if lost:
            self._drops.add("stopped", lost)
        self._batch_done()

    def _hurry(self) -> bool:
        return self._stopped or self._flushing > 0

    async def _next_batch(self) -> list[Any]:
        while not self._pending:
            self._wake.clear()
            await self._wake.wait()  # set by the first event
        if len(self._pending) < self._batch_size and not self._hurry():
            # Let the batch fill for up to flush_interval, unless a full batch is waiting or a
            # flush/stop wants it now.
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self._flush_interval):
                    await self._wake.wait()
        batch = self._pending
        if len(batch) <= self._batch_size:
            self._pending = []
            return batch
        self._pending = batch[self._batch_size :]
        return batch[: self._batch_size]

    async def _run(self) -> None:
        while True:
            batch = await self._next_batch()
            self._in_flight = len(batch)
            try:
                ok = await self._write(batch)
            except asyncio.CancelledError:
                if self._in_flight:
                    self._drops.add("stopped", self._in_flight)
                raise
            finally:
                self._in_flight = 0
                self._batch_done()
            self._drops.maybe_log()
            if ok:
                self._failures = 0
            else:
                self._failures += 1
                await self._back_off()

    async def _back_off(self) -> None:
        # While the store is failing, let the queue buffer instead of failing every batch at
        # once; flush() and stop() cut the wait short.
        delay = min(RETRY_DELAY_S * 2 ** (self._failures - 1), RETRY_DELAY_MAX_S)
        self._wake.clear()
        if self._hurry():
            return
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(delay):
                await self._wake.wait()

    async def _write(self, batch: list[Any]) -> bool:
        """Write `batch`, one transaction per event type; False if any part was dropped."""
        by_type: dict[type, list[Any]] = {}
        for event in batch:
            by_type.setdefault(type(event), []).append(event)
        ok = True
        for event_type, events in by_type.items():
            writer = self._writers.get(event_type)
            try:
                if writer is None:
                    raise TypeError(f"no writer registered for {event_type.__name__}")
                async with asyncio.timeout(self._write_timeout), self._store.begin() as conn:
                    after_commit = await writer(conn, events)
            except Exception as exc:
                ok = False
                self._drops.add("store_error", len(events), describe_error(exc))
            else:
                WRITTEN.labels(event_type.__name__).inc(len(events))
                if after_commit is not None:
                    try:
                        after_commit()
                    except Exception:
                        log.exception("recorder: after-commit hook of %s", event_type.__name__)
            self._in_flight -= len(events)
        return ok
