"""Usage and estimated cost by label, read from the gateway's UsageService.

`UsageClient.query` walks every page of a QueryUsage answer and returns one `UsageReport`
of plain dataclasses, so callers (the CLI, notebooks, billing scripts) never handle page
tokens or protobuf maps. `parse_since` reads the relative times people type ("7d").
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

from gemini_gateway.client.gateway_client import ProjectClient
from gemini_gateway.generated.gemini.gateway.v1 import usage_pb2, usage_pb2_grpc

Bucket = Literal["hour", "day"]

_BUCKETS: dict[Bucket | None, int] = {
    None: usage_pb2.TIME_BUCKET_UNSPECIFIED,
    "hour": usage_pb2.TIME_BUCKET_HOUR,
    "day": usage_pb2.TIME_BUCKET_DAY,
}
_UNITS = {"m": "minutes", "h": "hours", "d": "days", "w": "weeks"}
_RELATIVE = re.compile(r"(\d+)([mhdw])")
SINCE_HELP = "a duration back from now (90m, 24h, 7d, 2w) or an RFC 3339 time"


def parse_since(text: str, *, now: datetime | None = None) -> datetime:
    """The UTC time `text` names: `90m`, `24h`, `7d`, `2w` before now, or an RFC 3339 time.

    A date alone (`2026-11-01`) or a time without an offset is taken as UTC. Raises
    ValueError with a one-line message saying what is accepted.
    """
    cleaned = text.strip()
    relative = _RELATIVE.fullmatch(cleaned.lower())
    if relative:
        amount, unit = int(relative.group(1)), _UNITS[relative.group(2)]
        try:
            return (now or datetime.now(UTC)).astimezone(UTC) - timedelta(**{unit: amount})
        except OverflowError:
            raise ValueError(f"{text!r} reaches too far back") from None
    try:
        # fromisoformat reads RFC 3339 ("Z" included) and bare dates since Python 3.11.
        moment = datetime.fromisoformat(cleaned)
    except ValueError:
        raise ValueError(
            f"cannot read {text[:40]!r} as a time: use {SINCE_HELP} such as 2026-11-01T00:00:00Z"
        ) from None
    if moment.tzinfo is None:
        return moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC)


@dataclass(frozen=True, slots=True)
class TokenCounts:
    """Token sums as usageMetadata reports them; `prompt` includes `cached`."""

    prompt: int = 0
    candidates: int = 0
    cached: int = 0
    thoughts: int = 0
    tool_use: int = 0
    total: int = 0


@dataclass(frozen=True, slots=True)
class UsageRow:
    """One group (or the totals): its key values in group_by order, bucket, counts, cost."""

    group: dict[str, str]
    bucket_start: datetime | None
    request_count: int
    error_count: int
    incomplete_count: int
    tokens: TokenCounts
    estimated_cost: float


@dataclass(frozen=True, slots=True)
class PriceTableInfo:
    """Where the prices behind `estimated_cost` come from."""

    currency: str
    read_on: str
    source: str


@dataclass(frozen=True, slots=True)
class UsageReport:
    """Every row of a usage query, its totals and the price table used."""

    group_by: tuple[str, ...]
    bucket: Bucket | None
    start: datetime | None
    end: datetime | None
    rows: list[UsageRow]
    totals: UsageRow
    price_table: PriceTableInfo

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready: times as RFC 3339 strings, everything else as plain values."""
        return {
            "group_by": list(self.group_by),
            "bucket": self.bucket,
            "start": _iso(self.start),
            "end": _iso(self.end),
            "rows": [_row_dict(row) for row in self.rows],
            "totals": _row_dict(self.totals),
            "price_table": asdict(self.price_table),
        }


@dataclass(frozen=True, slots=True)
class LabelCount:
    """A label key or value, and how many recorded calls carried it."""

    name: str
    request_count: int


def _iso(moment: datetime | None) -> str | None:
    return None if moment is None else moment.isoformat().replace("+00:00", "Z")


def _row_dict(row: UsageRow) -> dict[str, Any]:
    data = asdict(row)
    data["bucket_start"] = _iso(row.bucket_start)
    return data


