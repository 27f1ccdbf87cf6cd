"""What request logging hands between its parts: the events, the policy, names and ids.

A logged call becomes one `LogEvent` on the recorder's queue; a call that logging had to
leave out becomes a `LogSkip` (counted per project, shown in the logging settings). The
event holds the messages themselves: turning them into JSON, previews and search text is
the writer's work, after the call has answered.
"""

from __future__ import annotations

import random
import re
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Literal, Protocol

from google.protobuf.message import Message
from sqlalchemy.ext.asyncio import AsyncConnection

AtLimit = Literal["stop_logging", "evict_oldest"]
SkipReason = Literal["media", "at_limit"]

_LOG_ID = re.compile(r"[0-9a-f]{24}")
_PROJECT = re.compile(r"[A-Za-z0-9_.~-]{1,128}|-")


@dataclass(frozen=True, slots=True)
class LoggingPolicy:
    """A project's logging settings in force: configured defaults under API overrides."""

    enabled: bool
    max_logs: int
    retention_s: float
    at_limit: AtLimit


@dataclass(slots=True)
class LogEvent:
    """One finished generate call of a project with logging on.

    `responses` are what the upstream answered: one message for a unary call, every chunk
    for a stream (merged by the writer); `chunk_offsets_ms` is when each chunk arrived.
    `status` is the gRPC code name the caller saw, `error_message` its status message.
    """

    id: str
    project: str
    caller: str
    create_time: datetime
    model: str
    method: str
    api_version: str
    labels: Mapping[str, str]
    status: str
    error_message: str
    latency_ms: float
    first_chunk_ms: float | None
    prompt_tokens: int
    candidates_tokens: int
    cached_tokens: int
    thoughts_tokens: int
    tool_use_tokens: int
    total_tokens: int
    incomplete: bool
    request: Message
    responses: Sequence[Message] = field(default_factory=list)
    chunk_offsets_ms: Sequence[float] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class LogSkip:
    """A call of a project with logging on that was not logged, and why."""

    project: str
    reason: SkipReason
    count: int = 1


class LogNotifier(Protocol):
    """Tells followers of a project's logs (TailLogs) that logs were written.

    `notify_in_transaction` runs inside the writing transaction (PostgreSQL: NOTIFY, which
    other replicas receive when it commits); `published` runs after the commit, in this
    process. Both get project -> ids of the logs written, oldest first.
    """

    async def notify_in_transaction(
        self, conn: AsyncConnection, written: Mapping[str, Sequence[str]]
    ) -> None: ...

    def published(self, written: Mapping[str, Sequence[str]]) -> None: ...


def new_log_id(now_s: float | None = None) -> str:
    """12 hex digits of the time in ms, then 12 random ones: ids sort by arrival."""
    ms = int((time.time() if now_s is None else now_s) * 1000)
    # Not a secret: the process's PRNG spares a getrandom() per log.
    return f"{ms:012x}{random.getrandbits(48):012x}"


def is_log_id(text: str) -> bool:
    return _LOG_ID.fullmatch(text) is not None


def is_project_id(text: str) -> bool:
    """A project as resource names carry it (`-` stands for the caller's own)."""
    return _PROJECT.fullmatch(text) is not None


def log_name(project: str, log_id: str) -> str:
    return f"projects/{project}/logs/{log_id}"


def parse_log_name(name: str) -> tuple[str, str] | None:
    """(project, log id) of `projects/{project}/logs/{log}`; None if it is not one."""
    parts = name.split("/")
    if len(parts) != 4 or parts[0] != "projects" or parts[2] != "logs":
        return None
    if not is_project_id(parts[1]) or not is_log_id(parts[3]):
        return None
    return parts[1], parts[3]
