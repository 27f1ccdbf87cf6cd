"""Usage queries: exact for any range (rollups + raw edges), grouped, filtered, paged."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import sqlalchemy as sa
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gemini_gateway.server.filters import FilterError
from gemini_gateway.server.pricing import LONG_PROMPT_TOKENS, PriceTable, TokenSums
from gemini_gateway.server.recorder import UsageEvent
from gemini_gateway.server.store import Store
from gemini_gateway.server.store.models import (
    UsageDaily,
    UsageDailyByLabel,
    UsageHourly,
    UsageHourlyByLabel,
    UsageLabelValue,
)
from gemini_gateway.server.store.usage import (
    NONE_VALUE,
    InvalidPageToken,
    UsagePage,
    UsageQueryError,
    list_label_keys,
    list_label_values,
    query_usage,
    rebuild_rollups,
    write_usage_batch,
)
from tests.store.conftest import clear
from tests.store.support import T0, event

HOUR = timedelta(hours=1)
DAY = timedelta(days=1)

# ---------------------------------------------------------------------------------------------
# The oracle: the same answer computed in Python from the events themselves.

Key = tuple[datetime | None, tuple[str, ...]]


def _group_value(e: UsageEvent, key: str) -> str:
    if key.startswith("labels."):
        return e.labels.get(key[len("labels.") :], NONE_VALUE)
    return str(getattr(e, key))


def _bucket(t: datetime, bucket: str | None) -> datetime | None:
    if bucket is None:
        return None
    t = t.astimezone(UTC).replace(minute=0, second=0, microsecond=0)
    return t.replace(hour=0) if bucket == "day" else t


def brute_force(
    events: Sequence[UsageEvent],
    prices: PriceTable,
    *,
    project: str | None,
    start: datetime | None,
    end: datetime | None,
    group_by: Sequence[str],
    bucket: str | None,
    keep: Callable[[UsageEvent], bool] = lambda e: True,
) -> dict[Key, list[float]]:
    out: dict[Key, list[float]] = {}
    for e in events:
        if project is not None and e.project != project:
            continue
        if (start is not None and e.time < start) or (end is not None and e.time >= end):
            continue
        if not keep(e):
            continue
        key = (_bucket(e.time, bucket), tuple(_group_value(e, k) for k in group_by))
        tokens = TokenSums(
            e.prompt_tokens, e.candidates_tokens, e.cached_tokens, e.thoughts_tokens,
            e.tool_use_tokens,
        )  # fmt: skip
        cost = prices.cost(e.model, e.prompt_tokens > LONG_PROMPT_TOKENS, tokens)
        acc = out.setdefault(key, [0] * 9 + [0.0, 0.0])
        measures = (
            1, e.status != "OK", e.incomplete, e.prompt_tokens, e.candidates_tokens,
            e.cached_tokens, e.thoughts_tokens, e.tool_use_tokens, e.total_tokens,
            e.latency_ms, cost,
        )  # fmt: skip
        for i, m in enumerate(measures):
            acc[i] += m
    return out


MEASURES = (
    "request_count", "error_count", "incomplete_count", "prompt_tokens", "candidates_tokens",
    "cached_tokens", "thoughts_tokens", "tool_use_tokens", "total_tokens", "latency_ms_sum",
    "cost_usd",
)  # fmt: skip


def as_table(page: UsagePage, group_by: Sequence[str]) -> dict[Key, list[float]]:
    return {
        (row.bucket_start, tuple(row.group[k] for k in group_by)): [
            getattr(row, name) for name in MEASURES
        ]
        for row in page.rows
    }


def assert_same(got: dict[Key, list[float]], want: dict[Key, list[float]]) -> None:
    assert set(got) == set(want)
    for key, expected in want.items():
        actual = got[key]
        assert actual[:9] == expected[:9], key
        for a, b in zip(actual[9:], expected[9:], strict=True):
            assert math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-9), key


async def write(store: Store, events: Sequence[UsageEvent], batch: int = 50) -> None:
    for i in range(0, len(events), batch):
        async with store.begin() as conn:
            await write_usage_batch(conn, events[i : i + batch])


async def query_all(store: Store, prices: PriceTable, **args: Any) -> UsagePage:
    args.setdefault("project", None)
    return await query_usage(store, prices=prices, page_size=1000, **args)


def check_order(page: UsagePage) -> None:
    keys = [
        (r.bucket_start or datetime.min.replace(tzinfo=UTC), -r.cost_usd, tuple(r.group.values()))
        for r in page.rows
    ]
    assert keys == sorted(keys)


# ---------------------------------------------------------------------------------------------
# Property: any events, any range, any grouping: the store agrees with the oracle.

SPAN = 3 * DAY
GROUP_KEYS = ["model", "method", "project", "caller", "status", "labels.team", "labels.env"]


@st.composite
def instants(draw: st.DrawFn) -> datetime:
    """Times within the span, often exactly on an hour or day boundary."""
    if draw(st.booleans()):
        return T0 + HOUR * draw(st.integers(0, int(SPAN / HOUR)))
    return T0 + timedelta(microseconds=draw(st.integers(0, int(SPAN / timedelta(microseconds=1)))))


LABEL_VALUES = st.sampled_from(["a", "b", ""])


@st.composite
def usage_events(draw: st.DrawFn) -> UsageEvent:
    prompt = draw(st.one_of(st.integers(0, 5_000), st.integers(199_990, 200_010)))
    candidates, thoughts, tool_use = (draw(st.integers(0, 3_000)) for _ in range(3))
    return UsageEvent(
        time=draw(instants()),
        project=draw(st.sampled_from(["p1", "p2"])),
        caller=draw(st.sampled_from(["alice", "bob"])),
        model=draw(st.sampled_from(["models/gemini-2.5-pro", "gemini-2.5-flash", "other-x"])),
        method=draw(st.sampled_from(["GenerateContent", "StreamGenerateContent"])),
        labels=draw(st.dictionaries(st.sampled_from(["team", "env", "app"]), LABEL_VALUES)),
        status=draw(st.sampled_from(["OK", "OK", "RESOURCE_EXHAUSTED", "INTERNAL"])),
        prompt_tokens=prompt,
        candidates_tokens=candidates,
        cached_tokens=draw(st.integers(0, prompt)),
        thoughts_tokens=thoughts,
        tool_use_tokens=tool_use,
        total_tokens=prompt + candidates + thoughts + tool_use,
        latency_ms=draw(st.floats(0, 10_000, allow_nan=False)),
        first_chunk_ms=draw(st.none() | st.floats(0, 1_000, allow_nan=False)),
        incomplete=draw(st.booleans()),
    )


@st.composite
def ranges(draw: st.DrawFn) -> tuple[datetime | None, datetime | None]:
    start = draw(st.none() | instants())
    end = draw(st.none() | instants())
    if start is not None and end is not None and end < start:
        start, end = end, start
    return start, end


@settings(
    max_examples=60,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    events=st.lists(usage_events(), max_size=60),
    batch=st.integers(1, 25),
    queries=st.lists(
        st.tuples(
            ranges(),
            st.lists(st.sampled_from(GROUP_KEYS), unique=True, max_size=3),
            st.sampled_from([None, "hour", "day"]),
            st.sampled_from([None, "p1"]),
        ),
        min_size=1,
        max_size=4,
    ),
)
async def test_any_range_matches_the_raw_events(
    store: Store, prices: PriceTable, events: list[UsageEvent], batch: int, queries: list[Any]
) -> None:
    await clear(store)
    await write(store, events, batch)
    for (start, end), group_by, bucket, project in queries:
        args = {"project": project, "start": start, "end": end, "group_by": group_by,
                "bucket": bucket}  # fmt: skip
        page = await query_all(store, prices, **args)
        want = brute_force(events, prices, **args)
        assert_same(as_table(page, group_by), want)
        check_order(page)
        total = [sum(row[i] for row in want.values()) for i in range(11)]
        t = page.totals
        assert [t.request_count, t.error_count, t.prompt_tokens, t.total_tokens] == [
            total[0],
            total[1],
            total[3],
            total[8],
        ]
        assert math.isclose(t.cost_usd, total[10], rel_tol=1e-9, abs_tol=1e-9)


async def test_events_on_and_next_to_boundaries(store: Store, prices: PriceTable) -> None:
    """Events a microsecond either side of hour and day edges, every range between them."""
    tick = timedelta(microseconds=1)
    marks = [T0, T0 + HOUR, T0 + 23 * HOUR, T0 + DAY, T0 + DAY + 5 * HOUR, T0 + 2 * DAY]
    times = [t + d for t in marks for d in (-tick, timedelta(0), tick)]
    events = [
        event(time=t, labels={"team": f"t{i % 2}"}, model=["gemini-2.5-pro", "x"][i % 2],
              status="OK" if i % 3 else "INTERNAL", prompt_tokens=i * 1000)
        for i, t in enumerate(times)
    ]  # fmt: skip
    await write(store, events, batch=4)
    bounds: list[datetime | None] = [None, *times[::2], T0 + 30 * timedelta(minutes=1)]
    for start in bounds:
        for end in bounds:
            if start is not None and end is not None and end <= start:
                continue
            for bucket in (None, "hour", "day"):
                args = {"project": None, "start": start, "end": end,
                        "group_by": ["labels.team"], "bucket": bucket}  # fmt: skip
                page = await query_all(store, prices, **args)
                assert_same(as_table(page, ["labels.team"]), brute_force(events, prices, **args))


async def test_rebuilding_the_rollups_in_sql_gives_what_the_writer_kept(store: Store) -> None:
    events = [
        event(
            time=T0 + timedelta(minutes=37 * i),
            caller=f"c{i % 3}",
            labels={"team": f"t{i % 2}"} if i % 5 else {},
            status="OK" if i % 4 else "INTERNAL",
            prompt_tokens=250_000 if i % 7 == 0 else i,
            first_chunk_ms=float(i) if i % 2 else None,
            incomplete=i % 6 == 0,
        )
        for i in range(200)
    ]
    await write(store, events, batch=17)

    async def snapshot() -> list[list[Any]]:
        out = []
        async with store.connect() as conn:
            for model in (
                UsageHourly, UsageDaily, UsageHourlyByLabel, UsageDailyByLabel, UsageLabelValue
            ):  # fmt: skip
                table = model.__table__
                stmt = sa.select(table).order_by(*table.primary_key.columns)
                rows = (await conn.execute(stmt)).all()
                out.append([tuple(round(v, 6) if isinstance(v, float) else v for v in r)
                            for r in rows])  # fmt: skip
        return out

    before = await snapshot()
    async with store.begin() as conn:
        await rebuild_rollups(conn)
    assert await snapshot() == before
    assert len(before[0]) > 50  # the hourly rollup really has rows to compare


# ---------------------------------------------------------------------------------------------
# Grouping, buckets, filters


async def _teams(store: Store) -> list[UsageEvent]:
    events = [
        event(labels={"team": "search", "env": "prod"}, prompt_tokens=1000),
        event(labels={"team": "search", "env": "dev"}, prompt_tokens=100),
        event(labels={"team": "ads", "env": "prod"}, model="gemini-2.5-pro", prompt_tokens=9000),
        event(labels={"env": "prod"}, status="RESOURCE_EXHAUSTED"),
        event(labels={}, time=T0 + DAY + HOUR, incomplete=True),
    ]
    await write(store, events)
    return events


async def test_group_by_one_label_key_with_a_none_group(store: Store, prices: PriceTable) -> None:
    await _teams(store)
    page = await query_all(store, prices, group_by=["labels.team"])
    got = {row.group["labels.team"]: row.request_count for row in page.rows}
    assert got == {"search": 2, "ads": 1, NONE_VALUE: 2}
    assert page.totals.request_count == 5
    assert page.totals.error_count == 1 and page.totals.incomplete_count == 1


async def test_group_by_two_label_keys(store: Store, prices: PriceTable) -> None:
    await _teams(store)
    page = await query_all(store, prices, group_by=["labels.team", "labels.env"])
    got = {(r.group["labels.team"], r.group["labels.env"]): r.request_count for r in page.rows}
    assert got == {
        ("search", "prod"): 1,
        ("search", "dev"): 1,
        ("ads", "prod"): 1,
        (NONE_VALUE, "prod"): 1,
        (NONE_VALUE, NONE_VALUE): 1,
    }


async def test_group_by_model_orders_by_cost(store: Store, prices: PriceTable) -> None:
    events = await _teams(store)
    page = await query_all(store, prices, group_by=["model"])
    assert [r.group["model"] for r in page.rows] == [
        "gemini-2.5-pro",
        "models/gemini-2.5-flash",
    ]
    want = brute_force(
        events, prices, project=None, start=None, end=None, group_by=["model"], bucket=None
    )
    assert_same(as_table(page, ["model"]), want)
    assert page.rows[0].cost_usd > 0


async def test_group_by_day(store: Store, prices: PriceTable) -> None:
    await _teams(store)
    page = await query_all(store, prices, bucket="day", start=T0 + timedelta(minutes=1))
    assert [(r.bucket_start, r.request_count) for r in page.rows] == [(T0 + DAY, 1)]
    page = await query_all(store, prices, bucket="day", group_by=["labels.env"])
    assert [(r.bucket_start, r.group["labels.env"], r.request_count) for r in page.rows] == [
        (T0, "prod", 3),
        (T0, "dev", 1),
        (T0 + DAY, NONE_VALUE, 1),
    ]


@pytest.mark.parametrize(
    ("text", "keep"),
    [
        ('labels.team = "search"', lambda e: e.labels.get("team") == "search"),
        ("labels.team != search", lambda e: e.labels.get("team") != "search"),
        ("labels.team:*", lambda e: "team" in e.labels),
        ('status != "OK" OR model = "models/gemini-2.5-pro"',
         lambda e: e.status != "OK" or e.model == "models/gemini-2.5-pro"),
        ("long_prompt = true", lambda e: e.prompt_tokens > LONG_PROMPT_TOKENS),
        ('caller = "bob" AND method = "StreamGenerateContent"',
         lambda e: e.caller == "bob" and e.method == "StreamGenerateContent"),
    ],
)  # fmt: skip
async def test_filters(
    store: Store, prices: PriceTable, text: str, keep: Callable[[UsageEvent], bool]
) -> None:
    events = [
        event(
            time=T0 + timedelta(minutes=25 * i),
            labels={"team": ["search", "ads"][i % 2]} if i % 3 else {},
            caller=["alice", "bob"][i % 2],
            method=["GenerateContent", "StreamGenerateContent"][i % 3 == 0],
            status="OK" if i % 4 else "UNAVAILABLE",
            model=["models/gemini-2.5-flash", "models/gemini-2.5-pro"][i % 5 == 0],
            prompt_tokens=300_000 if i % 7 == 0 else 10 * i,
        )
        for i in range(60)
    ]
    await write(store, events)
    args = {"start": T0 + timedelta(minutes=70), "end": T0 + timedelta(hours=20, minutes=3),
            "group_by": ["model"], "bucket": None, "project": None}  # fmt: skip
    page = await query_all(store, prices, filter_text=text, **args)
    want = brute_force(events, prices, keep=keep, **args)
    assert want  # the filter keeps something
    assert_same(as_table(page, ["model"]), want)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("colour = red", "unknown field"),
        ('status = "OKAY"', "expects one of"),
        ("labels.Team = x", "labels.Team"),
        ("long_prompt > 1", "does not apply"),
        ("model = (", "filter:"),
    ],
)
async def test_bad_filters(store: Store, prices: PriceTable, text: str, message: str) -> None:
    with pytest.raises(FilterError, match=message.replace("(", r"\(")):
        await query_all(store, prices, filter_text=text)


@pytest.mark.parametrize(
    ("group_by", "message"),
    [
        (["colour"], "cannot group by 'colour': allowed keys are model, method, project"),
        (["labels."], "cannot group by"),
        (["labels.Team"], "cannot group by"),
        (["model", "model"], "repeats"),
        (["model", "method", "project", "caller", "status", "labels.a"], "at most 5"),
    ],
)
async def test_bad_group_keys(
    store: Store, prices: PriceTable, group_by: list[str], message: str
) -> None:
    with pytest.raises(UsageQueryError, match=message) as caught:
        await query_all(store, prices, group_by=group_by)
    assert "\n" not in str(caught.value)


async def test_naive_times_and_bad_buckets_are_refused(store: Store, prices: PriceTable) -> None:
    with pytest.raises(UsageQueryError, match="time zone"):
        await query_all(store, prices, start=datetime(2026, 1, 1))
    with pytest.raises(UsageQueryError, match="bucket"):
        await query_all(store, prices, bucket="week")
    with pytest.raises(UsageQueryError, match="page_size"):
        await query_usage(store, project=None, prices=prices, page_size=-1)


async def test_an_empty_range_is_empty(store: Store, prices: PriceTable) -> None:
    await _teams(store)
    page = await query_all(store, prices, start=T0 + HOUR, end=T0 + HOUR)
    assert page.rows == [] and page.totals.request_count == 0 and page.next_page_token == ""


# ---------------------------------------------------------------------------------------------
# Paging


async def test_paging_walks_every_group_once(store: Store, prices: PriceTable) -> None:
    await write(store, [event(caller=f"c{i}", prompt_tokens=100 * i) for i in range(7)])
    seen: list[str] = []
    token = ""
    pages = 0
    while True:
        page = await query_usage(
            store, project="p1", group_by=["caller"], prices=prices, page_size=3, page_token=token
        )
        pages += 1
        seen.extend(r.group["caller"] for r in page.rows)
        assert page.totals.request_count == 7  # totals cover all groups on every page
        token = page.next_page_token
        if not token:
            break
    assert pages == 3
    assert seen == [f"c{i}" for i in reversed(range(7))]  # costliest first


async def test_bad_page_tokens(store: Store, prices: PriceTable) -> None:
    await write(store, [event(caller=f"c{i}") for i in range(3)])
    page = await query_usage(store, project="p1", group_by=["caller"], prices=prices, page_size=1)
    assert page.next_page_token
    with pytest.raises(InvalidPageToken, match="different query"):
        await query_usage(
            store, project="p1", group_by=["model"], prices=prices, page_size=1,
            page_token=page.next_page_token,
        )  # fmt: skip
    for garbage in ("not-base64!", "e30", "eyJvIjotMSwicSI6IngifQ"):
        with pytest.raises(InvalidPageToken):
            await query_usage(
                store, project="p1", group_by=["caller"], prices=prices, page_token=garbage
            )
    assert issubclass(InvalidPageToken, ValueError)


# ---------------------------------------------------------------------------------------------
# Label pickers


async def test_label_keys_and_values(store: Store) -> None:
    later = T0 + HOUR
    await write(
        store,
        [
            event(labels={"team": "search", "env": "prod"}),
            event(labels={"team": "search", "env_x": "a"}),
            event(labels={"team": "ads", "envy": "b"}, time=later),
            event(labels={"team": "ads"}, project="p2"),
            event(labels={"team": "ads"}, project="p2"),
        ],
    )
    keys = await list_label_keys(store, "p1")
    assert (keys.items[0].name, keys.items[0].count) == ("team", 3)
    assert {k.name for k in keys.items} == {"team", "env", "env_x", "envy"}
    assert keys.items[0].last_seen == later
    # "_" is a literal in a prefix, not a LIKE wildcard.
    assert [k.name for k in (await list_label_keys(store, "p1", prefix="env_")).items] == ["env_x"]
    values = await list_label_values(store, "p1", "team")
    assert [(v.name, v.count) for v in values.items] == [("search", 2), ("ads", 1)]
    values = await list_label_values(store, None, "team")
    assert [(v.name, v.count) for v in values.items] == [("ads", 3), ("search", 2)]
    assert [v.name for v in (await list_label_values(store, "p1", "team", "s")).items] == ["search"]

    first = await list_label_keys(store, "p1", page_size=3)
    assert len(first.items) == 3 and first.next_page_token
    rest = await list_label_keys(store, "p1", page_size=3, page_token=first.next_page_token)
    assert len(rest.items) == 1 and rest.next_page_token == ""
    with pytest.raises(InvalidPageToken):
        await list_label_keys(store, "p2", page_token=first.next_page_token)
    with pytest.raises(UsageQueryError):
        await list_label_values(store, "p1", "Not A Key")