def _row(message: usage_pb2.UsageRow, group_by: Sequence[str]) -> UsageRow:
    tokens = message.tokens
    return UsageRow(
        # Protobuf maps have no order: put the values back in the order they were asked for.
        group={key: message.group_values.get(key, "") for key in group_by},
        bucket_start=(
            message.bucket_start_time.ToDatetime(tzinfo=UTC)
            if message.HasField("bucket_start_time")
            else None
        ),
        request_count=message.request_count,
        error_count=message.error_count,
        incomplete_count=message.incomplete_count,
        tokens=TokenCounts(
            prompt=tokens.prompt,
            candidates=tokens.candidates,
            cached=tokens.cached,
            thoughts=tokens.thoughts,
            tool_use=tokens.tool_use,
            total=tokens.total,
        ),
        estimated_cost=message.estimated_cost,
    )


class UsageClient(ProjectClient):
    """Async client of gemini.gateway.v1.UsageService.

    Construction: see gateway_client.ProjectClient (target or channel, token, project).
    """

    stub_class = usage_pb2_grpc.UsageServiceStub
    stub: usage_pb2_grpc.UsageServiceAsyncStub

    @property
    def _parent(self) -> str:
        """The project to read; empty (the caller's own) when none was named."""
        return self.parent if self.project else ""

    async def query(
        self,
        group_by: Sequence[str] = (),
        *,
        filter: str = "",
        start: datetime | None = None,
        end: datetime | None = None,
        bucket: Bucket | None = None,
        page_size: int = 0,
        timeout: float | None = None,
    ) -> UsageReport:
        """Usage in [start, end) grouped by `group_by`, every page; raises AioRpcError.

        `bucket` ("hour" or "day") makes a time series: one row per group and bucket.
        """
        if bucket not in _BUCKETS:
            raise ValueError(f"bucket must be 'hour', 'day' or None, not {bucket!r}")
        keys = tuple(group_by)
        request = usage_pb2.QueryUsageRequest(
            parent=self._parent,
            filter=filter,
            group_by=keys,
            time_bucket=_BUCKETS[bucket],  # type: ignore[arg-type]
            page_size=page_size,
        )
        if start is not None:
            request.start_time.FromDatetime(start.astimezone(UTC))
        if end is not None:
            request.end_time.FromDatetime(end.astimezone(UTC))
        rows: list[UsageRow] = []
        while True:
            page = await self.stub.QueryUsage(request, metadata=self.metadata, timeout=timeout)
            rows.extend(_row(message, keys) for message in page.rows)
            if not page.next_page_token:
                break
            request.page_token = page.next_page_token
        return UsageReport(
            group_by=keys,
            bucket=bucket,
            start=start,
            end=end,
            rows=rows,
            # Totals cover the whole query and are the same on every page: take the last.
            totals=_row(page.totals, ()),
            price_table=PriceTableInfo(
                currency=page.price_table.currency,
                read_on=page.price_table.read_on,
                source=page.price_table.source,
            ),
        )

    async def label_keys(
        self, prefix: str = "", *, page_size: int = 0, timeout: float | None = None
    ) -> list[LabelCount]:
        """Label keys seen on the project's calls, most used first (every page)."""
        request = usage_pb2.ListLabelKeysRequest(
            parent=self._parent, prefix=prefix, page_size=page_size
        )
        found: list[LabelCount] = []
        while True:
            page = await self.stub.ListLabelKeys(request, metadata=self.metadata, timeout=timeout)
            found.extend(LabelCount(item.key, item.request_count) for item in page.label_keys)
            if not page.next_page_token:
                return found
            request.page_token = page.next_page_token

    async def label_values(
        self, key: str, prefix: str = "", *, page_size: int = 0, timeout: float | None = None
    ) -> list[LabelCount]:
        """Values seen for label `key` (`team` or `labels.team`), most used first."""
        key = key.removeprefix("labels.")
        project = self._parent or "projects/-"
        request = usage_pb2.ListLabelValuesRequest(
            parent=f"{project}/labelKeys/{key}", prefix=prefix, page_size=page_size
        )
        found: list[LabelCount] = []
        while True:
            page = await self.stub.ListLabelValues(request, metadata=self.metadata, timeout=timeout)
            found.extend(LabelCount(item.value, item.request_count) for item in page.label_values)
            if not page.next_page_token:
                return found
            request.page_token = page.next_page_token

    async def __aenter__(self) -> UsageClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()
