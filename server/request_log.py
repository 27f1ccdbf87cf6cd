"""Request logging on the call path: which calls are logged, and what a logged call saw.

`LoggingPolicies` keeps every project's logging policy in memory (the store's overrides,
set through UpdateLoggingSettings, over the project's configuration over the gateway-wide
settings), refreshed from the store every few seconds so a change made on another replica
takes effect here too; it also runs the periodic purge of expired logs.

`LogCapture` decides at the start of each generate call whether it is logged. A logged call
is followed by a `LoggedCallMeter`: the call's `CallMeter` that also keeps the request and
each response with its arrival time, and when the call ends hands one `LogEvent` to the
recorder beside its usage event, with the same figures. Turning messages into JSON is the
writer's work, off the call path.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
from collections.abc import Mapping
from datetime import UTC, datetime

from google.protobuf.descriptor import Descriptor

from gemini_gateway.generated.google.ai.generativelanguage.v1beta import (
    content_pb2,
    generative_service_pb2,
)
from gemini_gateway.server import errors
from gemini_gateway.server.config import ProjectLoggingConfig, Settings
from gemini_gateway.server.identity import Identity
from gemini_gateway.server.log_event import LogEvent, LoggingPolicy, LogSkip, new_log_id
from gemini_gateway.server.metering import CallMeter, UsageMetrics
from gemini_gateway.server.recorder import Recorder, UsageEvent
from gemini_gateway.server.store import logs as log_store
from gemini_gateway.server.store.engine import Store, describe_error

log = logging.getLogger(__name__)

# How often the policies are read again from the store: a change made through another
# replica's UpdateLoggingSettings takes effect here within this time.
REFRESH_INTERVAL_S = 2.0
_DAY_S = 86_400.0

# v1's messages have the same shape where it matters here; typed as v1beta's, as CallMeter's.
GenerateRequest = generative_service_pb2.GenerateContentRequest
GenerateResponse = generative_service_pb2.GenerateContentResponse

# Inputs AI Studio does not log: video, GIF and PDF.
_UNLOGGED_MIME_PREFIXES = ("video/",)
_UNLOGGED_MIME_TYPES = frozenset({"image/gif", "application/pdf"})


class LoggingPolicies:
    """Each project's logging policy in force, from memory; kept fresh from the store."""

    def __init__(self, settings: Settings, store: Store) -> None:
        self._settings = settings
        self._store = store
        self._default = LoggingPolicy(
            enabled=settings.logging_enabled,
            max_logs=settings.log_max_logs,
            retention_s=settings.log_retention_days * _DAY_S,
            at_limit=settings.log_at_limit,
        )
        # Configured projects over the gateway-wide default, before any store override.
        self._configured = {
            project: _over(self._default, config.logging)
            for project, config in settings.projects.items()
        }
        # Replaced whole on refresh, so a reader never sees half of an update.
        self._policies: dict[str, LoggingPolicy] = dict(self._configured)
        self._tasks: list[asyncio.Task[None]] = []
        self._refresh_failing = False
        self._updates = 0  # update() calls so far: a refresh started before one is stale

    def policy_for(self, project: str) -> LoggingPolicy:
        """The policy in force for `project` (called on every generate call: a dict lookup)."""
        return self._policies.get(project, self._default)

    def effective(self, project: str, record: log_store.SettingsRecord | None) -> LoggingPolicy:
        """`project`'s policy given its store overrides (`record`; None: none)."""
        base = self._configured.get(project, self._default)
        if record is None:
            return base
        return LoggingPolicy(
            enabled=base.enabled if record.enabled is None else record.enabled,
            max_logs=base.max_logs if record.max_logs is None else record.max_logs,
            retention_s=base.retention_s if record.retention_s is None else record.retention_s,
            at_limit=base.at_limit if record.at_limit is None else record.at_limit,
        )

    async def refresh(self) -> None:
        """Read every project's overrides from the store again (raises if the store fails)."""
        updates = self._updates
        overrides = await log_store.read_all_overrides(self._store)
        if self._updates != updates:
            return  # an update landed meanwhile and this read may predate it: wait for the next
        policies = dict(self._configured)
        for project, record in overrides.items():
            policies[project] = self.effective(project, record)
        self._policies = policies

    async def update(self, project: str, changes: Mapping[str, object]) -> log_store.SettingsRecord:
        """Change `project`'s overrides; the next call on this replica follows them."""
        record = await log_store.update_settings(self._store, project, changes)
        self._updates += 1
        self._policies = {**self._policies, project: self.effective(project, record)}
        return record

    async def start(self) -> None:
        """Load the policies, then keep them fresh and purge expired logs in the background."""
        await self._refresh_quietly()
        loop = asyncio.get_running_loop()
        self._tasks = [
            loop.create_task(self._keep_fresh(), name="logging-policies-refresh"),
            loop.create_task(self._purge_periodically(), name="request-logs-purge"),
        ]

    async def stop(self) -> None:
        tasks, self._tasks = self._tasks, []
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _refresh_quietly(self) -> None:
        # A failing store keeps the last known policies; said once per outage.
        try:
            await self.refresh()
        except Exception as exc:
            if not self._refresh_failing:
                self._refresh_failing = True
                log.warning(
                    "logging settings could not be read from the store (%s); "
                    "keeping the last known ones",
                    describe_error(exc),
                )
        else:
            if self._refresh_failing:
                self._refresh_failing = False
                log.info("logging settings are read from the store again")

    async def _keep_fresh(self) -> None:
        while True:
            await asyncio.sleep(REFRESH_INTERVAL_S)
            await self._refresh_quietly()

    async def _purge_periodically(self) -> None:
        # First at start: a gateway restarted more often than the interval still purges.
        while True:
            try:
                purged = await log_store.purge_expired(self._store, self.policy_for)
            except Exception as exc:
                log.warning("purge of expired request logs failed: %s", describe_error(exc))
            else:
                if purged:
                    log.info("purged %d expired request logs", purged)
            await asyncio.sleep(self._settings.log_purge_interval_s)


