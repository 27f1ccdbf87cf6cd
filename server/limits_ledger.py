"""Per-project limits kept by the workers of one gateway together (`workers` of 2 or more).

Each worker is a process of its own; limits kept by each on its own would let a project have
up to N times them. So the supervisor makes one small file, the ledger, before it starts the
workers, and every worker maps it into memory. Per project the ledger holds the state of its
two token buckets (requests and tokens per minute) and its calls in flight, one count per
worker, all as float64:

    [requests level, requests stamp, tokens level, tokens stamp, calls of worker 1, ..., N]

A worker reads and changes the ledger only under an exclusive lock on the file (fcntl), so
checking a limit and taking from it are one step for all the workers. The kernel drops the
lock of a process that dies, so a worker killed while holding it blocks no one; the calls it
had in flight are forgotten by the supervisor when it sees it die, and by the worker started
in its place. Stamps are `time.monotonic()`, one clock for every process of the machine.

What stays per worker: each worker's share of its own upstream pool (every worker has its
own pool), and the line of calls waiting for a slot (`limit_wait_s`), which learns of slots
freed by other workers by looking again every POLL_S. Replicas on other machines keep their
own limits (docs/limits.md).
"""

from __future__ import annotations

import fcntl
import mmap
import os
import time
from collections.abc import Callable, Mapping, MutableSequence
from pathlib import Path
from types import TracebackType
from typing import cast

FLOAT_BYTES = 8
# Per project: the two buckets' level and stamp, then one call count per worker.
REQUESTS_AT = 0
TOKENS_AT = 2
CALLS_AT = 4
# How often a call waiting for a slot looks for one freed by another worker.
POLL_S = 0.01


class LedgerError(Exception):
    """The ledger file does not match the settings it was opened with."""


class LimitsLedger:
    """The shared state of `projects`' limits for `workers` processes, in the file at `path`.

    `worker` (1 to `workers`) is the process's own column of call counts; 0 in the
    supervisor, which only creates the ledger and forgets dead workers' calls.
    Used as a context manager, it holds the lock.
    """

    def __init__(self, path: Path, projects: list[str], workers: int, worker: int = 0) -> None:
        if not 0 <= worker <= workers:
            raise ValueError(f"worker {worker} is not one of 1 to {workers}")
        self.path = path
        self.projects = projects
        self.workers = workers
        self.worker = worker
        self._stride = CALLS_AT + workers
        size = len(projects) * self._stride * FLOAT_BYTES
        self._fd = os.open(path, os.O_RDWR)
        try:
            found = os.fstat(self._fd).st_size
            if found != size:
                raise LedgerError(
                    f"limits ledger {path} holds {found} bytes, not the {size} that "
                    f"{len(projects)} projects and {workers} workers take"
                )
            # float64 cells (typeshed types a cast memoryview's items as int)
            self._cells: memoryview[float] = memoryview(mmap.mmap(self._fd, size)).cast("d")  # type: ignore[assignment]
        except BaseException:
            os.close(self._fd)
            raise
        self._index = {name: i * self._stride for i, name in enumerate(projects)}

    @classmethod
    def create(
        cls,
        path: Path,
        capacities: Mapping[str, tuple[int, int]],
        workers: int,
        clock: Callable[[], float] = time.monotonic,
    ) -> LimitsLedger:
        """A new ledger for the projects of `capacities` (name -> requests per minute, tokens
        per minute; 0: no limit), every bucket full and no call in flight."""
        projects = sorted(capacities)
        stride = CALLS_AT + workers
        with open(path, "wb") as file:
            file.truncate(len(projects) * stride * FLOAT_BYTES)
        ledger = cls(path, projects, workers)
        now = clock()
        with ledger:
            for name in projects:
                at = ledger._index[name]
                requests, tokens = capacities[name]
                ledger._cells[at + REQUESTS_AT] = float(requests)
                ledger._cells[at + REQUESTS_AT + 1] = now
                ledger._cells[at + TOKENS_AT] = float(tokens)
                ledger._cells[at + TOKENS_AT + 1] = now
        return ledger

    def bucket_state(self, project: str, at: int) -> MutableSequence[float]:
        """[level, stamp] of one of `project`'s buckets (REQUESTS_AT or TOKENS_AT)."""
        start = self._index[project] + at
        return cast("MutableSequence[float]", self._cells[start : start + 2])

    def call_counts(self, project: str) -> MutableSequence[float]:
        """`project`'s calls in flight, one count per worker (worker 1 first)."""
        start = self._index[project] + CALLS_AT
        return cast("MutableSequence[float]", self._cells[start : start + self.workers])

    def forget(self, worker: int) -> None:
        """Drop the calls in flight of `worker`, which has died (or is starting anew)."""
        column = CALLS_AT + worker - 1
        with self:
            for at in self._index.values():
                self._cells[at + column] = 0.0

    def close(self) -> None:
        os.close(self._fd)

    def __enter__(self) -> LimitsLedger:
        fcntl.lockf(self._fd, fcntl.LOCK_EX)
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        trace: TracebackType | None,
    ) -> None:
        fcntl.lockf(self._fd, fcntl.LOCK_UN)
