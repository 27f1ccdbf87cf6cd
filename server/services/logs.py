"""gemini.gateway.v1.LogService: a project's request logs and logging settings.

Thin over the log store (server/store/logs.py): it checks names and arguments, keeps every
caller inside its own project, and turns log records into `Log` messages. TailLogs follows
the LogBus, which says which logs of the project were just written.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Sequence
from datetime import datetime

import grpc
from google.protobuf import duration_pb2, json_format, timestamp_pb2
from google.protobuf.message import DecodeError, Message
from google.rpc import status_pb2

from gemini_gateway.generated.gemini.gateway.v1 import logs_pb2, logs_pb2_grpc
from gemini_gateway.server import errors
from gemini_gateway.server.filters import FilterError
from gemini_gateway.server.identity import CallerDirectory, Identity
from gemini_gateway.server.log_event import LoggingPolicy, is_project_id, log_name, parse_log_name
from gemini_gateway.server.log_tail import LogBus
from gemini_gateway.server.request_log import LoggingPolicies
from gemini_gateway.server.store import logs as log_store
from gemini_gateway.server.store.engine import Store

log = logging.getLogger(__name__)

DEFAULT_PAGE_SIZE = 50
MAX_PAGE_SIZE = 1000
MAX_DELETE_NAMES = 1000
MAX_LOGS_LIMIT = 1_000_000
MAX_RETENTION_S = 3650 * 86_400  # ten years
SETTINGS_FIELDS = ("enabled", "max_logs", "retention", "at_limit")

_AT_LIMIT_NAMES = {
    logs_pb2.STOP_LOGGING: "stop_logging",
    logs_pb2.EVICT_OLDEST: "evict_oldest",
}
_AT_LIMIT_VALUES = {name: value for value, name in _AT_LIMIT_NAMES.items()}
_VIEWS = frozenset(logs_pb2.LogView.values())


def _timestamp(value: datetime) -> timestamp_pb2.Timestamp:
    stamp = timestamp_pb2.Timestamp()
    stamp.FromDatetime(value)
    return stamp


def _duration_ms(ms: float) -> duration_pb2.Duration:
    duration = duration_pb2.Duration()
    duration.FromNanoseconds(round(ms * 1_000_000))
    return duration


def _status_code(name: str) -> int:
    code = errors.STATUS_BY_NAME.get(name, grpc.StatusCode.UNKNOWN)
    return int(code.value[0])


def _json_into(text: str, message: Message) -> None:
    # Logs of v1 calls and of older gateways parse into v1beta's messages: skip what it lacks.
    if text:
        try:
            json_format.Parse(text, message, ignore_unknown_fields=True)
        except json_format.ParseError:
            message.Clear()


def _stored_into(record: log_store.LogRecord, message: Message, *, response: bool = False) -> None:
    """The log's request (`response`: response) into `message`, a v1beta one: a v1beta log's
    bytes straight in; v1 logs and logs kept as JSON through JSON."""
    data = record.response_pb if response else record.request_pb
    if data is not None and record.api_version == "v1beta":
        try:
            message.ParseFromString(data)
        except DecodeError:
            log.warning("a stored %s does not parse", "response" if response else "request")
            message.Clear()
        # Fields the gateway's protos lack never went upstream (nor into the JSON): none here.
        message.DiscardUnknownFields()
        return
    _json_into(record.response_json if response else record.request_json, message)


def log_message(record: log_store.LogRecord, *, full: bool) -> logs_pb2.Log:
    """A stored log as the API shows it; `full` adds the request, response and offsets."""
    message = logs_pb2.Log(
        name=log_name(record.project, record.id),
        create_time=_timestamp(record.create_time),
        model=record.model,
        method=record.method,
        api_version=record.api_version,
        status=status_pb2.Status(code=_status_code(record.status), message=record.error_message),
        caller=record.caller,
        labels=record.labels,
        latency=_duration_ms(record.latency_ms),
        incomplete=record.incomplete,
        prompt_preview=record.prompt_preview,
        response_preview=record.response_preview,
        finish_reason=record.finish_reason,
        response_id=record.response_id,
        datasets=[f"projects/{record.project}/datasets/{d}" for d in record.datasets],
    )
    if record.first_chunk_ms is not None:
        message.time_to_first_chunk.CopyFrom(_duration_ms(record.first_chunk_ms))
    tokens = message.tokens
    tokens.prompt = record.prompt_tokens
    tokens.candidates = record.candidates_tokens
    tokens.cached = record.cached_tokens
    tokens.thoughts = record.thoughts_tokens
    tokens.tool_use = record.tool_use_tokens
    tokens.total = record.total_tokens
    if full:
        _stored_into(record, message.request)
        _stored_into(record, message.response, response=True)
        message.chunk_offsets.extend(_duration_ms(ms) for ms in record.chunk_offsets_ms or ())
    return message


def limit_notice(project: str, policy: LoggingPolicy, count: int) -> str:
    """What a caller of a project at its limit under stop_logging must be told, or ""."""
    if policy.at_limit != "stop_logging" or count < policy.max_logs:
        return ""
    return (
        f"project {project} holds {count} logs, its limit of {policy.max_logs}: new calls are "
        "not logged until logs are deleted (DeleteLogs), the limit is raised or the policy "
        "at the limit is EVICT_OLDEST (UpdateLoggingSettings)"
    )


def _view(value: int, default: int) -> bool:
    """True for the FULL view."""
    if value not in _VIEWS:
        raise errors.invalid_argument(f"unknown view {value}", field="view")
    return (default if value == logs_pb2.LOG_VIEW_UNSPECIFIED else value) == logs_pb2.LOG_VIEW_FULL


def _page_size(value: int) -> int:
    if value < 0:
        raise errors.invalid_argument("page_size must not be negative", field="page_size")
    return min(value or DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE)


def _filter_error(exc: FilterError, field: str = "filter") -> errors.UpstreamError:
    # FilterError's text already starts with "filter: ".
    return errors.invalid_argument(str(exc).removeprefix("filter: "), field=field)


class LogServicer(logs_pb2_grpc.LogServiceServicer):
    def __init__(
        self, store: Store, callers: CallerDirectory, policies: LoggingPolicies, bus: LogBus
    ) -> None:
        self._store = store
        self._callers = callers
        self._policies = policies
        self._bus = bus

    # -- names ------------------------------------------------------------------------

    def _identity(self, context: grpc.aio.ServicerContext) -> Identity:
        return self._callers.identify(context.invocation_metadata() or ())

    def _own(self, identity: Identity, project: str) -> str:
        """`project` (`-` meaning the caller's own), which must be the caller's."""
        if project != "-":
            self._callers.check_project(identity, project)
        return identity.project

    def _parent(self, context: grpc.aio.ServicerContext, parent: str) -> str:
        """The project of `parent` (`projects/{project}`; empty means the caller's own)."""
        identity = self._identity(context)
        if not parent:
            return identity.project
        kind, _, project = parent.partition("/")
        if kind != "projects" or not is_project_id(project):
            raise errors.invalid_argument(
                f"parent must look like projects/{{project}}, got {parent[:100]!r}", field="parent"
            )
        return self._own(identity, project)

    def _settings_project(self, context: grpc.aio.ServicerContext, name: str, field: str) -> str:
        parts = name.split("/")
        if (
            len(parts) != 3
            or parts[0] != "projects"
            or parts[2] != "loggingSettings"
            or not is_project_id(parts[1])
        ):
            raise errors.invalid_argument(
                f"{field} must look like projects/{{project}}/loggingSettings, got {name[:100]!r}",
                field=field,
            )
        return self._own(self._identity(context), parts[1])

    def _log_ids(self, identity: Identity, names: Sequence[str], field: str) -> list[str]:
        """Ids of log names, each of which must name a log of the caller's project."""
        ids = []
        for index, name in enumerate(names):
            parsed = parse_log_name(name)
            path = f"{field}[{index}]" if field == "names" else field
            if parsed is None:
                raise errors.invalid_argument(
                    f"{path} must look like projects/{{project}}/logs/{{log}}, got {name[:100]!r}",
                    field=path,
                )
            self._own(identity, parsed[0])
            ids.append(parsed[1])
        return ids

    # -- logs -------------------------------------------------------------------------

    async def ListLogs(
        self, request: logs_pb2.ListLogsRequest, context: grpc.aio.ServicerContext
    ) -> logs_pb2.ListLogsResponse:
        async with errors.aborting_on_error(context):
            project = self._parent(context, request.parent)
            full = _view(request.view, logs_pb2.LOG_VIEW_BASIC)
            page_size = _page_size(request.page_size)
            try:
                records, next_token = await log_store.list_logs(
                    self._store,
                    project,
                    filter_text=request.filter,
                    page_size=page_size,
                    page_token=request.page_token,
                    full=full,
                )
            except FilterError as exc:
                raise _filter_error(exc) from None
            except ValueError as exc:
                raise errors.invalid_argument(str(exc), field="page_token") from None
            notice = limit_notice(
                project,
                self._policies.policy_for(project),
                await log_store.count_logs(self._store, project),
            )
            return logs_pb2.ListLogsResponse(
                logs=[log_message(record, full=full) for record in records],
                next_page_token=next_token,
                limit_reached=bool(notice),
                notice=notice,
            )

    async def GetLog(
        self, request: logs_pb2.GetLogRequest, context: grpc.aio.ServicerContext
    ) -> logs_pb2.Log:
        async with errors.aborting_on_error(context):
            if not request.name:
                raise errors.invalid_argument("name is required", field="name")
            identity = self._identity(context)
            [log_id] = self._log_ids(identity, [request.name], "name")
            project = identity.project
            full = _view(request.view, logs_pb2.LOG_VIEW_FULL)
            records = await log_store.get_logs(self._store, project, [log_id], full=full)
            if not records:
                raise errors.UpstreamError(
                    grpc.StatusCode.NOT_FOUND, f"log {log_name(project, log_id)} not found"
                )
            return log_message(records[0], full=full)

    async def DeleteLogs(
        self, request: logs_pb2.DeleteLogsRequest, context: grpc.aio.ServicerContext
    ) -> logs_pb2.DeleteLogsResponse:
        async with errors.aborting_on_error(context):
            project = self._parent(context, request.parent)
            ways = [bool(request.names), bool(request.filter), request.all]
            if sum(ways) != 1:
                raise errors.invalid_argument(
                    "say which logs to delete in exactly one way: names, filter or all"
                )
            if len(request.names) > MAX_DELETE_NAMES:
                raise errors.invalid_argument(
                    f"at most {MAX_DELETE_NAMES} names per call, got {len(request.names)}",
                    field="names",
                )
            ids = self._log_ids(self._identity(context), request.names, "names")
            try:
                deleted = await log_store.delete_logs(
                    self._store,
                    project,
                    ids=ids,
                    filter_text=request.filter,
                    everything=request.all,
                )
            except FilterError as exc:
                raise _filter_error(exc) from None
            return logs_pb2.DeleteLogsResponse(deleted_count=deleted)

    async def TailLogs(
        self, request: logs_pb2.TailLogsRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[logs_pb2.TailLogsResponse]:
        async with errors.aborting_on_error(context):
            project = self._parent(context, request.parent)
            full = _view(request.view, logs_pb2.LOG_VIEW_BASIC)
            try:  # a bad filter fails the call before anything is followed
                log_store.log_condition(project, request.filter, self._store.dialect)
            except FilterError as exc:
                raise _filter_error(exc) from None
            async with self._bus.subscribe(project) as subscription:
                # Headers now: a caller that awaits them knows every log from here is followed.
                await context.send_initial_metadata(())
                async for ids in subscription:  # oldest first
                    records = await log_store.get_logs(
                        self._store, project, ids, full=full, filter_text=request.filter
                    )
                    records.sort(key=lambda record: record.id)  # ids sort by arrival
                    for record in records:
                        yield logs_pb2.TailLogsResponse(log=log_message(record, full=full))

    # -- settings ---------------------------------------------------------------------

    async def _settings(self, project: str) -> logs_pb2.LoggingSettings:
        record = await log_store.read_settings(self._store, project)
        return await self._settings_message(project, record)

    async def _settings_message(
        self, project: str, record: log_store.SettingsRecord
    ) -> logs_pb2.LoggingSettings:
        policy = self._policies.effective(project, record)
        count = await log_store.count_logs(self._store, project)
        notice = limit_notice(project, policy, count)
        message = logs_pb2.LoggingSettings(
            name=f"projects/{project}/loggingSettings",
            enabled=policy.enabled,
            max_logs=policy.max_logs,
            at_limit=_AT_LIMIT_VALUES[policy.at_limit],
            log_count=count,
            limit_reached=bool(notice),
            skipped_at_limit_count=record.skipped_at_limit,
            skipped_media_count=record.skipped_media,
            evicted_count=record.evicted,
            expired_count=record.expired,
            notice=notice,
        )
        message.retention.FromNanoseconds(round(policy.retention_s * 1e9))
        if record.update_time is not None:
            message.update_time.CopyFrom(_timestamp(record.update_time))
        return message

    async def GetLoggingSettings(
        self, request: logs_pb2.GetLoggingSettingsRequest, context: grpc.aio.ServicerContext
    ) -> logs_pb2.LoggingSettings:
        async with errors.aborting_on_error(context):
            project = self._settings_project(context, request.name, "name")
            return await self._settings(project)

    async def UpdateLoggingSettings(
        self, request: logs_pb2.UpdateLoggingSettingsRequest, context: grpc.aio.ServicerContext
    ) -> logs_pb2.LoggingSettings:
        async with errors.aborting_on_error(context):
            settings = request.settings
            project = self._settings_project(context, settings.name, "settings.name")
            changes = settings_changes(settings, list(request.update_mask.paths))
            record = await self._policies.update(project, changes)
            return await self._settings_message(project, record)


def _mask_paths(settings: logs_pb2.LoggingSettings, paths: list[str]) -> list[str]:
    if not paths:  # every settable field that is set
        paths = [name for name in ("enabled", "max_logs", "retention") if settings.HasField(name)]
        if settings.at_limit != logs_pb2.AT_LIMIT_POLICY_UNSPECIFIED:
            paths.append("at_limit")
        if not paths:
            raise errors.invalid_argument(
                f"nothing to change: set one of {', '.join(SETTINGS_FIELDS)} (or name them "
                "in update_mask)",
                field="update_mask",
            )
    for path in paths:
        if path not in SETTINGS_FIELDS:
            raise errors.invalid_argument(
                f"update_mask names {path!r}, which cannot be changed; "
                f"fields: {', '.join(SETTINGS_FIELDS)}",
                field="update_mask",
            )
    return paths


def settings_changes(settings: logs_pb2.LoggingSettings, paths: list[str]) -> dict[str, object]:
    """The store's changes for UpdateLoggingSettings; a masked field left unset (or
    AT_LIMIT_POLICY_UNSPECIFIED) goes back to the configured default (None)."""
    changes: dict[str, object] = {}
    for path in _mask_paths(settings, paths):
        if path == "enabled":
            changes["enabled"] = settings.enabled if settings.HasField("enabled") else None
        elif path == "max_logs":
            changes["max_logs"] = _max_logs(settings) if settings.HasField("max_logs") else None
        elif path == "retention":
            changes["retention_s"] = (
                _retention_s(settings) if settings.HasField("retention") else None
            )
        elif path == "at_limit":
            changes["at_limit"] = _at_limit(settings.at_limit)
    return changes


def _max_logs(settings: logs_pb2.LoggingSettings) -> int:
    if not 1 <= settings.max_logs <= MAX_LOGS_LIMIT:
        raise errors.invalid_argument(
            f"max_logs must be between 1 and {MAX_LOGS_LIMIT:,}, got {settings.max_logs}",
            field="settings.max_logs",
        )
    return settings.max_logs


def _retention_s(settings: logs_pb2.LoggingSettings) -> float:
    retention = settings.retention
    valid = -999_999_999 <= retention.nanos <= 999_999_999 and (
        retention.seconds * retention.nanos >= 0
    )
    seconds = retention.seconds + retention.nanos / 1e9
    if not valid or not 0 < seconds <= MAX_RETENTION_S:
        raise errors.invalid_argument(
            "retention must be more than 0 and at most 3650 days (ten years)",
            field="settings.retention",
        )
    return seconds


def _at_limit(value: logs_pb2.AtLimitPolicy.ValueType) -> str | None:
    if value == logs_pb2.AT_LIMIT_POLICY_UNSPECIFIED:
        return None
    name = _AT_LIMIT_NAMES.get(value)
    if name is None:
        raise errors.invalid_argument(f"unknown at_limit {value}", field="settings.at_limit")
    return name