def _over(base: LoggingPolicy, config: ProjectLoggingConfig) -> LoggingPolicy:
    """A project's configured logging settings over the gateway-wide ones."""
    return LoggingPolicy(
        enabled=base.enabled if config.enabled is None else config.enabled,
        max_logs=base.max_logs if config.max_logs is None else config.max_logs,
        retention_s=(
            base.retention_s if config.retention_days is None else config.retention_days * _DAY_S
        ),
        at_limit=base.at_limit if config.at_limit is None else config.at_limit,
    )


def _unlogged_mime(mime_type: str) -> bool:
    kind = mime_type.partition(";")[0].strip().lower()
    return kind in _UNLOGGED_MIME_TYPES or kind.startswith(_UNLOGGED_MIME_PREFIXES)


def _part_has_unlogged_media(part: content_pb2.Part) -> bool:
    kind = part.WhichOneof("data")
    if kind == "inline_data":
        return _unlogged_mime(part.inline_data.mime_type)
    if kind == "file_data":
        return _unlogged_mime(part.file_data.mime_type)
    if kind == "function_response":
        # A function's answer may carry media of its own (FunctionResponsePart.inline_data).
        return any(
            inner.WhichOneof("data") == "inline_data"
            and _unlogged_mime(inner.inline_data.mime_type)
            for inner in part.function_response.parts
        )
    return False


def has_unlogged_media(request: GenerateRequest) -> bool:
    """True if any turn or the system instruction holds video, GIF or PDF (inline or file)."""
    contents = list(request.contents)
    # v1's request has no system instruction.
    if "system_instruction" in request.DESCRIPTOR.fields_by_name and request.HasField(
        "system_instruction"
    ):
        contents.append(request.system_instruction)
    return any(_part_has_unlogged_media(part) for content in contents for part in content.parts)


@functools.cache
def _api_version(request_type: Descriptor) -> str:
    # google.ai.generativelanguage.v1beta.GenerateContentRequest -> v1beta
    return request_type.full_name.rsplit(".", 2)[-2]


