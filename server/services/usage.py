"""gemini.gateway.v1.UsageService: usage and estimated cost by label, from the store.

Thin: identify the caller, check the project, translate the request, call the store's usage
queries, translate the answer. A caller reads only its own project's usage.
"""

from __future__ import annotations

from collections.abc import Awaitable
from datetime import UTC, datetime
from typing import Literal

import grpc
from google.protobuf import timestamp_pb2

from gemini_gateway.generated.gemini.gateway.v1 import usage_pb2, usage_pb2_grpc
from gemini_gateway.server import errors
from gemini_gateway.server.filters import FilterError
from gemini_gateway.server.identity import CallerDirectory, Identity
from gemini_gateway.server.pricing import PriceTable
from gemini_gateway.server.store import Store
from gemini_gateway.server.store.usage import (
    LabelPage,
    UsageQueryError,
    UsageSums,
    list_label_keys,
    list_label_values,
    query_usage,
)

MAX_PAGE_SIZE = 1000
_BUCKETS = {
    usage_pb2.TIME_BUCKET_UNSPECIFIED: None,
    usage_pb2.TIME_BUCKET_HOUR: "hour",
    usage_pb2.TIME_BUCKET_DAY: "day",
}


def _timestamp(value: datetime) -> timestamp_pb2.Timestamp:
    stamp = timestamp_pb2.Timestamp()
    stamp.FromDatetime(value)
    return stamp


def _time(
    message: usage_pb2.QueryUsageRequest, field: Literal["start_time", "end_time"]
) -> datetime | None:
    if not message.HasField(field):
        return None
    stamp = getattr(message, field)
    try:
        return stamp.ToDatetime(tzinfo=UTC)  # type: ignore[no-any-return]
    except (ValueError, OverflowError) as exc:
        raise errors.invalid_argument(f"{field} is out of range: {exc}", field=field) from None


def _page_size(value: int) -> int:
    if value < 0:
        raise errors.invalid_argument("page_size must not be negative", field="page_size")
    return min(value, MAX_PAGE_SIZE)


def _sums(message: usage_pb2.UsageRow, sums: UsageSums) -> usage_pb2.UsageRow:
    message.request_count = sums.request_count
    message.error_count = sums.error_count
    message.incomplete_count = sums.incomplete_count
    message.tokens.prompt = sums.prompt_tokens
    message.tokens.candidates = sums.candidates_tokens
    message.tokens.cached = sums.cached_tokens
    message.tokens.thoughts = sums.thoughts_tokens
    message.tokens.tool_use = sums.tool_use_tokens
    message.tokens.total = sums.total_tokens
    message.estimated_cost = sums.cost_usd
    return message


class UsageServicer(usage_pb2_grpc.UsageServiceServicer):
    def __init__(self, store: Store, callers: CallerDirectory, prices: PriceTable) -> None:
        self._store = store
        self._callers = callers
        self._prices = prices

    def _project(self, context: grpc.aio.ServicerContext, parent: str) -> str:
        """The project named by `parent` (`projects/{project}`), which must be the caller's."""
        identity: Identity = self._callers.identify(context.invocation_metadata() or ())
        if not parent:
            return identity.project
        kind, _, project = parent.partition("/")
        if kind != "projects" or not project or "/" in project:
            raise errors.invalid_argument(
                f"parent must look like projects/{{project}}, got {parent[:100]!r}", field="parent"
            )
        if project != "-":
            self._callers.check_project(identity, project)
        return identity.project

    async def QueryUsage(
        self, request: usage_pb2.QueryUsageRequest, context: grpc.aio.ServicerContext
    ) -> usage_pb2.QueryUsageResponse:
        async with errors.aborting_on_error(context):
            project = self._project(context, request.parent)
            start, end = _time(request, "start_time"), _time(request, "end_time")
            if start is not None and end is not None and start >= end:
                raise errors.invalid_argument("start_time must be before end_time", "start_time")
            if request.time_bucket not in _BUCKETS:
                raise errors.invalid_argument(
                    f"unknown time_bucket {request.time_bucket}", field="time_bucket"
                )
            try:
                page = await query_usage(
                    self._store,
                    project=project,
                    filter_text=request.filter,
                    start=start,
                    end=end,
                    group_by=list(request.group_by),
                    bucket=_BUCKETS[request.time_bucket],  # type: ignore[arg-type]
                    prices=self._prices,
                    page_size=_page_size(request.page_size),
                    page_token=request.page_token,
                )
            except FilterError as exc:
                # FilterError's text already starts with "filter: ".
                message = str(exc).removeprefix("filter: ")
                raise errors.invalid_argument(message, field="filter") from None
            except UsageQueryError as exc:
                raise errors.invalid_argument(str(exc)) from None
            response = usage_pb2.QueryUsageResponse(next_page_token=page.next_page_token)
            for row in page.rows:
                row_message = _sums(response.rows.add(), row)
                row_message.group_values.update(row.group)
                if row.bucket_start is not None:
                    row_message.bucket_start_time.CopyFrom(_timestamp(row.bucket_start))
            _sums(response.totals, page.totals)
            response.price_table.currency = self._prices.currency
            response.price_table.read_on = str(self._prices.read_on)
            response.price_table.source = self._prices.source
            return response

    async def ListLabelKeys(
        self, request: usage_pb2.ListLabelKeysRequest, context: grpc.aio.ServicerContext
    ) -> usage_pb2.ListLabelKeysResponse:
        async with errors.aborting_on_error(context):
            project = self._project(context, request.parent)
            page = await self._labels(
                list_label_keys(
                    self._store, project, request.prefix, _page_size(request.page_size),
                    request.page_token,
                )
            )  # fmt: skip
            return usage_pb2.ListLabelKeysResponse(
                label_keys=[
                    usage_pb2.LabelKeyCount(key=item.name, request_count=item.count)
                    for item in page.items
                ],
                next_page_token=page.next_page_token,
            )

    async def ListLabelValues(
        self, request: usage_pb2.ListLabelValuesRequest, context: grpc.aio.ServicerContext
    ) -> usage_pb2.ListLabelValuesResponse:
        async with errors.aborting_on_error(context):
            parent, marker, key = request.parent.rpartition("/labelKeys/")
            if not marker or not key:
                raise errors.invalid_argument(
                    "parent must look like projects/{project}/labelKeys/{key}, got "
                    f"{request.parent[:100]!r}",
                    field="parent",
                )
            project = self._project(context, parent)
            page = await self._labels(
                list_label_values(
                    self._store, project, key, request.prefix, _page_size(request.page_size),
                    request.page_token,
                )
            )  # fmt: skip
            return usage_pb2.ListLabelValuesResponse(
                label_values=[
                    usage_pb2.LabelValueCount(value=item.name, request_count=item.count)
                    for item in page.items
                ],
                next_page_token=page.next_page_token,
            )

    @staticmethod
    async def _labels(query: Awaitable[LabelPage]) -> LabelPage:
        try:
            return await query
        except UsageQueryError as exc:
            raise errors.invalid_argument(str(exc)) from None
