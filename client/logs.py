"""Request logs of a project, read and managed through the gateway's LogService.

`LogClient` lists, reads, deletes and follows the logs of generate calls, and reads or
changes the project's logging settings. Logs come back as the generated `Log` messages
(their request and response are the real GenerateContent messages); a listing comes back as
a `LogPage` that also says when the project is at its log limit.

Every resource argument takes an id (`0193a5c2...`, `my-set`) or a full name
(`projects/search/logs/0193a5c2...`): ids are put under the client's project, or under
`projects/-`, which the gateway reads as the caller's own project.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Literal, TypeAlias

import grpc

from gemini_gateway.client.gateway_client import ProjectClient, project_name
from gemini_gateway.generated.gemini.gateway.v1 import logs_pb2, logs_pb2_grpc

Log: TypeAlias = logs_pb2.Log
LoggingSettings: TypeAlias = logs_pb2.LoggingSettings
AtLimit = Literal["stop_logging", "evict_oldest"]

_AT_LIMIT: dict[AtLimit, logs_pb2.AtLimitPolicy.ValueType] = {
    "stop_logging": logs_pb2.STOP_LOGGING,
    "evict_oldest": logs_pb2.EVICT_OLDEST,
}
_DURATION = re.compile(r"(\d+(?:\.\d+)?)\s*([smhdw])")
_DURATION_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days", "w": "weeks"}
DURATION_HELP = "a number and a unit: s, m, h, d or w (90m, 36h, 30d, 8w)"


def parse_duration(text: str) -> timedelta:
    """`30d`, `36h`, `90m`, `3600s`, `8w` as a timedelta; ValueError (one line) otherwise."""
    match = _DURATION.fullmatch(text.strip().lower())
    if match is None:
        raise ValueError(f"cannot read {text[:40]!r} as a duration: use {DURATION_HELP}")
    amount, unit = float(match.group(1)), _DURATION_UNITS[match.group(2)]
    try:
        duration = timedelta(**{unit: amount})
    except OverflowError:
        raise ValueError(f"{text!r} is too long a duration") from None
    if duration <= timedelta(0):
        raise ValueError(f"{text!r}: the duration must be more than zero")
    return duration


def _child_name(collection: str, value: str, project: str | None) -> str:
    cleaned = value.strip()
    if cleaned.startswith("projects/"):
        parts = cleaned.split("/")
        if len(parts) != 4 or parts[2] != collection or not parts[1] or not parts[3]:
            raise ValueError(
                f"{value!r} is not a name of the form projects/PROJECT/{collection}/ID"
            )
        return cleaned
    if not cleaned or "/" in cleaned:
        raise ValueError(
            f"{value!r} is neither an id nor a name of the form projects/PROJECT/{collection}/ID"
        )
    return f"{project_name(project)}/{collection}/{cleaned}"


def log_name(log: str, project: str | None = None) -> str:
    """The full name of a log given by id or by name."""
    return _child_name("logs", log, project)


def dataset_name(dataset: str, project: str | None = None) -> str:
    """The full name of a dataset given by id or by name."""
    return _child_name("datasets", dataset, project)


def resource_id(name: str) -> str:
    """The last segment of a resource name (the id); the text itself when it has none."""
    return name.rstrip("/").rpartition("/")[2]


@dataclass(frozen=True, slots=True)
class LogPage:
    """Logs of a listing, newest first, and what the service said about the project.

    `limit_reached`: the project holds as many logs as its limit allows and new calls are
    not logged until logs are deleted; `notice` says so in words (or is empty).
    `next_page_token` continues the listing where it stopped ("" when nothing is left).
    """

    logs: list[Log]
    next_page_token: str
    limit_reached: bool
    notice: str


class LogTail:
    """A TailLogs call: each new log of the project, oldest first, as it is written."""

    def __init__(
        self, call: grpc.aio.UnaryStreamCall[logs_pb2.TailLogsRequest, logs_pb2.TailLogsResponse]
    ) -> None:
        self.call = call

    async def started(self) -> None:
        """Return once the gateway follows the project: every log written from then on
        comes through (the gateway sends the call's headers at that moment)."""
        await self.call.initial_metadata()

    async def _logs(self) -> AsyncIterator[Log]:
        async for message in self.call:
            yield message.log

    def __aiter__(self) -> AsyncIterator[Log]:
        return self._logs()

    def cancel(self) -> None:
        self.call.cancel()

    async def __aenter__(self) -> LogTail:
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.cancel()


class LogClient(ProjectClient):
    """Async client of gemini.gateway.v1.LogService; every call raises grpc.aio.AioRpcError.

    Construction: see gateway_client.ProjectClient (target or channel, token, project).
    """

    stub_class = logs_pb2_grpc.LogServiceStub
    stub: logs_pb2_grpc.LogServiceAsyncStub

    def log_name(self, log: str) -> str:
        """`log` (an id or a name) as a name under this client's project."""
        return log_name(log, self.project)

    async def list_page(
        self,
        *,
        filter: str = "",
        page_size: int = 0,
        page_token: str = "",
        full: bool = False,
        timeout: float | None = None,
    ) -> logs_pb2.ListLogsResponse:
        """One ListLogs page, newest first (request and response only when `full`)."""
        request = logs_pb2.ListLogsRequest(
            parent=self.parent,
            filter=filter,
            page_size=page_size,
            page_token=page_token,
            view=logs_pb2.LOG_VIEW_FULL if full else logs_pb2.LOG_VIEW_BASIC,
        )
        return await self.stub.ListLogs(request, metadata=self.metadata, timeout=timeout)

    async def list(
        self,
        *,
        filter: str = "",
        limit: int | None = 50,
        page_size: int = 0,
        full: bool = False,
        timeout: float | None = None,
    ) -> LogPage:
        """Up to `limit` logs matching `filter` (every one when None), newest first.

        Pages are read until the limit is reached; `page_size` is the size of each page
        (the service's default when 0, never more than what the limit still needs).
        """
        if limit is not None and limit < 1:
            raise ValueError("limit must be at least 1 (or None for every log)")
        logs: list[Log] = []
        token = ""
        while True:
            wanted = page_size
            if limit is not None:
                left = limit - len(logs)
                wanted = min(page_size, left) if page_size else min(left, 1000)
            page = await self.list_page(
                filter=filter, page_size=wanted, page_token=token, full=full, timeout=timeout
            )
            logs.extend(page.logs)
            token = page.next_page_token
            if not token or (limit is not None and len(logs) >= limit):
                break
        return LogPage(
            logs=logs[:limit] if limit is not None else logs,
            next_page_token=token,
            limit_reached=page.limit_reached,
            notice=page.notice,
        )

    async def get(self, log: str, *, full: bool = True, timeout: float | None = None) -> Log:
        """One log by id or name, with its request and response unless `full` is False."""
        request = logs_pb2.GetLogRequest(
            name=self.log_name(log),
            view=logs_pb2.LOG_VIEW_FULL if full else logs_pb2.LOG_VIEW_BASIC,
        )
        return await self.stub.GetLog(request, metadata=self.metadata, timeout=timeout)

    async def delete(
        self,
        logs: Sequence[str] = (),
        *,
        filter: str = "",
        everything: bool = False,
        timeout: float | None = None,
    ) -> int:
        """Delete logs by id or name, or those matching `filter`, or all; how many went."""
        if sum([bool(logs), bool(filter), everything]) != 1:
            raise ValueError("give log ids, a filter, or everything=True (exactly one of them)")
        request = logs_pb2.DeleteLogsRequest(
            parent=self.parent,
            names=[self.log_name(log) for log in logs],
            filter=filter,
            all=everything,
        )
        answer = await self.stub.DeleteLogs(request, metadata=self.metadata, timeout=timeout)
        return int(answer.deleted_count)

    async def settings(self, *, timeout: float | None = None) -> LoggingSettings:
        """The project's logging settings and state (log count, limit, skipped calls)."""
        request = logs_pb2.GetLoggingSettingsRequest(name=f"{self.parent}/loggingSettings")
        return await self.stub.GetLoggingSettings(request, metadata=self.metadata, timeout=timeout)

    async def update_settings(
        self,
        *,
        enabled: bool | None = None,
        max_logs: int | None = None,
        retention: timedelta | None = None,
        at_limit: AtLimit | None = None,
        timeout: float | None = None,
    ) -> LoggingSettings:
        """Change the settings given (None leaves one as it is); the new settings and state.

        Changes take effect for the project's next call, with no restart.
        """
        settings = LoggingSettings(name=f"{self.parent}/loggingSettings")
        paths = []
        if enabled is not None:
            settings.enabled = enabled
            paths.append("enabled")
        if max_logs is not None:
            settings.max_logs = max_logs
            paths.append("max_logs")
        if retention is not None:
            settings.retention.FromTimedelta(retention)
            paths.append("retention")
        if at_limit is not None:
            if at_limit not in _AT_LIMIT:
                raise ValueError(
                    f"at_limit must be 'stop_logging' or 'evict_oldest', not {at_limit!r}"
                )
            settings.at_limit = _AT_LIMIT[at_limit]
            paths.append("at_limit")
        if not paths:
            raise ValueError("nothing to change: give enabled, max_logs, retention or at_limit")
        request = logs_pb2.UpdateLoggingSettingsRequest(settings=settings)
        request.update_mask.paths.extend(paths)
        return await self.stub.UpdateLoggingSettings(
            request, metadata=self.metadata, timeout=timeout
        )

    def tail(
        self, *, filter: str = "", full: bool = False, timeout: float | None = None
    ) -> LogTail:
        """Follow the project's new logs (TailLogs) until cancelled or `timeout` seconds.

        Use it as `async with logs.tail() as tail:`, then `await tail.started()` and
        `async for log in tail:`; leaving the block ends the call.
        """
        request = logs_pb2.TailLogsRequest(
            parent=self.parent,
            filter=filter,
            view=logs_pb2.LOG_VIEW_FULL if full else logs_pb2.LOG_VIEW_BASIC,
        )
        return LogTail(self.stub.TailLogs(request, metadata=self.metadata, timeout=timeout))

    async def __aenter__(self) -> LogClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()