def _error_message(error: BaseException | None) -> str:
    """The status message the caller receives for a call that ended with `error`."""
    if error is None:
        return ""
    if isinstance(error, errors.UpstreamError):
        return error.message
    if isinstance(error, asyncio.CancelledError | GeneratorExit):
        return ""  # the caller went away: it receives nothing from the gateway
    return errors.client_status(error).message  # as errors.aborting_on_error answers it


class LoggedCallMeter(CallMeter):
    """A CallMeter that also keeps what the call saw, for one LogEvent when it ends.

    Per chunk it only appends the message and its arrival time; the token counts, latency,
    first chunk and completeness are the usage event's own.
    """

    __slots__ = ("_arrivals", "_created", "_log_id", "_log_recorder", "_request", "_responses")

    def __init__(
        self,
        log_recorder: Recorder,
        recorder: Recorder | None,
        metrics: UsageMetrics,
        identity: Identity,
        request: GenerateRequest,
        labels: Mapping[str, str],
        method: str,
        streaming: bool,
    ) -> None:
        super().__init__(recorder, metrics, identity, request, labels, method, streaming)
        self._log_recorder = log_recorder
        now_s = time.time()  # one reading: the id's time is the log's create_time
        self._log_id = new_log_id(now_s)
        self._created = datetime.fromtimestamp(now_s, UTC)
        self._request = request
        self._responses: list[GenerateResponse] = []
        self._arrivals: list[float] = []

    def response(self, message: GenerateResponse) -> None:
        arrival = time.perf_counter()
        if self._first_chunk is None:
            self._first_chunk = arrival  # one clock reading: first offset == first chunk
        super().response(message)
        self._responses.append(message)
        self._arrivals.append(arrival)

    def finish(self, error: BaseException | None) -> UsageEvent:
        usage = super().finish(error)
        started = self._started
        self._log_recorder.record(
            LogEvent(
                id=self._log_id,
                project=usage.project,
                caller=usage.caller,
                create_time=self._created,
                model=usage.model,
                method=usage.method,
                api_version=_api_version(self._request.DESCRIPTOR),
                labels=usage.labels,
                status=usage.status,
                error_message=_error_message(error),
                latency_ms=usage.latency_ms,
                first_chunk_ms=usage.first_chunk_ms,
                prompt_tokens=usage.prompt_tokens,
                candidates_tokens=usage.candidates_tokens,
                cached_tokens=usage.cached_tokens,
                thoughts_tokens=usage.thoughts_tokens,
                tool_use_tokens=usage.tool_use_tokens,
                total_tokens=usage.total_tokens,
                incomplete=usage.incomplete,
                request=self._request,
                responses=self._responses,
                chunk_offsets_ms=(
                    [(arrival - started) * 1000 for arrival in self._arrivals]
                    if self._streaming
                    else []
                ),
            )
        )
        return usage


class LogCapture:
    """Chooses, per generate call, a plain CallMeter or one that logs the call too."""

    def __init__(self, recorder: Recorder, policies: LoggingPolicies) -> None:
        self._recorder = recorder
        self._policies = policies

    def meter(
        self,
        recorder: Recorder | None,
        metrics: UsageMetrics,
        identity: Identity,
        request: GenerateRequest,
        labels: Mapping[str, str],
        method: str,
        streaming: bool,
    ) -> CallMeter:
        """The meter of a call about to be sent upstream (labels already merged into it).

        Arguments are CallMeter's. A call of a project with logging on whose input holds
        video, GIF or PDF is not logged; it is counted as skipped.
        """
        project = identity.project
        if not self._policies.policy_for(project).enabled:
            return CallMeter(recorder, metrics, identity, request, labels, method, streaming)
        if has_unlogged_media(request):
            self._recorder.record(LogSkip(project, "media"))
            return CallMeter(recorder, metrics, identity, request, labels, method, streaming)
        return LoggedCallMeter(
            self._recorder, recorder, metrics, identity, request, labels, method, streaming
        )
